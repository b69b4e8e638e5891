"""Shared fixtures: a tiny synthetic image dataset, and the real one when it is present."""
import os

# Before torch is imported: `make test` runs two test processes on two cores, and spinning OpenMP threads
# would slow both (notebook 01 explains the setting; every notebook sets it too).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn

CLASSES = ("cats", "dogs", "owls")  # three classes on purpose: never the default 2 or 1000


def _write_images(folder: Path, count: int, seed: int) -> None:
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    for label, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = torch.randint(0, 256, (40 + 4 * i, 48, 3), generator=generator, dtype=torch.uint8)
            pixels[..., label] = 255  # each class has one saturated channel, so it is learnable
            Image.fromarray(pixels.numpy()).save(folder / name / f"{i}.png")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """``train/`` and ``val/`` with three classes of small PNGs (4 and 2 per class)."""
    root = tmp_path_factory.mktemp("tiny")
    _write_images(root / "train", 4, seed=0)
    _write_images(root / "val", 2, seed=1)
    return root


@pytest.fixture
def tiny_cnn() -> nn.Module:
    """A small conv net with BatchNorm and a 5-class Linear head."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),  # last Linear: the head
    )


@pytest.fixture(scope="session")
def hymenoptera_folder() -> Path:
    """The real dataset under the data root (CI points COURSE_DATA at it); skips when absent."""
    from course_utils.data import data_root

    folder = data_root() / "hymenoptera_data"
    if not folder.is_dir():
        pytest.skip(f"hymenoptera dataset not found at {folder}; set COURSE_DATA")
    return folder


@pytest.fixture(scope="session")
def eurosat_folder() -> Path:
    """The real EuroSAT RGB folder (``eurosat/2750``) under the data root; skips when absent."""
    from course_utils.data import data_root

    folder = data_root() / "eurosat" / "2750"
    if not folder.is_dir():
        pytest.skip(f"EuroSAT not found at {folder}; set COURSE_DATA")
    return folder

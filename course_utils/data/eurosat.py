"""EuroSAT RGB, the course's far-from-ImageNet dataset, and its fixed train / validation / test split.

EuroSAT (Helber et al., 2019; MIT license) holds 27,000 Sentinel-2 satellite patches of 64 x 64 pixels in
ten land-use classes, none of which is an ImageNet class. It has no official split, so the course defines
one: file numbers per class, stored in ``resources/eurosat_split.json`` so that every machine trains and
evaluates on the same images. The lists are in shuffled order, so the first ``k`` of a list are a random
subset of it: ``splits(per_class={"train": 50})`` takes 50 training images of each class.

Parts of the split (images per class): ``train`` 200, ``val`` 50, ``test`` 100 (touched once, at the end),
and ``capstone`` 100, which no other notebook trains on.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
from importlib import resources
from pathlib import Path

from torchvision.datasets import ImageFolder

from course_utils.arguments import require_int
from course_utils.data import data_root

EUROSAT_FOLDER = "eurosat/2750"   # the layout torchvision.datasets.EuroSAT(root, download=True) writes
PARTS = ("train", "val", "test", "capstone")


@functools.lru_cache(maxsize=1)
def split_lists() -> dict:
    """The stored split: ``{"sizes": {part: n}, "classes": {name: {"images": N, part: [numbers]}}}``."""
    text = resources.files("course_utils").joinpath("resources/eurosat_split.json").read_text()
    return json.loads(text)


def classes() -> list[str]:
    """The ten class names, sorted as ``ImageFolder`` sorts the folders (label 0 is ``AnnualCrop``)."""
    return sorted(split_lists()["classes"])


def eurosat(root: str | Path | None = None, *, download: bool = True) -> Path:
    """Folder of EuroSAT RGB (``<root>/eurosat/2750``), downloaded through torchvision if it is missing.

    Args:
        root: Where datasets live; default :func:`course_utils.data.data_root` (``$COURSE_DATA``).
        download: Fetch the archive (about 90 MB, checked by torchvision) when the folder is missing.

    Raises:
        FileNotFoundError: The folder is missing and ``download`` is False, or a class folder holds fewer
            images than EuroSAT has (named in the message).
        ValueError: ``root`` (``COURSE_DATA``) is EuroSAT's own folder; the message says what to set instead.
        ConnectionError: The download failed (offline); nothing was created.
        PermissionError: ``root`` cannot be written; nothing was downloaded.

    Used in: 05_feature_extraction.ipynb, 06_fine_tuning_far_domain.ipynb, 09_when_to_transfer.ipynb,
        11_your_own_images.ipynb (through splits)
    """
    root = Path(root) if root is not None else data_root()
    _check_not_inside(root)
    folder = root / EUROSAT_FOLDER
    if not folder.is_dir():
        if not download:
            raise FileNotFoundError(
                f"No EuroSAT at {folder}. Call eurosat(download=True) (about 90 MB), or set COURSE_DATA to the "
                f"folder that contains eurosat/2750/.")
        _download(root)
    _check_counts(folder)
    return folder


def _check_not_inside(root: Path) -> None:
    """Refuse a data root that is EuroSAT's own folder (``eurosat/`` or ``eurosat/2750/``) or a class folder."""
    for level in (root, *list(root.parents)[:2]):
        if level.name == "2750" and level.parent.name == "eurosat":
            raise ValueError(
                f"The data root is {root}, inside the EuroSAT folder {level} itself, so the course would look for "
                f"{root / EUROSAT_FOLDER} and download a second copy there. Set COURSE_DATA to the folder that "
                f"contains eurosat/: COURSE_DATA={level.parent.parent}")
        if level.name == "eurosat" and (level / "2750").is_dir():
            raise ValueError(f"The data root is {root}, the EuroSAT folder itself. Set COURSE_DATA to the folder that "
                             f"contains eurosat/: COURSE_DATA={level.parent}")


def _download(root: Path) -> None:
    """torchvision's download into a temporary folder, moved into ``root`` only once it is complete."""
    import tempfile
    import urllib.error

    from torchvision.datasets import EuroSAT

    from course_utils.files import write_error

    existing = next(p for p in (root, *root.parents) if p.exists())
    err = write_error(existing, create=False)   # tries a real write: permission bits mislead root
    if err is not None:
        raise PermissionError(f"{root} has no eurosat/2750/ and {existing} cannot be written ({err.strerror or err}), "
                              "so EuroSAT cannot be downloaded there. Set COURSE_DATA to a folder you can write to, "
                              "or to the folder that already contains eurosat/2750/.")
    with tempfile.TemporaryDirectory(prefix="course-eurosat-") as tmp:
        try:
            EuroSAT(tmp, download=True)
        except (urllib.error.URLError, OSError) as err:
            raise ConnectionError(f"EuroSAT is not at {root / EUROSAT_FOLDER} and downloading it failed ({err}). "
                                  "Connect to the internet, or set COURSE_DATA to a folder that contains "
                                  "eurosat/2750/.") from None
        (root / "eurosat").mkdir(parents=True, exist_ok=True)
        shutil.move(Path(tmp) / "eurosat" / "2750", root / EUROSAT_FOLDER)   # may cross file systems


def _check_counts(folder: Path) -> None:
    for name, info in split_lists()["classes"].items():
        found = len(os.listdir(folder / name)) if (folder / name).is_dir() else 0
        if found < info["images"]:
            raise FileNotFoundError(
                f"{folder / name} holds {found} files; EuroSAT has {info['images']} there. The copy is incomplete: "
                f"delete {folder.parent} and call eurosat() again to download it afresh.")


def splits(folder: str | Path | None = None, *, per_class: dict[str, int] | None = None,
           transform=None) -> dict[str, ImageFolder]:
    """The course's EuroSAT split as one ``ImageFolder`` per part (``train``, ``val``, ``test``, ``capstone``).

    Args:
        folder: The ``2750`` folder; default :func:`eurosat`.
        per_class: Images per class to take of each part (its first ones), e.g. ``{"train": 100, "val": 50}``;
            only the parts named are returned. Default: every part, in full.
        transform: Passed to each ``ImageFolder``.

    Returns:
        ``{part: ImageFolder}``, each with the ten classes in the same order.

    Raises:
        ValueError: An unknown part, or a count that is not an integer between 1 and the part's size.

    Used in: 05_feature_extraction.ipynb, 06_fine_tuning_far_domain.ipynb; 09_when_to_transfer.ipynb (through
        domains.eurosat_images), 11_your_own_images.ipynb (through audit.eurosat_capstone_folder)
    """
    sizes = split_lists()["sizes"]
    per_class = dict(sizes) if per_class is None else dict(per_class)
    for part, count in per_class.items():
        if part not in sizes:
            raise ValueError(f"Unknown part {part!r} of the EuroSAT split. Choose from {list(sizes)}.")
        require_int(f"per_class[{part!r}]", count, maximum=sizes[part],
                    fix=f"It is how many images of each class to take from the {part!r} part (its first ones).")
    folder = Path(folder) if folder is not None else eurosat()
    return {part: _part(folder, part, count, transform) for part, count in per_class.items()}


class _ListedImageFolder(ImageFolder):
    """An ``ImageFolder`` whose samples are a given list of ``(path, label)`` instead of a scan of the folder."""

    def __init__(self, root: str, samples: list[tuple[str, int]], transform=None) -> None:
        self._listed = samples
        super().__init__(root, transform=transform)

    def make_dataset(self, directory, class_to_idx, *args, **kwargs) -> list[tuple[str, int]]:
        return list(self._listed)


def _part(folder: Path, part: str, count: int, transform) -> ImageFolder:
    names = classes()
    samples = [(str(folder / name / f"{name}_{number}.jpg"), label)
               for label, name in enumerate(names) for number in split_lists()["classes"][name][part][:count]]
    missing = [path for path, _ in samples if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images of the EuroSAT {part} split are missing (first: {missing[0]}): "
                                f"delete {folder.parent} and call eurosat() again to download it afresh.")
    return _ListedImageFolder(str(folder), samples, transform=transform)

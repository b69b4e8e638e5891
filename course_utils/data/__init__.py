"""Where data lives, transforms that match a backbone, and an in-memory image cache.

Unreadable images raise an error that names the file (they are never skipped silently), and files
that are not images (``.DS_Store``, ``notes.txt``) are ignored. The package's modules: reading folders and
their splits (:mod:`~course_utils.data.folders`), decoding images (:mod:`~course_utils.data.decoding`), the
datasets (:mod:`~course_utils.data.download`, :mod:`~course_utils.data.eurosat`) and checking your own folder
(:mod:`~course_utils.data.audit`).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from course_utils.data.decoding import load_rgb
from course_utils.models.weights import Preprocessing


def data_root() -> Path:
    """Folder that holds the course's datasets.

    ``$COURSE_DATA`` if set; else ``data/`` of a source checkout; else ``~/.cache/course_utils``
    (a package installed from git, as on Colab, has no ``data/`` folder).

    Used in: 01_data_loading.ipynb
    """
    if os.environ.get("COURSE_DATA"):
        return Path(os.environ["COURSE_DATA"]).expanduser().resolve()
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "data").is_dir():
        return checkout / "data"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "course_utils"


def runs_root() -> Path:
    """Folder for files the notebooks write (cached features, checkpoints); never inside the data root.

    ``$COURSE_RUNS`` if set; else ``runs/`` of a source checkout (git-ignored); else
    ``~/.cache/course_utils/runs``. Kept apart from :func:`data_root` because datasets may be read-only.

    While a grader runs a submission (``nbgrader autograde``, which sets ``NBGRADER_EXECUTION=autograde``, or
    ``otter run``/``otter grade``, which put ``otter.Notebook`` in grading mode) it is ``runs/`` inside the
    submission's own working folder, whatever ``$COURSE_RUNS`` says: one student's saved model must never be
    graded in another student's notebook, so each graded run sees only the files it wrote itself.

    Used in: 05_feature_extraction.ipynb, 06_fine_tuning.ipynb, 09_when_to_transfer.ipynb,
        10_deployment_and_scaling.ipynb, 11_your_own_images.ipynb; 08_attribution_with_captum.ipynb (through
        finetuned.load_or_train)
    """
    if _graded_submission():  # the grader runs each submission in its own folder
        return Path.cwd().resolve() / "runs"
    if os.environ.get("COURSE_RUNS"):
        return Path(os.environ["COURSE_RUNS"]).expanduser().resolve()
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file():
        return checkout / "runs"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "course_utils" / "runs"


def _graded_submission() -> bool:
    """True while nbgrader's autograde or otter-grader runs this notebook as a submission."""
    import sys

    if os.environ.get("NBGRADER_EXECUTION") == "autograde":
        return True
    otter = sys.modules.get("otter.check.notebook")  # otter's grading cell calls Notebook.init_grading_mode
    return bool(getattr(getattr(otter, "Notebook", None), "_grading_mode", False))


def build_transforms(pre: Preprocessing, *, augment: bool = True) -> dict[str, "torch.nn.Module"]:
    """Training and evaluation pipelines (torchvision ``transforms.v2``) for a backbone.

    Training: random resized crop and horizontal flip (if ``augment``), evaluation: resize and centre
    crop. Both end with ``float32`` in [0, 1] and the backbone's normalisation. They accept PIL images
    and uint8 tensors.

    Used in: 01_data_loading.ipynb, 02_data_augmentation.ipynb, 03_out_of_the_box_inference.ipynb,
        04_model_surgery.ipynb, 05_feature_extraction.ipynb, 06_fine_tuning.ipynb, 07_gradient_flow.ipynb,
        08_attribution_with_captum.ipynb, 10_deployment_and_scaling.ipynb, 11_your_own_images.ipynb
    """
    from torchvision.transforms import InterpolationMode, v2

    mode = InterpolationMode(pre.interpolation)
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)]
    if augment:
        head = [v2.RandomResizedCrop(pre.crop, interpolation=mode, antialias=True), v2.RandomHorizontalFlip()]
    else:
        head = [v2.Resize(pre.resize, interpolation=mode, antialias=True), v2.CenterCrop(pre.crop)]
    evaluation = [v2.Resize(pre.resize, interpolation=mode, antialias=True), v2.CenterCrop(pre.crop)]
    return {"train": v2.Compose(head + tail), "val": v2.Compose(evaluation + tail)}


def denormalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Undo ``Normalize`` for display: CHW or NCHW tensor back to [0, 1] pixels (clamped).

    Used in: 07_gradient_flow.ipynb; 08_attribution_with_captum.ipynb (through overlay_attribution)
    """
    shape = (-1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(shape)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(shape)
    return (images * std_t + mean_t).clamp(0, 1)


def _check_not_empty(dataset: Dataset) -> None:
    """Refuse an empty dataset here, where its origin is known (a shuffling DataLoader fails cryptically)."""
    if len(dataset) == 0:
        raise ValueError(
            f"The {type(dataset).__name__} has no images (an empty selection, e.g. Subset(folder, []) or "
            "per_class=0). Pass a non-empty split: check the folder given to find_splits() and the indices."
        )


class Transformed(Dataset):
    """A dataset of ``(PIL image, label)`` with a transform applied to each image on access.

    Used in: 01_data_loading.ipynb, 02_data_augmentation.ipynb, 04_model_surgery.ipynb, 06_fine_tuning.ipynb,
        06_fine_tuning_far_domain.ipynb
    """

    def __init__(self, dataset: Dataset, transform) -> None:
        _check_not_empty(dataset)
        self.dataset, self.transform = dataset, transform
        self.classes = dataset.classes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return self.transform(image), label


class CachedImages(Dataset):
    """Decode every image once, keep it in memory resized, and apply ``transform`` on access.

    Small datasets are otherwise decoded again every epoch: for hymenoptera, decoding the full-size
    JPEGs costs more than a forward pass. Images are stored as uint8 CHW tensors whose shorter side
    is ``size`` (about 0.2 MB each at 256 px). JPEGs are decoded directly at reduced scale.

    Args:
        dataset: A dataset from :func:`~course_utils.data.folders.find_splits` (``ImageFolder`` or ``Subset`` of one).
        size: Shorter side kept in memory; use ``preprocessing.resize``.
        transform: Applied to the cached uint8 tensor on every access.

    Raises:
        ValueError: ``dataset`` is empty.
        TypeError: ``dataset`` is neither an ``ImageFolder`` nor a ``Subset`` of one, or it is a
            :class:`Transformed` (whose transform would be ignored).
        ValueError: An image cannot be read; the message names the file.

    Used in: 02_data_augmentation.ipynb, 03_out_of_the_box_inference.ipynb, 05_feature_extraction.ipynb,
        06_fine_tuning.ipynb, 07_gradient_flow.ipynb, 08_attribution_with_captum.ipynb,
        10_deployment_and_scaling.ipynb, 11_your_own_images.ipynb, 06_fine_tuning_far_domain.ipynb
    """

    def __init__(self, dataset: Dataset, size: int, transform=None) -> None:
        if isinstance(dataset, Transformed):
            raise TypeError("CachedImages applies its own transform: pass the dataset inside Transformed "
                            "(its .dataset) and the transform as CachedImages(..., transform=...).")
        _check_not_empty(dataset)
        try:
            self.samples = image_files(dataset)
        except TypeError as err:
            raise TypeError(f"CachedImages needs an ImageFolder or a Subset of one. {err}") from None
        self.classes = dataset.classes if hasattr(dataset, "classes") else dataset.dataset.classes
        self.size, self.transform = size, transform
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            self.images = list(pool.map(self._decode, [path for path, _ in self.samples]))
        self.targets = [label for _, label in self.samples]

    def _decode(self, path: str) -> torch.Tensor:
        from PIL import Image
        from torchvision.transforms.v2.functional import pil_to_tensor

        image = load_rgb(path, draft_size=self.size)
        # Same output size as torchvision's Resize(size) (longer side truncated), so that the Resize in
        # the transform is then a no-op and cached images match uncached ones.
        short, long = sorted(image.size)
        new_long = max(1, int(self.size * long / short))
        new_size = (self.size, new_long) if image.width <= image.height else (new_long, self.size)
        return pil_to_tensor(image.resize(new_size, Image.BICUBIC))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = self.images[index]
        return (self.transform(image) if self.transform else image), self.targets[index]


def image_files(dataset: Dataset) -> list[tuple[str, int]]:
    """``(path, label)`` of every item of a dataset built from image files, in order.

    Follows ``Subset`` indices and wrappers that keep the original in ``.dataset`` (such as
    :class:`Transformed`); reads ``.samples`` of an ``ImageFolder`` or :class:`CachedImages`.

    Raises:
        TypeError: The dataset does not come from image files (e.g. a ``TensorDataset``).

    Used in: 05_feature_extraction.ipynb (through ``features.extract_features``); 11_your_own_images.ipynb
    """
    if isinstance(dataset, Subset):
        inner = image_files(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    if hasattr(dataset, "samples"):
        return [(str(path), int(label)) for path, label in dataset.samples]
    if hasattr(dataset, "dataset"):
        return image_files(dataset.dataset)
    raise TypeError(
        f"A {type(dataset).__name__} does not list its image files (it has no .samples). "
        "Build the dataset with find_splits() or image_folder()."
    )

"""Image folders on disk: class folders, and the train / validation / test layout of a dataset.

:func:`find_splits` reads the layouts people actually use (``train/`` with ``val/``, ``valid/`` or
``validation/``, any letter case, optionally ``test/``; or one folder of class folders) and turns every
layout it cannot use safely into an error that names the folder and the fix. A ``test/`` folder is never
used as the validation split: model selection on the test set would make its accuracy optimistic.
"""
from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from torch.utils.data import Dataset, Subset
from torchvision.datasets import ImageFolder

from course_utils.arguments import require_number
from course_utils.data.decoding import HEIF_FIX, IMAGE_EXTENSIONS, is_image_file, load_rgb, undecodable

SPLIT_FOLDER_NAMES = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
VAL_FOLDER_NAMES = SPLIT_FOLDER_NAMES["val"]
DEFAULT_VAL_FRACTION = 0.2


def _hidden(name: str) -> bool:
    """Hidden folders (``.ipynb_checkpoints``, ``.git``) and the ``__MACOSX`` folder of zips made on a Mac."""
    return name.startswith((".", "__MACOSX"))


def _visible_folders(directory: str | os.PathLike) -> list[str]:
    """Sub-folder names, without hidden ones; a broken link in their place is an error, never skipped."""
    entries = [entry for entry in os.scandir(directory) if not _hidden(entry.name)]
    broken = [entry for entry in entries if entry.is_symlink() and not os.path.exists(entry.path)]
    if broken:
        raise FileNotFoundError(
            f"{broken[0].path} is a link to {os.readlink(broken[0].path)}, which does not exist"
            f"{f' (so are {[e.name for e in broken[1:]]})' if len(broken) > 1 else ''}. "
            "Mount or copy the folder it points to, or delete the link."
        )
    return sorted(entry.name for entry in entries if entry.is_dir())


def _walk_visible(folder: str) -> Iterator[tuple[str, list[str]]]:
    """``(folder, file names)`` of ``folder`` and its sub-folders, skipping hidden ones at every depth."""
    for here, folders, files in os.walk(folder, followlinks=True):
        folders[:] = sorted(name for name in folders if not _hidden(name))
        yield here, sorted(files)


def _has_image(folder: str) -> bool:
    return any(is_image_file(name) for _, files in _walk_visible(folder) for name in files)


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


class VisibleImageFolder(ImageFolder):
    """``ImageFolder`` whose classes are the visible sub-folders only, each with at least one image.

    Hidden folders (``.ipynb_checkpoints`` that JupyterLab leaves behind, ``.git``) and the
    ``__MACOSX`` folder of zip files made on a Mac are not classes, and their files are not images at
    any depth. Class names are compared in Unicode NFC form (a zip made on macOS stores ``été`` as
    ``e`` + accent), so ``.classes`` is the same list whichever form each split's folders use.

    Used in: 01_data_loading.ipynb (through :func:`image_folder`)
    """

    def __init__(self, root: str, **kwargs) -> None:
        super().__init__(root, **kwargs)
        self.classes = [_nfc(name) for name in self.classes]
        self.class_to_idx = {_nfc(name): index for name, index in self.class_to_idx.items()}
        cannot = undecodable([path for path, _ in self.samples])
        if cannot:
            raise ValueError(
                f"{len(cannot)} image file(s) under {root} cannot be decoded by this Pillow (first: {cannot[0]}). "
                f"Fix: {HEIF_FIX}; or delete them."
            )

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        """torchvision's listing, without the files inside hidden folders of a class folder."""
        valid = is_valid_file or is_image_file
        samples = []
        for name, index in sorted(class_to_idx.items(), key=lambda item: item[1]):
            for here, files in _walk_visible(os.path.join(directory, name)):
                samples += [(os.path.join(here, f), index) for f in files if valid(os.path.join(here, f))]
        return samples

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = sorted(_visible_folders(directory), key=_nfc)
        if not classes:
            raise FileNotFoundError(
                f"No class folders in {directory}. Expected one sub-folder per class, "
                "e.g. train/ants/*.jpg and train/bees/*.jpg."
            )
        _check_not_splits(directory, classes)
        same = [name for name in classes if [_nfc(other) for other in classes].count(_nfc(name)) > 1]
        if same:
            raise ValueError(
                f"{directory} has class folders whose names differ only in their Unicode form: {same} "
                f"({[name.encode() for name in same]}). They look identical but would be two classes: "
                "merge them into one folder."
            )
        empty = [name for name in classes if not _has_image(os.path.join(directory, name))]
        if empty:
            raise FileNotFoundError(
                f"The class folder {os.path.join(directory, empty[0])} of the split "
                f"'{os.path.basename(os.path.normpath(directory))}' has no image files "
                f"({', '.join(IMAGE_EXTENSIONS)}){f'; so have {empty[1:]}' if len(empty) > 1 else ''}. "
                "Put its images in it, or delete the folder (and the same class in the other splits)."
            )
        return classes, {name: index for index, name in enumerate(classes)}


def _check_not_splits(directory: str, classes: list[str]) -> None:
    roles = {name for names in SPLIT_FOLDER_NAMES.values() for name in names}
    if all(name.lower() in roles for name in classes):
        raise ValueError(
            f"{directory} holds the split folders {', '.join(c + '/' for c in classes)}, not class folders. "
            f"Use find_splits({directory!r}) for the splits, or image_folder on one of them "
            f"(e.g. {os.path.join(directory, classes[0])!r})."
        )


def image_folder(folder: str | os.PathLike, transform=None) -> ImageFolder:
    """A torchvision ``ImageFolder`` that skips non-image files and hidden folders, and loads RGB.

    Raises:
        FileNotFoundError: No class folders, a class folder without images, or a class folder that is a
            broken link (named in the message).
        ValueError: The folder holds split folders (``train/``, ``val/``: use :func:`find_splits`), two class
            folders named alike in different Unicode forms, or files this Pillow cannot decode (HEIC).

    Used in: 01_data_loading.ipynb
    """
    return VisibleImageFolder(str(folder), transform=transform, loader=load_rgb, is_valid_file=is_image_file)


def _split_folders(folder: Path) -> dict[str, Path]:
    """The split folders of ``folder`` by role (``train``, ``val``, ``test``), matched in any case."""
    roles = {name: role for role, names in SPLIT_FOLDER_NAMES.items() for name in names}
    found: dict[str, list[str]] = {}
    for name in _visible_folders(folder):
        if name.lower() in roles:
            found.setdefault(roles[name.lower()], []).append(name)
    for role, names in found.items():
        if len(names) > 1:
            raise ValueError(
                f"{folder} has {len(names)} {role} folders ({', '.join(n + '/' for n in names)}); keep one "
                f"and rename or move the others, so that it is clear which images are for {role}."
            )
    return {role: folder / names[0] for role, names in found.items()}


def _check_classes(dataset: ImageFolder, name: str, reference: ImageFolder | None = None) -> None:
    if reference is None and len(dataset.classes) < 2:
        raise ValueError(
            f"{dataset.root} holds only one class folder, {dataset.classes[0]!r}: a classifier needs at least "
            f"two. If {Path(dataset.root) / dataset.classes[0]} holds your dataset's folders, pass that folder."
        )
    if reference is not None and dataset.classes != reference.classes:
        missing = sorted(set(reference.classes) - set(dataset.classes))
        extra = sorted(set(dataset.classes) - set(reference.classes))
        raise ValueError(
            f"The class folders of {dataset.root} ({name}) differ from those of {reference.root} (train): "
            f"missing {missing}, extra {extra}. Label numbers would then mean different classes. Give every "
            "split the same class folders (an empty class cannot be evaluated: move some images into it)."
        )


def stratified_split(dataset: ImageFolder, *, val_fraction: float, seed: int = 0) -> tuple[Subset, Subset]:
    """Split a dataset so that every class is in both parts, about ``val_fraction`` of it in the second.

    Each class gives ``round(n * val_fraction)`` images to validation, at least one and at most ``n - 1``,
    drawn with a local generator seeded by ``seed`` (the global random state is not touched).

    Returns:
        ``(train, val)``: ``Subset`` objects with sorted indices and the dataset's ``.classes``.

    Raises:
        ValueError: ``val_fraction`` is not strictly between 0 and 1, or a class has fewer than 2 images.

    Used in: 11_your_own_images.ipynb (through audit.holdout_splits); any notebook given a folder without
        a validation folder (through find_splits)
    """
    import torch

    require_number("val_fraction", val_fraction, above=0, below=1, example=0.2,
                   fix="0.2 holds out a fifth of the images of every class.")
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(dataset.targets):
        by_class.setdefault(int(label), []).append(index)
    too_small = {dataset.classes[c]: len(ix) for c, ix in sorted(by_class.items()) if len(ix) < 2}
    if too_small:
        raise ValueError(
            f"Classes with fewer than 2 images in {dataset.root}: {too_small}. A split that puts every class in "
            "both train and validation needs at least 2 images per class: add images, or remove that class folder."
        )
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    for label, indices in sorted(by_class.items()):
        n_val = min(max(1, round(len(indices) * val_fraction)), len(indices) - 1)
        order = torch.randperm(len(indices), generator=generator).tolist()
        val += [indices[i] for i in order[:n_val]]
        train += [indices[i] for i in order[n_val:]]
    parts = Subset(dataset, sorted(train)), Subset(dataset, sorted(val))
    for part in parts:
        part.classes = dataset.classes
    return parts


def find_splits(
    folder: str | os.PathLike, *, val_fraction: float | None = None, seed: int = 0
) -> dict[str, Dataset]:
    """Train, validation (and test, if present) datasets from a folder, whatever its layout.

    Layouts, split folder names in any letter case:

    - ``train/`` beside ``val/``, ``valid/`` or ``validation/``: used as they are.
    - ``test/`` as well: returned under ``"test"``, a held-out split that model selection never sees.
    - ``train/`` without a validation folder (with or without ``test/``): an error, unless ``val_fraction``
      is given; then that share of every class of ``train/`` becomes the validation split.
    - no split folders: the folder holds class folders directly and is split by class
      (``val_fraction``, default 0.2; :func:`stratified_split`).

    The datasets return PIL images; give them transforms with ``data.Transformed`` or ``data.CachedImages``.

    Args:
        folder: Dataset folder.
        val_fraction: Share of each class held out for validation when there is no validation folder.
        seed: Seed of that split.

    Returns:
        ``{"train": dataset, "val": dataset}``, plus ``"test"`` when the folder has one; all have the
        same ``.classes``.

    Raises:
        FileNotFoundError: ``folder`` does not exist, or a class folder has no images.
        ValueError: The layout cannot be used as it is (the message names the folder and the fix):
            no ``train/`` beside other split folders, ``train/`` without a validation split, two folders
            for one split, class folders that differ between splits, a single class, or a bad ``val_fraction``.

    Used in: 01_data_loading.ipynb, 02_data_augmentation.ipynb, 03_out_of_the_box_inference.ipynb,
        04_model_surgery.ipynb, 05_feature_extraction.ipynb, 06_fine_tuning.ipynb, 07_gradient_flow.ipynb,
        08_attribution_with_captum.ipynb, 10_deployment_and_scaling.ipynb; 09_when_to_transfer.ipynb (through
        domains.hymenoptera_images), 11_your_own_images.ipynb (through audit.holdout_splits)
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"No dataset folder at {folder}. Check the path, or call hymenoptera() to fetch the course data."
        )
    found = _split_folders(folder)
    if not found:
        full = image_folder(folder)
        _check_classes(full, "all images")
        fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
        return dict(zip(("train", "val"), stratified_split(full, val_fraction=fraction, seed=seed)))
    splits = _train_and_val(folder, found, val_fraction=val_fraction, seed=seed)
    if "test" in found:
        splits["test"] = image_folder(found["test"])
    for name in ("val", "test"):
        if name in splits:
            _check_classes(_folder_of(splits[name]), name, reference=_folder_of(splits["train"]))
    return splits


def _train_and_val(
    folder: Path, found: dict[str, Path], *, val_fraction: float | None, seed: int
) -> dict[str, Dataset]:
    """The train and validation splits of a folder with split folders (``found``: by role)."""
    if "train" not in found:
        raise ValueError(
            f"{folder} has {', '.join(p.name + '/' for p in found.values())} but no train/ folder. "
            "Rename the folder of training images to train/ (or move all class folders directly into "
            f"{folder} to have them split by class)."
        )
    train = image_folder(found["train"])
    _check_classes(train, "train")
    if "val" in found and val_fraction is not None:
        raise ValueError(f"val_fraction={val_fraction!r} was given, but {found['val']} already is the "
                         "validation split. Leave val_fraction out (or remove that folder).")
    if "val" in found:
        return {"train": train, "val": image_folder(found["val"])}
    if val_fraction is None:
        test_note = f" ({found['test'].name}/ is the test set and is kept apart)" if "test" in found else ""
        raise ValueError(
            f"{folder} has {found['train'].name}/ but no validation folder{test_note}. Choosing epochs or models "
            "needs validation images that are neither trained on nor the test set. Fix: add a val/ folder "
            "with the same class folders, or call find_splits(folder, val_fraction=0.2) to hold out 20% of "
            f"each class of {found['train'].name}/."
        )
    return dict(zip(("train", "val"), stratified_split(train, val_fraction=val_fraction, seed=seed)))


def _folder_of(dataset: Dataset) -> ImageFolder:
    return dataset.dataset if isinstance(dataset, Subset) else dataset

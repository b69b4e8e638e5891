"""The two domains of notebook 09 as model-ready tensors: ants and bees (near ImageNet) and EuroSAT (far from it).

Both are brought to the same side in pixels, so that "far from ImageNet" is not confounded with "smaller":
ants/bees photos are centre-cropped, EuroSAT's 64 x 64 satellite patches (:mod:`eurosat`) are upsampled.
Nothing is augmented: cached features and the trained strategies see exactly the same pixels.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset


class TensorImages(Dataset):
    """Images already transformed into one ``(N, 3, H, W)`` float tensor, with labels and class names.

    Attributes:
        images: The model-ready images.
        targets: One class index per image (a list of ints, like ``ImageFolder.targets``).
        classes: Class names, indexed by the targets.

    Used in: 09_when_to_transfer.ipynb
    """

    def __init__(self, images: torch.Tensor, targets: Sequence[int], classes: Sequence[str]) -> None:
        if images.dim() != 4 or images.shape[1] != 3 or len(images) != len(targets):
            raise ValueError(f"TensorImages needs (N, 3, H, W) images and N targets, got {tuple(images.shape)} "
                             f"and {len(targets)} targets.")
        self.images, self.targets, self.classes = images, [int(t) for t in targets], list(classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], self.targets[index]


def stack_images(dataset) -> TensorImages:
    """Every ``(image, label)`` of an already transformed dataset, stacked into one :class:`TensorImages`.

    Raises:
        ValueError: The dataset is empty.

    Used in: 09_when_to_transfer.ipynb (through hymenoptera_images and eurosat_images); 11_your_own_images.ipynb
    """
    if len(dataset) == 0:
        raise ValueError("The dataset is empty: nothing to stack.")
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return TensorImages(torch.stack(images), labels, dataset.classes)


def _check_size(size: int) -> None:
    from course_utils.arguments import require_int

    require_int("size", size, minimum=16, example=96, fix="It is the side in pixels the backbone sees.")


def _model_ready(parts: dict, *, size: int, stored: int, preprocessing) -> dict[str, TensorImages]:
    """Each ImageFolder of ``parts`` decoded once at shorter side ``stored``, centre-cropped to ``size``, normalised."""
    from torchvision.transforms import v2

    from course_utils import data

    transform = v2.Compose([v2.CenterCrop(size), v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(preprocessing.mean, preprocessing.std)])
    return {part: stack_images(data.CachedImages(folder, size=stored, transform=transform))
            for part, folder in parts.items()}


def hymenoptera_images(*, size: int, preprocessing) -> dict[str, TensorImages]:
    """The ants/bees training and validation images, centre-cropped to ``size`` pixels and normalised.

    Each image is resized with the backbone's own ratio of crop to shorter side (``preprocessing.resize /
    preprocessing.crop``, e.g. 256 / 224), so that the crop keeps the share of the photo it was pretrained on.

    Args:
        size: Side of the crop (e.g. 96; the backbone was pretrained at ``preprocessing.crop``).
        preprocessing: The backbone's :class:`weights.Preprocessing` (crop ratio and normalisation).

    Raises:
        ValueError: ``size`` is not an integer of at least 16.

    Used in: 09_when_to_transfer.ipynb
    """
    from course_utils.data import download, folders

    _check_size(size)
    splits = folders.find_splits(download.hymenoptera())
    return _model_ready({part: splits[part] for part in ("train", "val")}, size=size,
                        stored=round(size * preprocessing.resize / preprocessing.crop),
                        preprocessing=preprocessing)


def eurosat_images(*, size: int, preprocessing, per_class: dict[str, int]) -> dict[str, TensorImages]:
    """Parts of the course's EuroSAT split (:func:`eurosat.splits`), the whole 64 x 64 patch resized to ``size``.

    Args:
        size: Side in pixels (bilinear resizing of the whole patch; e.g. 96, so that the backbone's last
            stage still has 3 x 3 positions).
        preprocessing: The backbone's :class:`weights.Preprocessing` (normalisation).
        per_class: Images per class of each part, e.g. ``{"train": 100, "val": 50}``.

    Raises:
        ValueError: ``size`` is not an integer of at least 16, or a bad ``per_class`` (from :func:`eurosat.splits`).

    Used in: 09_when_to_transfer.ipynb
    """
    from course_utils.data import eurosat

    _check_size(size)
    return _model_ready(eurosat.splits(per_class=per_class), size=size, stored=size, preprocessing=preprocessing)

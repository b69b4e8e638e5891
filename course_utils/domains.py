"""The two domains of notebook 09 as model-ready tensors: ants and bees (near ImageNet) and digits (far from it).

The far domain works offline:
``sklearn.datasets.load_digits`` ships inside scikit-learn (no download): 1,797 greyscale scans of
handwritten digits, 8 x 8 pixels, 10 classes. Upsampled and copied to three channels they can go through
an ImageNet backbone, but they look nothing like the photos it was trained on: that is the point.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

DIGIT_CLASSES = tuple(str(digit) for digit in range(10))


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


@functools.lru_cache(maxsize=1)
def _scans() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,797 raw 8 x 8 scans (values 0 to 16) and their labels, read from scikit-learn once per process."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return torch.as_tensor(digits.images, dtype=torch.float32), torch.as_tensor(digits.target, dtype=torch.long)


def digits_images(*, size: int, mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as dark ink on white, upsampled to ``size`` pixels, three channels, normalised.

    Args:
        size: Side of the square images (bilinear upsampling from 8 x 8; at least 8).
        mean, std: The backbone's normalisation (``preprocessing.mean`` / ``.std``).

    Returns:
        ``(images, labels)``: ``(1797, 3, size, size)`` float32 and ``(1797,)`` int64.

    Raises:
        ValueError: ``size`` is not an integer >= 8.

    Used in: 09_when_to_transfer.ipynb (through digits_splits)
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an integer of at least 8 (the digits are 8 x 8 pixels), got {size!r}.")
    scans, labels = _scans()
    ink = scans.unsqueeze(1) / 16  # 0 = paper, 1 = ink
    paper = 1 - torch.nn.functional.interpolate(ink, size=(size, size), mode="bilinear", align_corners=False)
    rgb = paper.clamp(0, 1).expand(-1, 3, -1, -1)
    shape = (1, 3, 1, 1)
    images = (rgb - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)
    return images.contiguous(), labels.clone()


def digits_splits(
    *, size: int, mean: Sequence[float], std: Sequence[float], val_fraction: float = 1 / 3, seed: int = 0
) -> dict[str, TensorImages]:
    """Training and validation sets of the digits, split once with the classes in equal shares.

    Args:
        size, mean, std: As in :func:`digits_images`.
        val_fraction: Share of each class held out for validation (strictly between 0 and 1).
        seed: Seed of the split; the same seed always gives the same split.

    Returns:
        ``{"train": TensorImages, "val": TensorImages}`` with classes ``"0"`` to ``"9"``.

    Raises:
        ValueError: ``val_fraction`` is not strictly between 0 and 1, or a bad ``size``.

    Used in: 09_when_to_transfer.ipynb
    """
    from sklearn.model_selection import train_test_split

    if isinstance(val_fraction, bool) or not isinstance(val_fraction, float) or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be a float strictly between 0 and 1 such as 0.33, got {val_fraction!r}.")
    images, labels = digits_images(size=size, mean=mean, std=std)
    train_idx, val_idx = train_test_split(torch.arange(len(labels)).numpy(), test_size=val_fraction,
                                          stratify=labels.numpy(), random_state=seed)
    return {split: TensorImages(images[torch.as_tensor(idx)], labels[torch.as_tensor(idx)].tolist(), DIGIT_CLASSES)
            for split, idx in (("train", sorted(train_idx)), ("val", sorted(val_idx)))}


def stack_images(dataset) -> TensorImages:
    """Every ``(image, label)`` of an already transformed dataset, stacked into one :class:`TensorImages`.

    Raises:
        ValueError: The dataset is empty.

    Used in: 09_when_to_transfer.ipynb (through hymenoptera_images); 11_your_own_images.ipynb
    """
    if len(dataset) == 0:
        raise ValueError("The dataset is empty: nothing to stack.")
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return TensorImages(torch.stack(images), labels, dataset.classes)


def hymenoptera_images(*, size: int, preprocessing) -> dict[str, TensorImages]:
    """The ants/bees training and validation images, centre-cropped to ``size`` pixels and normalised.

    Each image is resized so that its shorter side is ``size / 0.875`` (the usual 224-from-256 ratio),
    then centre-cropped: no random augmentation, so that cached features and the trained strategies see
    the same pixels.

    Args:
        size: Side of the crop (e.g. 128; the backbone was pretrained at ``preprocessing.crop``).
        preprocessing: The backbone's :class:`models.Preprocessing` (normalisation).

    Used in: 09_when_to_transfer.ipynb
    """
    from torchvision.transforms import v2

    from course_utils import data, download

    if isinstance(size, bool) or not isinstance(size, int) or size < 16:
        raise ValueError(f"size must be an integer of at least 16 pixels, got {size!r}.")
    transform = v2.Compose([v2.CenterCrop(size), v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(preprocessing.mean, preprocessing.std)])
    splits = data.find_splits(download.hymenoptera())
    return {part: stack_images(data.CachedImages(splits[part], size=round(size / 0.875), transform=transform))
            for part in ("train", "val")}

"""What the training loops of :mod:`course_utils.train` refuse, each with a message that names the fix.

A single image where a batch belongs, labels the head has no output for, a loader that yields nothing,
a head sized for another number of classes, a learning rate that cannot train, a best epoch asked
for without a validation set.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import nn


def check_batch(images: torch.Tensor) -> None:
    """Refuse a single image where a model needs a batch, with the fix (``unsqueeze(0)``).

    Raises:
        TypeError: ``images`` is not a tensor.
        ValueError: ``images`` is 3-D, e.g. one ``(C, H, W)`` image.

    Used in: every notebook that trains or predicts (through train.train_one_epoch, evaluate and predict)
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"Expected a batch of images as a tensor, got a {type(images).__name__}. "
                        "Iterate over a DataLoader (it stacks images into batches), not over the dataset.")
    if images.dim() == 3:
        raise ValueError(
            f"Got a 3-D tensor of shape {tuple(images.shape)}, but models take a batch (N, C, H, W). "
            "For one image add the batch dimension: image.unsqueeze(0); for a dataset, iterate over a "
            "DataLoader instead of the dataset itself."
        )


def first_batch_checked(model: nn.Module, first: bool) -> AbstractContextManager:
    """On the first batch, the model's first convolution checks its input (:func:`images_checked`).

    Used in: every notebook that trains or predicts (through train.train_one_epoch, evaluate and predict)
    """
    return images_checked(model) if first else nullcontext()


def check_labels(targets: torch.Tensor, logits: torch.Tensor) -> None:
    """Refuse class labels the head has no output for (a label 5 for a 5-output head) before the loss fails.

    Used in: every notebook that trains (through train.train_step and train.evaluate)
    """
    if targets.is_floating_point() or logits.dim() != 2 or targets.numel() == 0:
        return
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or high >= logits.shape[1]:
        raise ValueError(
            f"The batch has label {high if high >= logits.shape[1] else low}, but the model has {logits.shape[1]} "
            f"outputs (labels 0 to {logits.shape[1] - 1}). Give the model one output per class of the dataset: "
            "models.replace_head(model, len(dataset.classes)); or fix the labels."
        )


def check_skipped(skipped: int, seen: int) -> None:
    """Warn about training batches of one image that BatchNorm made the loop skip; refuse if all were.

    Used in: every notebook that trains (through train.train_one_epoch)
    """
    if skipped and not seen:
        raise ValueError("Every training batch held 1 image (batch_size=1?), and BatchNorm layers in training "
                         "mode need at least 2 per batch. Use a batch_size of 2 or more.")
    if skipped:
        warnings.warn(f"Skipped {skipped} training batch(es) of 1 image (usually the last, incomplete batch): "
                      "BatchNorm in training mode needs at least 2 images per batch. Pass drop_last=True to the "
                      "training DataLoader to drop it on purpose, or choose a batch_size that leaves no single "
                      "image over.", stacklevel=3)


def check_seen(seen: int) -> None:
    """Refuse a loader that yielded no batch, naming the two usual causes.

    Used in: every notebook that trains (through train.train_one_epoch and train.evaluate)
    """
    if seen == 0:
        raise ValueError("data_loader yielded no batch: check that the dataset is not empty "
                         "(and that drop_last=True did not drop its only, incomplete batch).")


def _dataset_classes(loader) -> list | None:
    """``.classes`` of the loader's dataset, looking through wrappers (Subset, CachedImages...); else None."""
    dataset = getattr(loader, "dataset", None)
    while dataset is not None:
        if isinstance(getattr(dataset, "classes", None), (list, tuple)):
            return list(dataset.classes)
        dataset = getattr(dataset, "dataset", None)
    return None


def check_head_fits(model: nn.Module, train_loader) -> None:
    """Refuse to train a head whose output size differs from the number of classes of the training set.

    Used in: every notebook that trains (through train.fit)
    """
    from course_utils.models import get_head

    classes = _dataset_classes(train_loader)
    if classes is None:
        return
    try:
        name, head = get_head(model)
    except ValueError:  # no head this check can find: nothing to compare
        return
    outputs = getattr(head, "out_features", None)
    if outputs is not None and outputs != len(classes):
        raise ValueError(
            f"The head {name!r} of the model has {outputs} outputs, but the training set has {len(classes)} "
            f"classes ({', '.join(map(str, classes[:5]))}{', ...' if len(classes) > 5 else ''}). Give it a "
            f"new head first: models.replace_head(model, {len(classes)})."
        )


def check_best_needs_validation(val_loader, *, restore_best: bool, checkpoint) -> None:
    """Refuse ``fit(val_loader=None)`` when the best epoch is asked for: nothing would say which it is.

    Used in: 06_fine_tuning_far_domain.ipynb (through train.fit)
    """
    if val_loader is None and (restore_best or checkpoint is not None):
        wanted = "restore_best=True" if restore_best else f"checkpoint={str(checkpoint)!r}"
        raise ValueError(f"fit(val_loader=None, {wanted}): the best epoch is chosen by validation accuracy, and "
                         "without a val_loader there is none. Pass a val_loader, or restore_best=False and no "
                         "checkpoint to keep the last epoch.")


def check_learning_rates(optimizer: torch.optim.Optimizer, scheduler) -> None:
    """Refuse a learning rate that cannot train: NaN, infinite, negative, or 0 everywhere with no scheduler.

    Used in: every notebook that trains (through train.fit)
    """
    rates = [float(group["lr"]) for group in optimizer.param_groups]
    bad = [lr for lr in rates if not math.isfinite(lr) or lr < 0]
    if bad:
        raise ValueError(f"The optimizer's learning rate is {bad[0]!r}; it must be a finite number >= 0, e.g. 1e-3 "
                         "for Adam or 0.01 for SGD. Check how it was computed (a NaN spreads into every weight).")
    if scheduler is None and not any(rates):
        raise ValueError("The optimizer has lr=0 in every parameter group: training trains nothing (no weight "
                         "changes). Pass a learning rate such as 1e-3, or a scheduler that warms up from 0.")


def check_images(images: torch.Tensor, *, channels: int = 3) -> None:
    """Refuse an image batch a model would turn into confident nonsense, saying how to prepare it.

    Integer pixels (``uint8`` not converted to float), another channel count than ``channels``
    (greyscale into an RGB model), and values far outside normalised pixels (0-255 values that skipped
    ``ToDtype(scale=True)`` and ``Normalize``: normalised pixels stay within about -3 to 3).

    Raises:
        TypeError: Integer pixels.
        ValueError: Wrong number of channels, or values above 20.

    Used in: 02_data_augmentation.ipynb, 06_fine_tuning.ipynb (through train.fit, evaluate and predict)
    """
    if not images.is_floating_point():
        raise TypeError(f"The images are {str(images.dtype).removeprefix('torch.')} pixels; models take normalised "
                        "float32. Prepare them with data.build_transforms(pre) (ToDtype(torch.float32, "
                        "scale=True) then Normalize(pre.mean, pre.std)).")
    if images.dim() == 4 and images.shape[1] != channels:
        raise ValueError(f"The batch has {images.shape[1]} channel(s) per image (shape {tuple(images.shape)}), but "
                         f"the model's first convolution takes {channels} (RGB). Load images as RGB "
                         "(data.decoding.load_rgb, or image.convert('RGB')); a greyscale tensor: x.expand(-1, 3, -1, -1).")
    high = float(images.detach().abs().amax())
    if high > 20:
        raise ValueError(f"The batch holds values up to {high:.0f}: 0-255 pixels, not normalised ones (about -2 "
                         "to 3). Scale and normalise them as in training: data.build_transforms(pre) "
                         "(ToDtype(torch.float32, scale=True) then Normalize(pre.mean, pre.std)).")


@contextmanager
def images_checked(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, the first convolution the model runs checks its input (:func:`check_images`).

    Only when that convolution takes RGB (3 channels): a model that reads feature maps is not judged.
    The hooks are removed on exit, also when the block raises.

    Used in: 02_data_augmentation.ipynb, 06_fine_tuning.ipynb (through train.fit, evaluate and predict)
    """
    seen: list[bool] = []

    def first_conv(module: nn.Conv2d, args: tuple) -> None:
        if not seen:
            seen.append(True)
            if module.in_channels == 3 and isinstance(args[0], torch.Tensor):
                check_images(args[0])

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles = [conv.register_forward_pre_hook(first_conv) for conv in convs]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()

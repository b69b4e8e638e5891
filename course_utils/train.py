"""Training and evaluation loops in the style of torchvision's reference scripts.

``fit`` runs ``train_one_epoch`` and ``evaluate`` for a number of epochs and returns a history: one
dict per epoch with ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc`` and ``seconds``.
``fit(..., checkpoint=path)`` saves the best weights with :func:`course_utils.checkpoints.save`.
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from course_utils import checkpoints
from course_utils.checkpoints import atomic_save, check_writable  # noqa: F401 - atomic_save: for features, probes


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) so runs repeat.

    Used in: 02_data_augmentation.ipynb, 06_fine_tuning.ipynb, 06_fine_tuning_far_domain.ipynb
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def select_device(preferred: str | torch.device | None = None) -> torch.device:
    """The fastest available device: CUDA, then Apple MPS, then CPU (or ``preferred`` if given).

    Args:
        preferred: ``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"cpu"`` or a ``torch.device``; None: automatic.

    Raises:
        ValueError: ``preferred`` is not a device name, or that device is not available here.

    Used in: every notebook
    """
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if preferred is None:
        return torch.device(next(name for name, ok in available.items() if ok))
    usable = [name for name, ok in available.items() if ok]
    try:
        device = torch.device(preferred)
    except (RuntimeError, TypeError):
        device = None
    count = torch.cuda.device_count() if device is not None and device.type == "cuda" else 1
    if device is None or not available.get(device.type, False) or (device.index or 0) >= count:
        raise ValueError(f"Device {preferred!r} is not available here; choose one of {usable} or None (auto)"
                         + (f"; this machine has {count} CUDA devices (cuda:0 ...)." if count > 1 else "."))
    return device


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Share of rows whose highest logit is the target class.

    Used in: 04_model_surgery.ipynb
    """
    return (logits.argmax(dim=1) == targets).float().mean().item()


def check_batch(images: torch.Tensor) -> None:
    """Refuse a single image where a model needs a batch, with the fix (``unsqueeze(0)``).

    Raises:
        TypeError: ``images`` is not a tensor.
        ValueError: ``images`` is 3-D, e.g. one ``(C, H, W)`` image.

    Used in: 01_data_loading.ipynb (the missing batch dimension), through evaluate and predict
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


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    # channels_last for image batches, matching models.load_backbone: ~1.6x faster on CPU (benchmarks/).
    check_batch(x)
    fmt = torch.channels_last if x.dim() == 4 else torch.contiguous_format
    return x.to(device, non_blocking=True, memory_format=fmt)


def train_one_epoch(
    model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, data_loader,
    device: torch.device, *, scaler: torch.amp.GradScaler | None = None, progress: bool = True,
    batch_scheduler=None,
) -> dict[str, float]:
    """One pass over ``data_loader`` with gradient steps; returns mean ``loss`` and ``acc``.

    With a ``scaler`` (``torch.amp.GradScaler``) every loss is scaled before ``backward`` and the
    optimizer is stepped through it; on CUDA the forward pass then runs in float16 (mixed precision).
    A ``batch_scheduler`` (e.g. warm-up then cosine decay) is stepped after every optimizer step.

    A batch of one image is skipped with a warning when the model has BatchNorm layers in training mode
    (they cannot normalise it); ``drop_last=True`` on the loader avoids it.

    Raises:
        ValueError: ``data_loader`` yields no batch, yields single images instead of batches, every batch
            holds one image under BatchNorm, or a label has no output in the model.
        TypeError: The first batch is not float images (see ``models.check_images``).

    Used in: 04_model_surgery.ipynb, 05_feature_extraction.ipynb, 10_deployment_and_scaling.ipynb (its DDP script)
    """
    from course_utils.progress import progress_bar
    from course_utils.surgery import eval_frozen_batchnorm

    device = torch.device(device)
    model.train()
    eval_frozen_batchnorm(model)  # frozen BatchNorms keep their running statistics
    amp = scaler is not None and device.type == "cuda"
    batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())
    total_loss = correct = seen = skipped = 0
    for index, (images, targets) in enumerate(progress_bar(data_loader, desc="train", disable=not progress)):
        if batchnorm and len(targets) == 1:  # BatchNorm cannot normalise a batch of one image
            skipped += 1
            continue
        images, targets = _to_device(images, device), targets.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp), _checked(model, index == 0):
            logits = model(images)
            _check_labels(targets, logits)
            loss = criterion(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if batch_scheduler is not None:
            batch_scheduler.step()
        total_loss += loss.item() * len(targets)
        correct += (logits.argmax(1) == targets).sum().item()
        seen += len(targets)
    _check_skipped(skipped, seen)
    _check_seen(seen)
    return {"loss": total_loss / seen, "acc": correct / seen}


def _checked(model: nn.Module, first: bool):
    """On the first batch: the model's first convolution checks its input (``models.images_checked``)."""
    from contextlib import nullcontext

    from course_utils.models import images_checked

    return images_checked(model) if first else nullcontext()


def _check_labels(targets: torch.Tensor, logits: torch.Tensor) -> None:
    """Class labels the head has no output for (a label 5 for a 5-output head), named before the loss fails."""
    if targets.is_floating_point() or logits.dim() != 2 or targets.numel() == 0:
        return
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or high >= logits.shape[1]:
        raise ValueError(
            f"The batch has label {high if high >= logits.shape[1] else low}, but the model has {logits.shape[1]} "
            f"outputs (labels 0 to {logits.shape[1] - 1}). Give the model one output per class of the dataset: "
            "models.replace_head(model, len(dataset.classes)); or fix the labels."
        )


def _check_skipped(skipped: int, seen: int) -> None:
    import warnings

    if skipped and not seen:
        raise ValueError("Every training batch held 1 image (batch_size=1?), and BatchNorm layers in training "
                         "mode need at least 2 per batch. Use a batch_size of 2 or more.")
    if skipped:
        warnings.warn(f"Skipped {skipped} training batch(es) of 1 image (usually the last, incomplete batch): "
                      "BatchNorm in training mode needs at least 2 images per batch. Pass drop_last=True to the "
                      "training DataLoader to drop it on purpose, or choose a batch_size that leaves no single "
                      "image over.", stacklevel=3)


def _check_seen(seen: int) -> None:
    if seen == 0:
        raise ValueError("data_loader yielded no batch: check that the dataset is not empty "
                         "(and that drop_last=True did not drop its only, incomplete batch).")


@torch.inference_mode()
def evaluate(
    model: nn.Module, criterion: nn.Module, data_loader, device: torch.device, *, progress: bool = True
) -> dict[str, float]:
    """Mean ``loss`` and ``acc`` over ``data_loader`` in eval mode, without gradients.

    The loss is the mean over images (each batch weighted by its size), as if computed in one batch.

    Raises:
        ValueError: ``data_loader`` yields no batch or single images, a label has no output in the model,
            or the first batch is not normalised images (``models.check_images``: also TypeError).

    Used in: 02_data_augmentation.ipynb, 05_feature_extraction.ipynb, 10_deployment_and_scaling.ipynb (its DDP
        script)
    """
    from course_utils.progress import progress_bar

    device = torch.device(device)
    model.eval()
    total_loss = correct = seen = 0
    for index, (images, targets) in enumerate(progress_bar(data_loader, desc="eval", disable=not progress)):
        images, targets = _to_device(images, device), targets.to(device, non_blocking=True)
        with _checked(model, index == 0):
            logits = model(images)
        _check_labels(targets, logits)
        total_loss += criterion(logits, targets).item() * len(targets)
        correct += (logits.argmax(1) == targets).sum().item()
        seen += len(targets)
    _check_seen(seen)
    return {"loss": total_loss / seen, "acc": correct / seen}


def predict(
    model: nn.Module, data_loader, device: torch.device | str = "cpu", *, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of every batch of ``data_loader``, in order, computed in eval mode.

    What per-image questions need (which images are wrong, how confident, a bootstrap interval):
    ``correct = logits.argmax(1) == labels``.

    Returns:
        ``(logits, labels)``: ``(N, classes)`` float32 and ``(N,)`` int64 tensors on the CPU.

    Raises:
        ValueError: ``data_loader`` yields no batch, or its first batch is not normalised images with the
            model's number of channels (``models.check_images``: uint8 pixels raise TypeError).

    Used in: 02_data_augmentation.ipynb, 06_fine_tuning.ipynb, 06_fine_tuning_far_domain.ipynb,
        08_attribution_with_captum.ipynb, 10_deployment_and_scaling.ipynb, 11_your_own_images.ipynb
    """
    from course_utils.progress import progress_bar

    device = torch.device(device)
    model.eval()
    logits, labels = [], []
    with torch.inference_mode():
        for images, targets in progress_bar(data_loader, desc="predict", disable=not progress):
            with _checked(model, not logits):
                logits.append(model(_to_device(images, device)).float().cpu())
            labels.append(torch.as_tensor(targets).cpu())
    if not logits:
        raise ValueError("data_loader yielded no batch: check that the dataset is not empty.")
    # Outside inference mode: the clones are ordinary tensors that later autograd code can use.
    return torch.cat(logits).clone(), torch.cat(labels).long().clone()


def _dataset_classes(loader) -> list | None:
    """``.classes`` of the loader's dataset, looking through wrappers (Subset, CachedImages...); else None."""
    dataset = getattr(loader, "dataset", None)
    while dataset is not None:
        if isinstance(getattr(dataset, "classes", None), (list, tuple)):
            return list(dataset.classes)
        dataset = getattr(dataset, "dataset", None)
    return None


def _check_head_fits(model: nn.Module, train_loader) -> None:
    """Refuse to train a head whose output size differs from the number of classes of the training set."""
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


def _check_learning_rates(optimizer: torch.optim.Optimizer, scheduler) -> None:
    """Refuse a learning rate that cannot train: NaN, infinite, negative, or 0 everywhere with no scheduler."""
    rates = [float(group["lr"]) for group in optimizer.param_groups]
    bad = [lr for lr in rates if not math.isfinite(lr) or lr < 0]
    if bad:
        raise ValueError(f"The optimizer's learning rate is {bad[0]!r}; it must be a finite number >= 0, e.g. 1e-3 "
                         "for Adam or 0.01 for SGD. Check how it was computed (a NaN spreads into every weight).")
    if scheduler is None and not any(rates):
        raise ValueError("The optimizer has lr=0 in every parameter group: training trains nothing (no weight "
                         "changes). Pass a learning rate such as 1e-3, or a scheduler that warms up from 0.")


def fit(
    model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, train_loader, val_loader,
    device: torch.device | str, *, epochs: int, scheduler=None, amp: bool = False,
    checkpoint: str | Path | None = None, progress: bool = True, restore_best: bool = True,
    batch_scheduler=None,
) -> list[dict[str, float]]:
    """Train for ``epochs``, evaluating after each; keep the best weights by validation accuracy.

    Before the first batch, the head's number of outputs is checked against the training set's classes
    (when the dataset has ``.classes``).

    Args:
        device: A ``torch.device`` or its name (``"cpu"``, ``"cuda"``).
        scheduler: Stepped once per epoch, after evaluation.
        batch_scheduler: Stepped after every optimizer step (schedules with a warm-up of a few steps).
        amp: Mixed precision (CUDA only; ignored elsewhere).
        checkpoint: If given, the best state dict is saved there (atomically) after each improvement.
        restore_best: At the end, load the weights of the epoch with the best validation accuracy (the
            earliest of equals) back into the model: from ``checkpoint``, or from a copy kept in memory.
            False: the model keeps the last epoch's weights.

    Returns:
        The history: one dict per epoch.

    Raises:
        ValueError: ``epochs`` is not a positive integer, the head does not fit the classes, the learning
            rate is NaN, infinite, negative or 0 without a scheduler, or a label has no output in the head.
        PermissionError: ``checkpoint`` cannot be written (checked before training).

    Used in: 02_data_augmentation.ipynb, 05_feature_extraction.ipynb, 06_fine_tuning_far_domain.ipynb
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}.")
    device = torch.device(device)
    _check_head_fits(model, train_loader)
    _check_learning_rates(optimizer, scheduler or batch_scheduler)
    if checkpoint is not None:
        check_writable(checkpoint)  # before training, not after its first epoch
    model.to(device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
    history, best, best_state = [], -1.0, None
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        train = train_one_epoch(model, criterion, optimizer, train_loader, device,
                                scaler=scaler if scaler.is_enabled() else None, progress=progress,
                                batch_scheduler=batch_scheduler)
        val = evaluate(model, criterion, val_loader, device, progress=progress)
        if scheduler is not None:
            scheduler.step()
        history.append({"epoch": epoch, "train_loss": train["loss"], "train_acc": train["acc"],
                        "val_loss": val["loss"], "val_acc": val["acc"],
                        "seconds": time.perf_counter() - start})
        if val["acc"] > best:
            best = val["acc"]
            if checkpoint is not None:
                checkpoints.save(model, checkpoint)  # weights only: fit does not know the backbone or classes
            elif restore_best:
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    if restore_best and checkpoint is not None:
        checkpoints.load(checkpoint, into=model)
    elif restore_best:
        model.load_state_dict(best_state)
    return history

"""The course's one training loop, in the style of torchvision's reference scripts.

:func:`train_step` is one optimizer step on one batch, :func:`train_one_epoch` runs it over a loader, and
:func:`fit` alternates epochs with :func:`evaluate` and returns a history (one dict per epoch: ``epoch``,
``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``, ``seconds``; no ``val_`` keys without a validation
set). Everything in the package that trains goes through them: ``features.train_head`` is ``fit`` over cached
features, ``tuning.lr_range_test`` and ``gradients.record_gradient_norms`` hook into the step. What the loops
refuse is in ``training_checks``.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from course_utils.arguments import require_int
from course_utils.files import check_writable
from course_utils.models import checkpoints
from course_utils.train.training_checks import (
    check_batch,
    check_best_needs_validation,
    check_head_fits,
    check_labels,
    check_learning_rates,
    check_seen,
    check_skipped,
    first_batch_checked,
)


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


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    # channels_last for image batches, matching models.load_backbone: ~1.6x faster on CPU (benchmarks/).
    check_batch(x)
    fmt = torch.channels_last if x.dim() == 4 else torch.contiguous_format
    return x.to(device, non_blocking=True, memory_format=fmt)


def train_step(
    model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer | None, images: torch.Tensor,
    targets: torch.Tensor, *, scaler: torch.amp.GradScaler | None = None, autocast: torch.dtype | None = None,
    after_backward: Callable[[float], None] | None = None,
) -> tuple[float, torch.Tensor]:
    """One training step on one batch (already on its device): forward, loss, ``backward``, optimizer step.

    Args:
        optimizer: Stepped after ``backward``; None computes the gradients without changing a weight.
        scaler: A ``torch.amp.GradScaler``: the loss is scaled before ``backward``, the step goes through it.
        autocast: On CUDA, the forward pass and loss run in this dtype (``torch.float16`` with a scaler,
            ``torch.bfloat16`` without); None, or another device: float32.
        after_backward: Called with the loss (a float) between ``backward`` and the step: the gradients are
            in ``.grad`` (scaled, with a scaler), and this step's learning rates can still be set.

    Returns:
        ``(loss, logits)``: the batch's mean loss and the detached logits.

    Used in: every notebook that trains (through train_one_epoch)
    """
    device_type = images.device.type
    with torch.autocast(device_type=device_type, dtype=autocast or torch.float16,
                        enabled=autocast is not None and device_type == "cuda"):
        logits = model(images)
        check_labels(targets, logits)
        loss = criterion(logits, targets)
    model.zero_grad(set_to_none=True)
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    value = loss.item()
    if after_backward is not None:
        after_backward(value)
    if optimizer is not None and scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    elif optimizer is not None:
        optimizer.step()
    return value, logits.detach()


def train_one_epoch(
    model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer | None, data_loader,
    device: torch.device | str, *, scaler: torch.amp.GradScaler | None = None, progress: bool = True,
    batch_scheduler=None, autocast: torch.dtype | None = None,
    after_backward: Callable[[float], None] | None = None,
) -> dict[str, float]:
    """One pass over ``data_loader``, a :func:`train_step` per batch; returns mean ``loss`` and ``acc``.

    With a ``scaler`` (``torch.amp.GradScaler``) the forward pass runs in float16 on CUDA (mixed
    precision; ``autocast`` picks another dtype), and every loss is scaled before ``backward``. A
    ``batch_scheduler`` (e.g. warm-up then cosine decay) is stepped after every optimizer step;
    ``after_backward`` and an ``optimizer`` of None (gradients only) work as in :func:`train_step`.

    A batch of one image is skipped with a warning when the model has BatchNorm layers in training mode
    (they cannot normalise it); ``drop_last=True`` on the loader avoids it.

    Raises:
        ValueError: ``data_loader`` yields no batch, yields single images instead of batches, every batch
            holds one image under BatchNorm, or a label has no output in the model.
        TypeError: The first batch is not float images (see ``training_checks.check_images``).

    Used in: 05_feature_extraction.ipynb, 10_deployment_and_scaling.ipynb (its DDP script); every other notebook
        that trains through fit, features.train_head, tuning.lr_range_test, gradients.record_gradient_norms or
        scenarios.finetune
    """
    from course_utils.models.surgery import eval_frozen_batchnorm
    from course_utils.progress import progress_bar

    device = torch.device(device)
    model.train()
    eval_frozen_batchnorm(model)  # frozen BatchNorms keep their running statistics
    autocast = torch.float16 if autocast is None and scaler is not None else autocast
    batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())
    total_loss = correct = seen = skipped = 0
    for index, (images, targets) in enumerate(progress_bar(data_loader, desc="train", disable=not progress)):
        if batchnorm and len(targets) == 1:  # BatchNorm cannot normalise a batch of one image
            skipped += 1
            continue
        images, targets = _to_device(images, device), targets.to(device, non_blocking=True)
        with first_batch_checked(model, index == 0):
            loss, logits = train_step(model, criterion, optimizer, images, targets, scaler=scaler,
                                      autocast=autocast, after_backward=after_backward)
        if batch_scheduler is not None:
            batch_scheduler.step()
        total_loss += loss * len(targets)
        correct += (logits.argmax(1) == targets).sum().item()
        seen += len(targets)
    check_skipped(skipped, seen)
    check_seen(seen)
    return {"loss": total_loss / seen, "acc": correct / seen}


@torch.inference_mode()
def evaluate(
    model: nn.Module, criterion: nn.Module, data_loader, device: torch.device, *, progress: bool = True
) -> dict[str, float]:
    """Mean ``loss`` and ``acc`` over ``data_loader`` in eval mode, without gradients.

    The loss is the mean over images (each batch weighted by its size), as if computed in one batch.

    Raises:
        ValueError: ``data_loader`` yields no batch or single images, a label has no output in the model,
            or the first batch is not normalised images (``training_checks.check_images``: also TypeError).

    Used in: 10_deployment_and_scaling.ipynb (its DDP script), 05_feature_extraction.ipynb, 06_fine_tuning.ipynb,
        06_fine_tuning_far_domain.ipynb (through fit)
    """
    from course_utils.progress import progress_bar

    device = torch.device(device)
    model.eval()
    total_loss = correct = seen = 0
    for index, (images, targets) in enumerate(progress_bar(data_loader, desc="eval", disable=not progress)):
        images, targets = _to_device(images, device), targets.to(device, non_blocking=True)
        with first_batch_checked(model, index == 0):
            logits = model(images)
        check_labels(targets, logits)
        total_loss += criterion(logits, targets).item() * len(targets)
        correct += (logits.argmax(1) == targets).sum().item()
        seen += len(targets)
    check_seen(seen)
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
            model's number of channels (``training_checks.check_images``: uint8 pixels raise TypeError).

    Used in: 02_data_augmentation.ipynb, 06_fine_tuning.ipynb, 06_fine_tuning_far_domain.ipynb,
        08_attribution_with_captum.ipynb, 10_deployment_and_scaling.ipynb, 11_your_own_images.ipynb
    """
    from course_utils.progress import progress_bar

    device = torch.device(device)
    model.eval()
    logits, labels = [], []
    with torch.inference_mode():
        for images, targets in progress_bar(data_loader, desc="predict", disable=not progress):
            with first_batch_checked(model, not logits):
                logits.append(model(_to_device(images, device)).float().cpu())
            labels.append(torch.as_tensor(targets).cpu())
    if not logits:
        raise ValueError("data_loader yielded no batch: check that the dataset is not empty.")
    # Outside inference mode: the clones are ordinary tensors that later autograd code can use.
    return torch.cat(logits).clone(), torch.cat(labels).long().clone()


def fit(
    model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, train_loader, val_loader,
    device: torch.device | str, *, epochs: int, scheduler=None, amp: bool = False,
    checkpoint: str | Path | None = None, progress: bool = True, restore_best: bool = True,
    batch_scheduler=None,
) -> list[dict[str, float]]:
    """Train for ``epochs``, evaluating after each (with a ``val_loader``); keep the best weights by validation accuracy.

    Before the first batch, the head's number of outputs is checked against the training set's classes
    (when the dataset has ``.classes``).

    Args:
        val_loader: None skips the evaluation after each epoch (each history row then has no ``val_loss``
            and ``val_acc``): for runs judged by their last epoch (``restore_best=False``, no ``checkpoint``),
            measured once afterwards with ``predict``.
        device: A ``torch.device`` or its name (``"cpu"``, ``"cuda"``).
        scheduler: Stepped once per epoch, after the epoch's evaluation (if any).
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
            rate is NaN, infinite, negative or 0 without a scheduler, a label has no output in the head, or
            ``val_loader`` is None while ``restore_best`` or ``checkpoint`` asks for the best epoch.
        PermissionError: ``checkpoint`` cannot be written (checked before training).

    Used in: 06_fine_tuning_far_domain.ipynb; 05_feature_extraction.ipynb, 06_fine_tuning.ipynb,
        08_attribution_with_captum.ipynb (through features.train_head)
    """
    require_int("epochs", epochs, example=5, fix="It is the number of passes over train_loader.")
    check_best_needs_validation(val_loader, restore_best=restore_best, checkpoint=checkpoint)
    device = torch.device(device)
    check_head_fits(model, train_loader)
    check_learning_rates(optimizer, scheduler or batch_scheduler)
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
        row = {"epoch": epoch, "train_loss": train["loss"], "train_acc": train["acc"]}
        if val_loader is not None:
            val = evaluate(model, criterion, val_loader, device, progress=progress)
            row.update(val_loss=val["loss"], val_acc=val["acc"])
        if scheduler is not None:
            scheduler.step()
        history.append({**row, "seconds": time.perf_counter() - start})
        if val_loader is not None and val["acc"] > best:
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

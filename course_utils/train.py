"""Training and evaluation loops in the style of torchvision's reference scripts, plus checkpoints.

``fit`` runs ``train_one_epoch`` and ``evaluate`` for a number of epochs and returns a history: one
dict per epoch with ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc`` and ``seconds``.
"""
from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) so runs repeat.

    Used in: 02_data_augmentation.ipynb, 06_fine_tuning.ipynb
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def select_device(preferred: str | None = None) -> torch.device:
    """The fastest available device: CUDA, then Apple MPS, then CPU (or ``preferred`` if given).

    Raises:
        ValueError: ``preferred`` is not ``"cuda"``, ``"mps"`` or ``"cpu"``, or is not available.

    Used in: 06_fine_tuning.ipynb
    """
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if preferred is None:
        return torch.device(next(name for name, ok in available.items() if ok))
    if not available.get(preferred, False):
        usable = [name for name, ok in available.items() if ok]
        raise ValueError(f"Device {preferred!r} is not available here; choose one of {usable} or None (auto).")
    return torch.device(preferred)


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Share of rows whose highest logit is the target class.

    Used in: 04_model_surgery.ipynb
    """
    return (logits.argmax(dim=1) == targets).float().mean().item()


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    # channels_last for image batches, matching models.load_backbone: ~1.6x faster on CPU (benchmarks/).
    fmt = torch.channels_last if x.dim() == 4 else torch.contiguous_format
    return x.to(device, non_blocking=True, memory_format=fmt)


def train_one_epoch(
    model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, data_loader,
    device: torch.device, *, scaler: torch.amp.GradScaler | None = None, progress: bool = True,
) -> dict[str, float]:
    """One pass over ``data_loader`` with gradient steps; returns mean ``loss`` and ``acc``.

    Mixed precision is used when a ``scaler`` is given and the device is CUDA.

    Used in: 04_model_surgery.ipynb, 05_feature_extraction.ipynb
    """
    from course_utils.progress import progress_bar
    from course_utils.surgery import eval_frozen_batchnorm

    model.train()
    eval_frozen_batchnorm(model)  # frozen BatchNorms keep their running statistics
    amp = scaler is not None and device.type == "cuda"
    total_loss = correct = seen = 0
    for images, targets in progress_bar(data_loader, desc="train", disable=not progress):
        images, targets = _to_device(images, device), targets.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
            logits = model(images)
            loss = criterion(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        if amp:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        total_loss += loss.item() * len(targets)
        correct += (logits.argmax(1) == targets).sum().item()
        seen += len(targets)
    return {"loss": total_loss / seen, "acc": correct / seen}


@torch.inference_mode()
def evaluate(
    model: nn.Module, criterion: nn.Module, data_loader, device: torch.device, *, progress: bool = True
) -> dict[str, float]:
    """Mean ``loss`` and ``acc`` over ``data_loader`` in eval mode, without gradients.

    Used in: 02_data_augmentation.ipynb, 05_feature_extraction.ipynb, 06_fine_tuning.ipynb
    """
    from course_utils.progress import progress_bar

    model.eval()
    total_loss = correct = seen = 0
    for images, targets in progress_bar(data_loader, desc="eval", disable=not progress):
        images, targets = _to_device(images, device), targets.to(device, non_blocking=True)
        logits = model(images)
        total_loss += criterion(logits, targets).item() * len(targets)
        correct += (logits.argmax(1) == targets).sum().item()
        seen += len(targets)
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
        ValueError: ``data_loader`` yields no batch.

    Used in: 06_fine_tuning.ipynb, 08_attribution_with_captum.ipynb, 10_deployment_and_scaling.ipynb
    """
    from course_utils.progress import progress_bar

    device = torch.device(device)
    model.eval()
    logits, labels = [], []
    with torch.inference_mode():
        for images, targets in progress_bar(data_loader, desc="predict", disable=not progress):
            logits.append(model(_to_device(images, device)).float().cpu())
            labels.append(torch.as_tensor(targets).cpu())
    if not logits:
        raise ValueError("data_loader yielded no batch: check that the dataset is not empty.")
    # Outside inference mode: the clones are ordinary tensors that later autograd code can use.
    return torch.cat(logits).clone(), torch.cat(labels).long().clone()


def fit(
    model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, train_loader, val_loader,
    device: torch.device, *, epochs: int, scheduler=None, amp: bool = False,
    checkpoint: str | Path | None = None, progress: bool = True,
) -> list[dict[str, float]]:
    """Train for ``epochs``, evaluating after each; keep the best weights by validation accuracy.

    Args:
        scheduler: Stepped once per epoch, after evaluation.
        amp: Mixed precision (CUDA only; ignored elsewhere).
        checkpoint: If given, the best state dict is saved there (atomically) and loaded back at the end.

    Returns:
        The history: one dict per epoch.

    Used in: 02_data_augmentation.ipynb, 05_feature_extraction.ipynb, 06_fine_tuning.ipynb
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}.")
    model.to(device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
    history, best = [], -1.0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        train = train_one_epoch(model, criterion, optimizer, train_loader, device,
                                scaler=scaler if scaler.is_enabled() else None, progress=progress)
        val = evaluate(model, criterion, val_loader, device, progress=progress)
        if scheduler is not None:
            scheduler.step()
        history.append({"epoch": epoch, "train_loss": train["loss"], "train_acc": train["acc"],
                        "val_loss": val["loss"], "val_acc": val["acc"],
                        "seconds": time.perf_counter() - start})
        if checkpoint is not None and val["acc"] > best:
            best = val["acc"]
            save_checkpoint(model, checkpoint)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return history


def atomic_save(payload, path: str | Path) -> Path:
    """``torch.save(payload)`` to ``path`` atomically: a crash mid-write never leaves a broken file.

    The payload goes to a temporary file in the same folder, which then replaces ``path`` in one step.
    This is the one place the package writes files with torch (checkpoints, feature caches, models).

    Used in: 04_model_surgery.ipynb, 06_fine_tuning.ipynb (through save_checkpoint and finetuned.save)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(model: nn.Module, path: str | Path) -> Path:
    """Save ``model.state_dict()`` atomically (:func:`atomic_save`).

    Only tensors are saved, so the file loads with ``torch.load(path, weights_only=True)``.

    Used in: 04_model_surgery.ipynb; 06_fine_tuning.ipynb (through train.fit)
    """
    return atomic_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state dict saved by :func:`save_checkpoint` (``weights_only=True``, safe to open).

    Raises:
        FileNotFoundError: No file at ``path``.

    Used in: 04_model_surgery.ipynb, 06_fine_tuning.ipynb
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}. Train with fit(..., checkpoint=path) first.")
    device = next(model.parameters()).device
    model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    return model

"""Feature extraction: run a frozen backbone once, cache its pooled features, train a head on them.

The cache file's name is a hash of everything the features depend on: the backbone's weights, the exact
list of image files (path, size, mtime), the dataset's transforms (their ``repr``, e.g. ``Normalize``'s
mean and std) and the caller's optional ``cache_key``, so a changed dataset, model or preprocessing never
gets stale features.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from course_utils.data import image_files
from course_utils.train import atomic_save, check_writable


@contextmanager
def head_removed(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily swap the model's heads (:func:`models.find_heads`) for ``nn.Identity``.

    Inside the block the model returns its pooled penultimate features (a distilled DeiT: the mean of
    its two tokens' features, as timm's ``forward_head(pre_logits=True)``); the heads are put back on
    exit, also when the block raises.

    Used in: 05_feature_extraction.ipynb, 08_attribution_with_captum.ipynb (through extract_features)
    """
    from course_utils.models import find_heads, set_submodule

    heads = find_heads(model)
    try:
        for name, _ in heads:
            set_submodule(model, name, nn.Identity())
        yield model
    finally:
        for name, head in heads:
            set_submodule(model, name, head)


def _fingerprint(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


CACHE_FORMAT = 2  # bump when what extract_features computes changes


def pipeline_description(dataset) -> list[str]:
    """What an image goes through on its way out of ``dataset``: each wrapper's type and transforms.

    Follows ``.dataset`` (``Subset``, ``Transformed``, ``CachedImages``) down to the image folder; lists
    ``transform``, ``target_transform`` and ``size`` (the cached image size) by their ``repr``. A
    transform whose ``repr`` holds a memory address (a ``lambda``) differs in every session, so its
    features are recomputed each time rather than ever reused wrongly.

    Used in: 05_feature_extraction.ipynb (through extract_features)
    """
    steps = []
    while dataset is not None:
        parts = [type(dataset).__name__]
        for attribute in ("transform", "target_transform", "size"):
            value = getattr(dataset, attribute, None)
            if value is not None:
                parts.append(f"{attribute}={value!r}")
        steps.append(" ".join(parts))
        dataset = getattr(dataset, "dataset", None)
    return steps


def _cache_path(model: nn.Module, dataset, cache_dir: str | Path, cache_key: str) -> Path:
    try:
        listed = image_files(dataset)
    except TypeError as err:
        raise TypeError(f"{err} Without the file list its features cannot be cached safely; "
                        "pass cache_dir=None to skip the cache.") from None
    files = []
    for path, label in listed:
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            target = f" is a broken link to {os.readlink(path)}" if os.path.islink(path) else " no longer exists"
            raise FileNotFoundError(f"The image {path}{target}. Restore the file, or delete it and build the "
                                    "dataset again (find_splits / image_folder).") from None
        files.append([os.path.abspath(path), label, stat.st_size, stat.st_mtime_ns])
    with head_removed(model):
        weights = _fingerprint(model)
    blob = json.dumps({"format": CACHE_FORMAT, "key": cache_key, "weights": weights, "files": files,
                       "pipeline": pipeline_description(dataset)}).encode()
    return Path(cache_dir) / f"features-{hashlib.sha256(blob).hexdigest()[:24]}.pt"


def _run_backbone(model: nn.Module, dataset, batch_size: int, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torch.utils.data import DataLoader

    from course_utils.progress import progress_bar

    device = next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    chunks, labels, was_training = [], [], model.training
    model.eval()
    try:
        with head_removed(model), torch.inference_mode():
            for images, targets in progress_bar(loader, desc="features", disable=not progress):
                images = images.to(device, memory_format=torch.channels_last)
                chunks.append(model(images).flatten(1).float().cpu())
                labels.append(torch.as_tensor(targets).cpu())
    finally:
        model.train(was_training)
    # Outside inference mode: cat makes ordinary tensors that can feed a trainable head.
    return torch.cat(chunks).clone(), torch.cat(labels).long().clone()


def extract_features(
    model: nn.Module, dataset, *, batch_size: int = 64, cache_dir: str | Path | None = None,
    cache_key: str = "", progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled penultimate features of every image, computed once and optionally cached on disk.

    The head is bypassed (:func:`head_removed`); the model runs in eval mode under
    ``torch.inference_mode`` with channels_last images, and its train/eval mode is restored after.

    Args:
        model: A classifier whose head :func:`models.get_head` finds.
        dataset: Yields ``(image_tensor, label)``, already transformed.
        batch_size: Images per forward pass.
        cache_dir: Folder for the cache, e.g. ``data.runs_root() / "features"`` (never the dataset folder).
            The file name hashes the backbone weights, the dataset's exact file list (paths, sizes,
            mtimes), its transforms (:func:`pipeline_description`) and ``cache_key``. ``None``: no cache.
        cache_key: Anything else the features depend on that none of those shows (optional).
        progress: Show a progress bar.

    Returns:
        ``(features, labels)`` of shapes ``(N, D)`` (float32, CPU) and ``(N,)`` (int64).

    Raises:
        ValueError: ``batch_size`` is not a positive integer, or the dataset is empty.
        TypeError: ``cache_dir`` is given but the dataset's files cannot be listed.
        FileNotFoundError: An image file is gone (a broken link); the message names it.
        PermissionError: ``cache_dir`` cannot be written (checked before the backbone runs).

    Used in: 05_feature_extraction.ipynb, 06_fine_tuning.ipynb, 08_attribution_with_captum.ipynb,
        06_fine_tuning_far_domain.ipynb
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer such as 64, got {batch_size!r}.")
    if len(dataset) == 0:
        raise ValueError("The dataset is empty: check the folder passed to find_splits().")
    path = _cache_path(model, dataset, cache_dir, cache_key) if cache_dir is not None else None
    if path is not None and not path.is_file():
        check_writable(path)  # before the backbone runs, not after
    if path is not None and path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            return cached["features"], cached["labels"]
        except Exception:  # noqa: BLE001 - a damaged cache file is recomputed and overwritten
            pass
    features, labels = _run_backbone(model, dataset, batch_size, progress)
    if path is not None:
        atomic_save({"features": features, "labels": labels}, path)
    return features, labels


def _check_features(train_features, train_labels, val_features, val_labels, num_classes: int) -> None:
    pairs = {"train": (train_features, train_labels), "val": (val_features, val_labels)}
    for split, (feats, labels) in pairs.items():
        if feats.dim() != 2 or labels.dim() != 1 or len(feats) != len(labels) or len(feats) == 0:
            raise ValueError(f"{split} features must be (N, D) and labels (N,) with N > 0, got "
                             f"{tuple(feats.shape)} and {tuple(labels.shape)}. Use extract_features().")
    if train_features.shape[1] != val_features.shape[1]:
        raise ValueError(f"Feature dims differ: train {train_features.shape[1]}, val {val_features.shape[1]}. "
                         "Extract both splits with the same backbone.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
    for split, (_, labels) in pairs.items():
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"{split} labels range from {low} to {high}, which does not fit "
                             f"num_classes={num_classes}. Pass num_classes=len(dataset.classes).")


def build_head(in_features: int, num_classes: int, *, hidden: int | None = None, dropout: float = 0.2) -> nn.Module:
    """A Linear head, or with ``hidden`` a two-layer head with named layers fc1, relu, dropout, fc2.

    Used in: 05_feature_extraction.ipynb, 08_attribution_with_captum.ipynb (through train_head)
    """
    if hidden is None:
        return nn.Linear(in_features, num_classes)
    return nn.Sequential(OrderedDict(
        fc1=nn.Linear(in_features, hidden), relu=nn.ReLU(), dropout=nn.Dropout(dropout),
        fc2=nn.Linear(hidden, num_classes),
    ))


def _epoch(head, features, labels, criterion, optimizer=None, order=None, batch_size=64) -> tuple[float, float]:
    order = order if order is not None else torch.arange(len(features))
    total_loss = correct = 0.0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        with torch.set_grad_enabled(optimizer is not None):
            logits = head(features[idx])
            loss = criterion(logits, labels[idx])
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        total_loss += loss.item() * len(idx)
        correct += (logits.argmax(1) == labels[idx]).sum().item()
    return total_loss / len(order), correct / len(order)


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the CPU generator and the one of ``device`` (CUDA/MPS) inside the block; restore both after.

    Only those two: other GPUs' generators are neither reseeded nor advanced.
    """
    accelerator = device.type in ("cuda", "mps")
    index = (device.index if device.index is not None else 0) if accelerator else None
    kind = device.type if accelerator else "cuda"
    with torch.random.fork_rng(devices=[index] if accelerator else [], device_type=kind):
        torch.random.default_generator.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.default_generators[index].manual_seed(seed)
        elif device.type == "mps":
            torch.mps.manual_seed(seed)
        yield


def train_head(
    train_features: torch.Tensor, train_labels: torch.Tensor, val_features: torch.Tensor,
    val_labels: torch.Tensor, *, num_classes: int, epochs: int = 30, lr: float = 1e-3,
    hidden: int | None = None, batch_size: int = 64, seed: int = 0,
) -> tuple[nn.Module, list[dict]]:
    """Train a new head on precomputed features with AdamW (seconds per epoch instead of minutes).

    Args:
        train_features, train_labels: ``(N, D)`` and ``(N,)`` from :func:`extract_features`.
        val_features, val_labels: The validation split, evaluated after every epoch.
        num_classes: Outputs of the head.
        epochs: Passes over the training features.
        lr: AdamW learning rate.
        hidden: If given, a two-layer head (:func:`build_head`) with this many hidden units.
        batch_size: Features per step.
        seed: Seeds the head's initialisation, shuffling and dropout (global RNG state is restored).

    Returns:
        ``(head, history)``: the head in eval mode, and one dict per epoch with the keys of
        ``train.fit``: epoch, train_loss, train_acc, val_loss, val_acc, seconds.

    Raises:
        ValueError: Shapes do not fit, feature dims differ, labels do not fit ``num_classes``, or ``lr`` is
            not a finite number > 0.

    Used in: 05_feature_extraction.ipynb, 08_attribution_with_captum.ipynb, 06_fine_tuning.ipynb,
        06_fine_tuning_far_domain.ipynb
    """
    _check_features(train_features, train_labels, val_features, val_labels, num_classes)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0 such as 1e-3, got {lr!r} (lr=0 trains nothing: the "
                         "head keeps its random initial weights).")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}.")
    train_labels, val_labels = train_labels.long(), val_labels.long()
    criterion, history = nn.CrossEntropyLoss(), []
    with _seeded(seed, train_features.device):
        head = build_head(train_features.shape[1], num_classes, hidden=hidden).to(train_features.device)
        optimizer = torch.optim.AdamW(head.parameters(), lr=lr)
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            head.train()
            order = torch.randperm(len(train_features), device=train_features.device)
            train_loss, train_acc = _epoch(head, train_features, train_labels, criterion, optimizer, order, batch_size)
            head.eval()
            val_loss, val_acc = _epoch(head, val_features, val_labels, criterion, batch_size=batch_size)
            history.append({"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                            "val_loss": val_loss, "val_acc": val_acc, "seconds": time.perf_counter() - start})
    return head.eval(), history

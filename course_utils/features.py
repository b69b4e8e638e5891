"""Feature extraction: run a frozen backbone once, cache its pooled features, train a head on them.

The cache file's name is a hash of everything the features depend on: the backbone's weights, the exact
list of image files (path, size, mtime), the dataset's transforms (their ``repr``, e.g. ``Normalize``'s
mean and std) and the caller's optional ``cache_key``, so a changed dataset, model or preprocessing never
gets stale features. :func:`cache_path` and :func:`load_cache` are the one cache scheme, also of
``probes.stage_features``. The backbone runs on ONNX Runtime when it is installed (``engines.frozen_forward``).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from course_utils.checkpoints import atomic_save, check_writable
from course_utils.data import image_files
from course_utils.engines import digest, frozen_forward, weights_digest


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


CACHE_FORMAT = 3  # bump when what extract_features or probes.stage_features computes changes


class Extracted(tuple):
    """What :func:`extract_features` and ``probes.stage_features`` return: their tuple, plus ``engine``.

    ``engine`` is ``"onnxruntime"`` or ``"torch"``, or ``"cache (computed by onnxruntime)"`` and the like when
    the result was read from the cache.

    Used in: 05_feature_extraction.ipynb
    """

    def __new__(cls, items, *, engine: str) -> Extracted:
        result = super().__new__(cls, items)
        result.engine = engine
        return result


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


def _data_identity(dataset, inputs: Sequence[torch.Tensor] | None) -> dict:
    try:
        listed = image_files(dataset)
    except TypeError as err:
        if inputs is None:
            raise TypeError(f"{err} Without the file list its features cannot be cached safely; "
                            "pass cache_dir=None to skip the cache.") from None
        return {"tensors": digest(enumerate(inputs))}
    files = []
    for path, label in listed:
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            target = f" is a broken link to {os.readlink(path)}" if os.path.islink(path) else " no longer exists"
            raise FileNotFoundError(f"The image {path}{target}. Restore the file, or delete it and build the "
                                    "dataset again (find_splits / image_folder).") from None
        files.append([os.path.abspath(path), label, stat.st_size, stat.st_mtime_ns])
    return {"files": files, "pipeline": pipeline_description(dataset)}


def cache_path(
    cache_dir: str | Path, *, kind: str, weights: str, dataset, key: str = "",
    inputs: Sequence[torch.Tensor] | None = None,
) -> Path:
    """The cache file ``cache_dir/{kind}-{hash}.pt``: the hash covers everything the features depend on.

    Hashed: :data:`CACHE_FORMAT`, ``kind``, ``key``, ``weights`` (``engines.weights_digest``) and the data:
    the dataset's exact file list (path, label, size, mtime) with its :func:`pipeline_description` when it
    lists its files, else the bytes, shapes and dtypes of ``inputs`` (every image tensor and the labels).
    The engine is not hashed: ONNX Runtime's outputs equal PyTorch's within 1e-4 (relative, checked at
    every export by ``deploy.export_onnx``), so a file serves both.

    Raises:
        TypeError: The dataset lists no files and no ``inputs`` are given.
        FileNotFoundError: An image file is gone (a broken link); the message names it.

    Used in: 05_feature_extraction.ipynb, 09_when_to_transfer.ipynb (through extract_features, stage_features)
    """
    blob = json.dumps({"format": CACHE_FORMAT, "kind": kind, "key": key, "weights": weights,
                       **_data_identity(dataset, inputs)}).encode()
    return Path(cache_dir) / f"{kind}-{hashlib.sha256(blob).hexdigest()[:24]}.pt"


def load_cache(path: Path, keys: Sequence[str]) -> dict | None:
    """The dict cached at ``path``, or None when there is none or it is damaged (then a warning names it).

    A damaged file (cut short, not a torch file, missing one of ``keys``) is reported and treated as
    missing: the caller computes the result again and overwrites it.

    Used in: 05_feature_extraction.ipynb, 09_when_to_transfer.ipynb (through extract_features, stage_features)
    """
    if not path.is_file():
        return None
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        problem = f"{type(err).__name__}: {str(err)[:200]}"
    else:
        missing = [name for name in keys if not isinstance(cached, dict) or name not in cached]
        if not missing:
            return cached
        problem = f"it has no {', '.join(missing)}"
    warnings.warn(f"The cache file {path} is damaged ({problem}); computing it again and overwriting it.",
                  RuntimeWarning, stacklevel=3)
    return None


def _run_backbone(model: nn.Module, dataset, batch_size: int, progress: bool, engine: str) -> Extracted:
    """The plain loop: every batch through the backbone without its head; ``forward`` is eager PyTorch
    (eval mode, ``torch.inference_mode``, channels_last) or the same network exported to ONNX Runtime."""
    from torch.utils.data import DataLoader

    from course_utils.progress import progress_bar

    example = torch.stack([dataset[0][0], dataset[min(1, len(dataset) - 1)][0]])
    chunks, labels = [], []
    with head_removed(model), frozen_forward(model, example, images=len(dataset), engine=engine) as forward:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
        for images, targets in progress_bar(loader, desc=f"features ({forward.engine})", disable=not progress):
            chunks.append(forward(images)[0])
            labels.append(torch.as_tensor(targets).cpu())
    # Outside inference mode: cat makes ordinary tensors that can feed a trainable head.
    return Extracted((torch.cat(chunks).clone(), torch.cat(labels).long().clone()), engine=forward.engine)


def extract_features(
    model: nn.Module, dataset, *, batch_size: int = 64, cache_dir: str | Path | None = None,
    cache_key: str = "", progress: bool = True, engine: str = "auto",
) -> Extracted:
    """Pooled penultimate features of every image, computed once and optionally cached on disk.

    The head is bypassed (:func:`head_removed`); the model runs in eval mode under
    ``torch.inference_mode`` with channels_last images, and its train/eval mode is restored after. On the
    CPU with onnxruntime installed and enough images, the same network runs exported to ONNX Runtime
    instead (``engines.frozen_forward``: 2 to 4 times faster, outputs equal within 1e-4 relative).

    Args:
        model: A classifier whose head :func:`models.get_head` finds.
        dataset: Yields ``(image_tensor, label)``, already transformed.
        batch_size: Images per forward pass.
        cache_dir: Folder for the cache, e.g. ``data.runs_root() / "features"`` (never the dataset folder).
            The file name hashes the backbone weights, the dataset's exact file list (paths, sizes,
            mtimes), its transforms (:func:`pipeline_description`) and ``cache_key``. ``None``: no cache.
        cache_key: Anything else the features depend on that none of those shows (optional).
        progress: Show a progress bar (its label names the engine).
        engine: ``"auto"``, ``"onnxruntime"`` or ``"torch"`` (see ``engines.frozen_forward``).

    Returns:
        ``(features, labels)`` of shapes ``(N, D)`` (float32, CPU) and ``(N,)`` (int64), a tuple whose
        ``.engine`` says what computed them (:class:`Extracted`).

    Raises:
        ValueError: ``batch_size`` is not a positive integer, the dataset is empty, or ``engine`` is unknown.
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
    path = None
    if cache_dir is not None:
        with head_removed(model):
            weights = weights_digest(model)
        path = cache_path(cache_dir, kind="features", weights=weights, dataset=dataset, key=cache_key)
        cached = load_cache(path, ["features", "labels", "engine"])
        if cached is not None:
            return Extracted((cached["features"], cached["labels"]), engine=f"cache (computed by {cached['engine']})")
        check_writable(path)  # before the backbone runs, not after
    result = _run_backbone(model, dataset, batch_size, progress, engine)
    if path is not None:
        atomic_save({"features": result[0], "labels": result[1], "engine": result.engine}, path)
    return result


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

    Used in: 05_feature_extraction.ipynb, 06_fine_tuning.ipynb, 06_fine_tuning_far_domain.ipynb,
        08_attribution_with_captum.ipynb (through train_head)
    """
    if hidden is None:
        return nn.Linear(in_features, num_classes)
    return nn.Sequential(OrderedDict(
        fc1=nn.Linear(in_features, hidden), relu=nn.ReLU(), dropout=nn.Dropout(dropout),
        fc2=nn.Linear(hidden, num_classes),
    ))


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
    hidden: int | None = None, batch_size: int = 64, seed: int = 0, restore_best: bool = False,
) -> tuple[nn.Module, list[dict]]:
    """Train a new head on precomputed features: ``train.fit`` with AdamW over ``TensorDataset`` loaders.

    The loop is the one that trains whole networks; only the data differ (seconds per epoch, not minutes).

    Args:
        train_features, train_labels: ``(N, D)`` and ``(N,)`` from :func:`extract_features`.
        val_features, val_labels: The validation split, evaluated after every epoch.
        num_classes: Outputs of the head.
        epochs, lr, batch_size: Passes over the training features, AdamW's rate, features per step.
        hidden: If given, a two-layer head (:func:`build_head`) with this many hidden units.
        seed: Seeds the head's initial weights, its dropout and the shuffling (the global random state is
            restored afterwards).
        restore_best: As in ``train.fit``. False (the default) keeps the last epoch, so that a head later
            compared with other models on the validation features was not picked by them.

    Returns:
        ``(head, history)``: the head in eval mode, and ``train.fit``'s history (epoch, train_loss,
        train_acc, val_loss, val_acc, seconds).

    Raises:
        ValueError: Shapes do not fit, feature dims differ, labels do not fit ``num_classes``, ``lr`` is
            not a finite number > 0, or ``epochs`` is not a positive integer.

    Used in: 05_feature_extraction.ipynb, 06_fine_tuning.ipynb, 06_fine_tuning_far_domain.ipynb,
        08_attribution_with_captum.ipynb (through finetuned.load_or_train)
    """
    from torch.utils.data import DataLoader, TensorDataset

    from course_utils.train import fit

    _check_features(train_features, train_labels, val_features, val_labels, num_classes)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0 such as 1e-3, got {lr!r} (lr=0 trains nothing: the "
                         "head keeps its random initial weights).")
    device = train_features.device
    train_set = TensorDataset(train_features, train_labels.long())
    val_loader = DataLoader(TensorDataset(val_features, val_labels.long()), batch_size=batch_size)
    with _seeded(seed, device):
        head = build_head(train_features.shape[1], num_classes, hidden=hidden).to(device)
        loader = DataLoader(train_set, batch_size=batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
        history = fit(head, nn.CrossEntropyLoss(), torch.optim.AdamW(head.parameters(), lr=lr), loader, val_loader,
                      device, epochs=epochs, progress=False, restore_best=restore_best)
    return head.eval(), history

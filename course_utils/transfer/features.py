"""Feature extraction: run a frozen backbone once, cache its pooled features, train a head on them.

The cache file's name is a hash of everything the features depend on: the backbone's weights, the exact
list of image files (path, size, mtime), the dataset's transforms (their ``repr``, e.g. ``Normalize``'s
mean and std) and the caller's optional ``cache_key``, so a changed dataset, model or preprocessing never
gets stale features (the scheme, shared with ``probes.stage_features``, is :mod:`course_utils.transfer.feature_cache`).
The backbone runs on ONNX Runtime when it is installed (``engines.frozen_forward``).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from course_utils.arguments import require_int, require_number
from course_utils.deploy.engines import frozen_forward, weights_digest
from course_utils.files import atomic_save, check_writable
from course_utils.transfer.feature_cache import Extracted, cache_path, load_cache


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


def _run_backbone(model: nn.Module, dataset, batch_size: int, progress: bool, engine: str) -> Extracted:
    """The plain loop: every batch through the backbone without its head; ``forward`` is eager PyTorch
    (eval mode, ``torch.inference_mode``, channels_last) or the same network exported to ONNX Runtime."""
    from torch.utils.data import DataLoader

    from course_utils.progress import progress_bar

    example = torch.stack([dataset[0][0], dataset[min(1, len(dataset) - 1)][0]])
    chunks, labels = [], []
    with head_removed(model), frozen_forward(model, example, images=len(dataset), engine=engine,
                                             batch_size=min(batch_size, len(dataset))) as forward:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
        for images, targets in progress_bar(loader, desc=f"features ({forward.engine})", disable=not progress):
            chunks.append(forward(images)[0])
            labels.append(torch.as_tensor(targets).cpu())
    # Outside inference mode: cat makes ordinary tensors that can feed a trainable head.
    return Extracted((torch.cat(chunks).clone(), torch.cat(labels).long().clone()), engine=forward.engine)


def extract_features(
    model: nn.Module, dataset, *, batch_size: int = 32, cache_dir: str | Path | None = None,
    cache_key: str = "", progress: bool = True, engine: str = "auto",
) -> Extracted:
    """Pooled penultimate features of every image, computed once and optionally cached on disk.

    The head is bypassed (:func:`head_removed`); the model runs in eval mode under
    ``torch.inference_mode`` with channels_last images, and its train/eval mode is restored after. On the
    CPU with onnxruntime installed and enough images, the same network runs exported to ONNX Runtime
    instead (``engines.frozen_forward``: 1.5 to 4 times faster where measured, outputs equal within 1e-4
    of their largest value).

    Args:
        model: A classifier whose head :func:`models.get_head` finds.
        dataset: Yields ``(image_tensor, label)``, already transformed.
        batch_size: Images per forward pass (and the batch size ONNX Runtime's export is fixed to). Over quiet
            runs of ``benchmarks/feature_extraction.py`` on 2 cores at 224 px, 16 and 32 were the fastest by
            turns, and 64 slower (its activations outgrow the cache); 32 is the default.
        cache_dir: Folder for the cache, e.g. ``data.runs_root() / "features"`` (never the dataset folder).
            The file name hashes the backbone weights, the dataset's exact file list (paths, sizes,
            mtimes), its transforms (``feature_cache.pipeline_description``) and ``cache_key``. ``None``: no cache.
        cache_key: Anything else the features depend on that none of those shows (optional).
        progress: Show a progress bar (its label names the engine).
        engine: ``"auto"``, ``"onnxruntime"`` or ``"torch"`` (see ``engines.frozen_forward``).

    Returns:
        ``(features, labels)`` of shapes ``(N, D)`` (float32, CPU) and ``(N,)`` (int64), a tuple whose
        ``.engine`` says what computed them (``feature_cache.Extracted``).

    Raises:
        ValueError: ``batch_size`` is not a positive integer, the dataset is empty, or ``engine`` is unknown.
        TypeError: ``cache_dir`` is given but the dataset's files cannot be listed.
        FileNotFoundError: An image file is gone (a broken link); the message names it.
        PermissionError: ``cache_dir`` cannot be written (checked before the backbone runs).

    Used in: 05_feature_extraction.ipynb, 06_fine_tuning.ipynb, 06_fine_tuning_far_domain.ipynb;
        08_attribution_with_captum.ipynb (through finetuned.load_or_train)
    """
    require_int("batch_size", batch_size, example=64, fix="It is how many images go through the backbone at once.")
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
    require_int("num_classes", num_classes, minimum=2, fix="Pass num_classes=len(dataset.classes).")
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
    require_number("lr", lr, example="1e-3", fix="lr=0 trains nothing: the head keeps its random initial weights.")
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

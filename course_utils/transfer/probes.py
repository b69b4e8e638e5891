"""Features from every depth of a backbone in one forward pass, and the linear probes that test them.

A *linear probe* is a linear classifier trained on frozen features: its validation accuracy says how
much of what the task needs is already linearly available at that depth. Probing the stages of one
network (Alain and Bengio, "Understanding intermediate layers using linear classifier probes", 2016;
Yosinski et al., "How transferable are features in deep neural networks?", 2014) measures where its
features stop being general and start being specific to the data it was pretrained on.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from course_utils.arguments import require_int
from course_utils.deploy.engines import frozen_forward, weights_digest
from course_utils.files import atomic_save, check_writable
from course_utils.transfer.feature_cache import Extracted, cache_path, load_cache


def _forward_all(
    model: nn.Module, batches: list[torch.Tensor], stages: Sequence[str], maps: Sequence[str], device: torch.device,
    engine: str,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], str]:
    model.to(device)
    chunks: list[tuple[torch.Tensor, ...]] = []
    with frozen_forward(model, batches[0], images=sum(map(len, batches)), pooled=stages, maps=maps, engine=engine,
                        device=device) as forward:
        for images in batches:
            chunks.append(forward(images))
    names = [*stages, *maps]
    # Outside inference mode: cat makes ordinary tensors that can feed a trainable head.
    joined = {i: torch.cat([chunk[i] for chunk in chunks]).clone() for i in range(len(names))}
    return ({name: joined[i] for i, name in enumerate(stages)},
            {name: joined[len(stages) + i] for i, name in enumerate(maps)}, forward.engine)


def stage_features(
    model: nn.Module, dataset, *, stages: Sequence[str], maps: Sequence[str] = (), batch_size: int = 32,
    cache_dir=None, device: torch.device | str | None = None, engine: str = "auto",
) -> Extracted:
    """Globally average-pooled outputs of several stages, from one forward pass per image, optionally cached.

    Forward hooks (:func:`gradients.capture_activations`, removed afterwards) record each stage's output
    while the model runs in eval mode under ``torch.inference_mode``; each ``(N, C, H, W)`` output is
    averaged over its positions to ``(N, C)``. On the CPU with onnxruntime installed and enough images,
    the same network runs exported to ONNX Runtime (``engines.frozen_forward``; equal within 1e-4 relative).

    Args:
        model: Any network; its mode is restored afterwards.
        dataset: Yields ``(image_tensor, label)``, already transformed (no random augmentation).
        stages: Dotted module names, e.g. from ``surgery.stages(model)`` (leave out the head).
        maps: Stages whose whole ``(N, C, H, W)`` output is kept as well (what the layers after them
            need: see :func:`scenarios.top_of`). Keep them few: they are larger than pooled features.
        batch_size: Images per forward pass (32: see ``features.extract_features``).
        cache_dir: Folder for the cache, e.g. ``data.runs_root() / "stage_features"``, or ``None``. The file
            name (``feature_cache.cache_path``) hashes the stage names, the model's weights, and the dataset's
            files and transforms, or, for images held in memory, the exact input tensors and labels: any
            change of images, transform or weights computes the features again.
        device: Where the model runs (``None``: :func:`train.select_device`); it is moved there.
        engine: ``"auto"``, ``"onnxruntime"`` or ``"torch"`` (see ``engines.frozen_forward``).

    Returns:
        ``(pooled, maps, labels)``: ``{stage: (N, C)}`` float32, ``{stage: (N, C, H, W)}`` float32 for the
        stages in ``maps``, and ``(N,)`` int64 labels; ``.engine`` says what computed them.

    Raises:
        ValueError: ``stages`` is empty, a stage is not a submodule, ``batch_size`` is not a positive
            integer, the dataset is empty, or ``engine`` is unknown.

    Used in: 09_when_to_transfer.ipynb, 11_your_own_images.ipynb
    """
    from torch.utils.data import DataLoader

    from course_utils.train import select_device

    device = select_device(device)
    stages = [stages] if isinstance(stages, str) else list(stages)
    maps = [maps] if isinstance(maps, str) else list(maps)
    if not stages:
        raise ValueError("stages is empty: pass module names such as surgery.stages(model)[:-1].")
    require_int("batch_size", batch_size, example=64, fix="It is how many images go through the model at once.")
    if len(dataset) == 0:
        raise ValueError("The dataset is empty: nothing to extract features from.")
    batches, labels = [], []
    for images, targets in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        batches.append(images)
        labels.append(torch.as_tensor(targets).long())
    labels = torch.cat(labels)
    path = None
    if cache_dir is not None:
        path = cache_path(cache_dir, kind="stages", weights=weights_digest(model), dataset=dataset,
                          key="|".join(stages) + "/" + "|".join(maps), inputs=[*batches, labels])
        cached = load_cache(path, ["pooled", "maps", "labels", "engine"])
        if cached is not None:
            return Extracted((cached["pooled"], cached["maps"], cached["labels"]),
                             engine=f"cache (computed by {cached['engine']})")
        check_writable(path)
    pooled, full, used = _forward_all(model, batches, stages, maps, device, engine)
    if path is not None:
        atomic_save({"pooled": pooled, "maps": full, "labels": labels, "engine": used}, path)
    return Extracted((pooled, full, labels), engine=used)


def per_class_subset(labels: torch.Tensor | Sequence[int], per_class: int | None, *, seed: int) -> torch.Tensor:
    """Indices of ``per_class`` randomly drawn items of every class (all items when ``per_class`` is None).

    The draw depends only on ``seed``, ``labels`` and ``per_class``; the indices come back sorted.

    Raises:
        ValueError: ``per_class`` is not a positive integer, or a class has fewer items than that.

    Used in: 09_when_to_transfer.ipynb
    """
    labels = torch.as_tensor(labels).long()
    if per_class is None:
        return torch.arange(len(labels))
    require_int("per_class", per_class, example=20, fix="It is how many items of each class to keep; None keeps all.")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in labels.unique().tolist():
        members = (labels == label).nonzero().flatten()
        if len(members) < per_class:
            raise ValueError(f"Class {label} has only {len(members)} items, fewer than per_class={per_class}; "
                             f"use at most {len(members)} or None for all.")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


def linear_probe(
    train_features: torch.Tensor, train_labels: torch.Tensor, val_features: torch.Tensor, *,
    c: float = 1.0, seed: int = 0,
) -> torch.Tensor:
    """Predictions of a standardised logistic regression trained on frozen features.

    scikit-learn's ``StandardScaler`` then ``LogisticRegression(C=c)`` (L2 penalty, lbfgs); ``c`` is the
    inverse regularisation strength.

    Returns:
        ``(N_val,)`` int64 predicted class indices.

    Raises:
        ValueError: The feature dimensions differ or the label count does not match.

    Used in: 09_when_to_transfer.ipynb, 11_your_own_images.ipynb
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if train_features.dim() != 2 or val_features.dim() != 2 or train_features.shape[1] != val_features.shape[1]:
        raise ValueError(f"Features must be (N, D) with the same D, got {tuple(train_features.shape)} and "
                         f"{tuple(val_features.shape)}.")
    if len(train_features) != len(train_labels):
        raise ValueError(f"{len(train_features)} training features but {len(train_labels)} labels.")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))
    probe.fit(train_features.numpy(), torch.as_tensor(train_labels).numpy())
    return torch.as_tensor(probe.predict(val_features.numpy())).long()


def choose_stage(
    features: dict[str, torch.Tensor], labels: torch.Tensor, *, candidates: Sequence[str], seed: int = 0,
) -> tuple[str, dict[str, float]]:
    """The stage whose linear probe scores best on a held-out third of the *training* images.

    Choosing a stage by its validation accuracy would make that accuracy look better than it is; this
    holds out a class-balanced third of the training set instead (:func:`per_class_subset`), fits a probe
    per candidate on the rest and scores it there.

    Args:
        features: ``{stage: (N, C)}`` training features (from :func:`stage_features`).
        labels: ``(N,)`` training labels.
        candidates: The stages to choose from.
        seed: Seeds the held-out draw.

    Returns:
        ``(best stage, {stage: held-out accuracy})``.

    Raises:
        ValueError: ``candidates`` is empty or names a stage missing from ``features``.

    Used in: 09_when_to_transfer.ipynb, benchmarks/transfer_scenarios.py
    """
    missing = [stage for stage in candidates if stage not in features]
    if not candidates or missing:
        raise ValueError(f"candidates must name stages of features ({', '.join(features)}); got {list(candidates)}.")
    labels = torch.as_tensor(labels).long()
    held_out = per_class_subset(labels, (torch.bincount(labels).min().item() + 2) // 3, seed=seed)
    fit = torch.ones(len(labels), dtype=torch.bool)
    fit[held_out] = False
    scores = {stage: (linear_probe(features[stage][fit], labels[fit], features[stage][held_out], seed=seed)
                      == labels[held_out]).float().mean().item() for stage in candidates}
    return max(scores, key=scores.get), scores

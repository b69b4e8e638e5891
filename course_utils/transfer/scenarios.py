"""The four scenarios measured: strategies x training-set sizes x seeds on a near and a far domain.

Notebook 09 writes the grid's loop out (for each domain, size, strategy and seed: build, train, evaluate,
record); :func:`run_cell` and :func:`run_grid` are that loop packaged for ``benchmarks/transfer_scenarios.py``,
and the notebook checks that :func:`run_cell` reproduces one of its own cells. Each :class:`CellResult` records,
for every validation image, whether it was classified correctly; :mod:`verdicts` reads them.

Strategies (``STRATEGIES``):

- ``"scratch"``: the backbone's architecture with random weights, every weight trained.
- ``"head: last"``: a linear probe on the pooled features the ImageNet head sees (:mod:`probes`).
- ``"head: earlier"``: a linear probe on the pooled output of an earlier stage.
- ``"partial"``: ImageNet weights, the last ``partial_stages`` stages (head included) trained. The frozen
  stages below are computed once (:func:`probes.stage_features` with ``maps``); only :func:`top_of` trains.
- ``"full"``: ImageNet weights, every weight trained.

All of them see the same images without augmentation (frozen features cannot be augmented for free),
and every trained network gets the same budget of optimizer steps whatever the size of its training set.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

STRATEGIES = ("scratch", "head: last", "head: earlier", "partial", "full")


@dataclass
class Domain:
    """One dataset of the grid: model-ready images and their cached stage features.

    Attributes:
        name: Shown in tables and plots, e.g. ``"ants/bees (near)"``.
        train_images, val_images: ``(N, 3, H, W)`` float tensors, already normalised.
        train_labels, val_labels: ``(N,)`` int64 tensors.
        train_features, val_features: ``{stage: (N, C)}`` pooled, from :func:`probes.stage_features`.
        train_maps, val_maps: ``{stage: (N, C, H, W)}`` whole outputs of the stage below the part that
            ``"partial"`` trains (``probes.stage_features(..., maps=...)``).
        last_stage, earlier_stage: The stages the two probes read.

    Used in: 09_when_to_transfer.ipynb, benchmarks/transfer_scenarios.py
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    train_features: dict[str, torch.Tensor] = field(repr=False)
    val_features: dict[str, torch.Tensor] = field(repr=False)
    train_maps: dict[str, torch.Tensor] = field(repr=False)
    val_maps: dict[str, torch.Tensor] = field(repr=False)
    last_stage: str
    earlier_stage: str


@dataclass(frozen=True)
class Budget:
    """How the trained strategies train: AdamW at constant rates for a fixed number of steps.

    Attributes:
        steps: Optimizer steps, the same for every training-set size.
        batch_size: Images per step (fewer when the training set is smaller).
        lr: Learning rate per trained strategy (``"scratch"``, ``"partial"``, ``"full"``).
        weight_decay: AdamW weight decay.
        partial_stages: Stages trained by ``"partial"``, counted from the head (the head is one).

    Used in: 09_when_to_transfer.ipynb, benchmarks/transfer_scenarios.py, 11_your_own_images.ipynb
    """

    steps: int = 60
    batch_size: int = 16
    lr: dict = field(default_factory=lambda: {"scratch": 3e-3, "partial": 1e-3, "full": 1e-3})
    weight_decay: float = 1e-4
    partial_stages: int = 4


@dataclass(frozen=True, eq=False)
class CellResult:
    """One cell of the grid with one seed: which validation images the trained strategy got right.

    Attributes:
        domain, strategy: As in :class:`Domain` and ``STRATEGIES``.
        per_class: Training images per class (``None``: all of them); ``n_train`` of them in all.
        seed: Seeded the subset, the new head, the initialisation and the batches.
        correct: ``(N_val,)`` bool tensor, True where the validation image was classified correctly.
        seconds: Wall-clock time of training and evaluation.

    Used in: 09_when_to_transfer.ipynb, benchmarks/transfer_scenarios.py
    """

    domain: str
    strategy: str
    per_class: int | None
    n_train: int
    seed: int
    correct: torch.Tensor = field(repr=False)
    seconds: float


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Inside the block torch's global generators start from ``seed``; after it they are as they were."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def finetune(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, lr: float, weight_decay: float, steps: int,
    batch_size: int, seed: int, device: torch.device | str | None = None,
) -> nn.Module:
    """Train the parameters of ``model`` that require gradients for exactly ``steps`` AdamW steps.

    Freeze first what must not train (``surgery.unfreeze_last``). A seeded sampler goes through the inputs in
    shuffled passes; one call of :func:`train.train_one_epoch` (frozen BatchNorms in eval mode) runs them all.

    Args:
        model: Maps a batch of ``inputs`` to logits: a whole network, or :func:`top_of` on cached maps.
        inputs, labels: The training set as tensors.
        lr, weight_decay: AdamW settings (constant learning rate).
        steps, batch_size: Optimizer steps, whatever the number of inputs; inputs per step (at most all).
        seed: Seeds the batches and dropout; torch's global generators are left as they were.
        device: Where to train (``None``: :func:`train.select_device`); on CUDA with mixed precision.

    Returns ``model``, trained, in eval mode, on ``device``. Raises ValueError when ``steps`` or ``batch_size`` is
    not a positive integer, or when nothing is trainable.

    Used in: 09_when_to_transfer.ipynb, 11_your_own_images.ipynb
    """
    from torch.utils.data import DataLoader, RandomSampler, TensorDataset

    from course_utils import train
    from course_utils.arguments import require_int

    require_int("steps", steps, example=60)
    require_int("batch_size", batch_size, example=16)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("No parameter of the model requires gradients: unfreeze what should train first.")
    batch = min(batch_size, len(inputs))
    dataset = TensorDataset(inputs, labels)
    sampler = RandomSampler(dataset, num_samples=steps * batch, generator=torch.Generator().manual_seed(seed))
    device = train.select_device(device)
    model.to(device)
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    with _seeded(seed):  # dropout draws from the global generator
        train.train_one_epoch(model, nn.CrossEntropyLoss(), optimizer, DataLoader(dataset, batch_size=batch,
                              sampler=sampler), device, scaler=scaler, progress=False)
    return model.eval()


class _Top(nn.Module):
    """The layers of a timm EfficientNet after one stage: ``top(output of that stage) == model(images)``."""

    def __init__(self, model: nn.Module, modules: list[nn.Module]) -> None:
        super().__init__()
        self.model, self.order = model, modules  # a plain list: the modules stay registered once, in model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.order:
            x = module(x)
        return self.model.forward_head(x)


def top_of(model: nn.Module, stage: str) -> nn.Module:
    """The part of a timm EfficientNet (the Lite backbones) that runs after ``stage``, as its own module.

    ``top_of(model, "blocks.5")(maps)`` equals ``model(images)`` when ``maps`` is what ``blocks.5`` outputs
    for ``images``, and it shares its parameters with ``model``: training it trains them.

    Args:
        model: A timm EfficientNet, e.g. from ``models.load_backbone("efficientnet_lite0")``.
        stage: A name from ``surgery.stages(model)`` below the head (``"bn1"``, ``"blocks.0"`` ... ``"bn2"``).

    Raises:
        TypeError: ``model`` is not a timm EfficientNet.
        ValueError: ``stage`` is not one of its stages below the head.

    Used in: 09_when_to_transfer.ipynb, 11_your_own_images.ipynb
    """
    if not all(hasattr(model, name) for name in ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "forward_head")):
        raise TypeError(f"top_of needs a timm EfficientNet (such as load_backbone('efficientnet_lite0')), got "
                        f"{type(model).__name__}.")
    sequence = [("conv_stem", model.conv_stem), ("bn1", model.bn1),
                *((f"blocks.{i}", block) for i, block in enumerate(model.blocks)),
                ("conv_head", model.conv_head), ("bn2", model.bn2)]
    names = [name for name, _ in sequence]
    if stage not in names:
        raise ValueError(f"Unknown stage {stage!r}; choose one of {', '.join(names)}.")
    return _Top(model, [module for _, module in sequence[names.index(stage) + 1:]])


def predict_images(
    model: nn.Module, images: torch.Tensor, *, batch_size: int = 128, device: torch.device | str | None = None,
) -> torch.Tensor:
    """Predicted class of every image (eval mode, no gradients) as an ``(N,)`` int64 tensor on the CPU.

    ``device``: where the model runs (``None``: :func:`train.select_device`); the model is moved there.

    Used in: 09_when_to_transfer.ipynb, 11_your_own_images.ipynb
    """
    from torch.utils.data import DataLoader, TensorDataset

    from course_utils.train import predict, select_device

    device = select_device(device)
    dataset = TensorDataset(images, torch.zeros(len(images), dtype=torch.long))
    loader = DataLoader(dataset, batch_size=batch_size, generator=torch.Generator())  # not the global generator
    logits, _ = predict(model.to(device), loader, device)
    return logits.argmax(1)


def _train_and_predict(
    domain: Domain, strategy: str, index: torch.Tensor, *, seed: int, backbone: str, pretrained: nn.Module,
    budget: Budget, device: torch.device | str | None,
) -> torch.Tensor:
    """Build the network of a trained strategy, fine-tune it on ``index`` and predict the validation set."""
    from course_utils import models
    from course_utils.models import surgery

    with _seeded(seed):  # timm draws random weights (scratch's, and a new head's before its seed) globally
        if strategy == "scratch":
            model, _ = models.load_backbone(backbone, pretrained=False)
        else:
            model = copy.deepcopy(pretrained)
        models.replace_head(model, int(domain.train_labels.max()) + 1, seed=seed)
    surgery.unfreeze(model)
    inputs, val_inputs, network = domain.train_images, domain.val_images, model
    if strategy == "partial":
        split = surgery.stages(model)[-budget.partial_stages - 1]
        inputs, val_inputs, network = domain.train_maps[split], domain.val_maps[split], top_of(model, split)
        surgery.unfreeze_last(model, budget.partial_stages)
    finetune(network, inputs[index], domain.train_labels[index], lr=budget.lr[strategy], steps=budget.steps,
             weight_decay=budget.weight_decay, batch_size=budget.batch_size, seed=seed, device=device)
    return predict_images(network, val_inputs, device=device)


def run_cell(
    domain: Domain, strategy: str, *, per_class: int | None, seed: int, backbone: str, pretrained: nn.Module,
    budget: Budget, device: torch.device | str | None = None,
) -> CellResult:
    """Train one strategy on one seeded subset of ``domain`` and score every validation image.

    Args:
        domain: The data and its cached features.
        strategy: One of ``STRATEGIES``.
        per_class: Training images per class (``None``: all of them).
        seed: Seeds the subset, the new head, the initialisation and the batches (torch's global
            generators are left as they were).
        backbone: Name for :func:`models.load_backbone`; the strategy ``"scratch"`` builds it with random weights.
        pretrained: The loaded ImageNet model, copied for each fine-tuning run.
        budget, device: How and where trained strategies train (``None``: :func:`train.select_device`).

    Raises:
        ValueError: ``strategy`` is not one of ``STRATEGIES``.

    Used in: 09_when_to_transfer.ipynb
    """
    from course_utils.transfer import probes

    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}.")
    index = probes.per_class_subset(domain.train_labels, per_class, seed=seed)
    start = time.perf_counter()
    if strategy.startswith("head"):
        stage = domain.last_stage if strategy == "head: last" else domain.earlier_stage
        predicted = probes.linear_probe(domain.train_features[stage][index], domain.train_labels[index],
                                        domain.val_features[stage], seed=seed)
    else:
        predicted = _train_and_predict(domain, strategy, index, seed=seed, backbone=backbone, pretrained=pretrained,
                                       budget=budget, device=device)
    return CellResult(domain.name, strategy, per_class, len(index), seed, predicted == domain.val_labels,
                      time.perf_counter() - start)


def run_grid(
    domains: Sequence[Domain], *, strategies: Sequence[str], sizes: Sequence[int | None], seeds: Sequence[int],
    backbone: str, pretrained: nn.Module, budget: Budget | None = None, progress: bool = True,
    device: torch.device | str | None = None,
) -> list[CellResult]:
    """:func:`run_cell` for every domain, strategy, size and seed; one result per cell and seed.

    With ``per_class=None`` the subset is the whole training set, so only the training itself depends
    on the seed there.

    Used in: benchmarks/transfer_scenarios.py
    """
    from course_utils.progress import progress_bar

    budget = budget or Budget()
    cells = [(d, s, n, seed) for d in domains for n in sizes for s in strategies for seed in seeds]
    return [run_cell(d, s, per_class=n, seed=seed, backbone=backbone, pretrained=pretrained, budget=budget,
                     device=device) for d, s, n, seed in progress_bar(cells, desc="grid", disable=not progress)]

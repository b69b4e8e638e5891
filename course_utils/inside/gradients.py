"""Look inside a network while it trains: gradient norms per layer, activations of named layers,
and the memory autograd keeps for the backward pass (their plots are in network_plots.py).

Every hook lives in a context manager that removes it again, also when the forward pass raises.
"""
from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from course_utils.arguments import require_int


def _group_of(name: str, groups: Sequence[str]) -> str | None:
    """The longest prefix in ``groups`` that owns the parameter ``name`` (None if none does)."""
    owners = [g for g in groups if name == g or name.startswith(g + ".")]
    return max(owners, key=len) if owners else None


def gradient_norms(
    model: nn.Module, *, groups: Sequence[str] | None = None, relative: bool = False
) -> dict[str, float | None]:
    """L2 norm of each parameter's ``.grad`` (call after ``loss.backward()``).

    Args:
        model: The network.
        groups: Dotted module names (for example ``surgery.stages(model)``). If given, the norms of all
            parameters under a name are combined into one: ``sqrt(sum of squared norms)``. Parameters
            under no name are left out.
        relative: Divide each norm by the norm of the parameters themselves (``||grad|| / ||weight||``),
            which says how large a step of plain SGD is compared with the weights it changes.

    Returns:
        ``{name: norm}`` in the model's order; ``None`` where the gradient is ``None`` (frozen
        parameters, or no backward pass yet). A group is ``None`` only if all its gradients are.

    Raises:
        ValueError: A name in ``groups`` owns no parameter; the message lists the valid names.

    Used in: 07_gradient_flow.ipynb (through record_gradient_norms)
    """
    named = list(model.named_parameters())
    if groups is None:
        keys = [(n, n) for n, _ in named]
    else:
        groups = [groups] if isinstance(groups, str) else list(groups)
        _check_groups(model, groups, [n for n, _ in named])
        keys = [(n, _group_of(n, groups)) for n, _ in named]
    grad_sq: dict[str, float | None] = {}
    weight_sq: dict[str, float] = {}
    for (_, key), (_, parameter) in zip(keys, named):
        if key is None:
            continue
        weight_sq[key] = weight_sq.get(key, 0.0) + parameter.detach().double().pow(2).sum().item()
        grad_sq.setdefault(key, None)
        if parameter.grad is not None:
            grad_sq[key] = (grad_sq[key] or 0.0) + parameter.grad.detach().double().pow(2).sum().item()
    norms = {}
    for key, total in grad_sq.items():
        if total is None:
            norms[key] = None
        elif relative:
            norms[key] = math.sqrt(total) / max(math.sqrt(weight_sq[key]), 1e-12)
        else:
            norms[key] = math.sqrt(total)
    return norms


def _check_groups(model: nn.Module, groups: Sequence[str], parameter_names: Sequence[str]) -> None:
    for group in groups:
        if not any(n == group or n.startswith(group + ".") for n in parameter_names):
            valid = [n for n, m in model.named_modules() if n and next(m.parameters(), None) is not None]
            raise ValueError(
                f"{group!r} owns no parameter of {type(model).__name__}. Valid names: "
                f"{_short_list(valid)}. Pass names such as course_utils.models.surgery.stages(model)."
            )


def _short_list(names: Sequence[str], limit: int = 25) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


@dataclass
class GradientStep:
    """One step of :func:`record_gradient_norms`: its number, loss, and gradient norm per name or group.

    Used in: 07_gradient_flow.ipynb (returned by record_gradient_norms)
    """

    step: int
    loss: float
    norms: dict[str, float | None]


def record_gradient_norms(
    model: nn.Module, batches: Iterable, *, steps: int, criterion: nn.Module,
    optimizer: torch.optim.Optimizer | None = None, groups: Sequence[str] | None = None,
    relative: bool = False, amp: bool = False,
) -> list[GradientStep]:
    """Run ``steps`` training steps (``train.train_one_epoch``) and record the gradient norms after each backward.

    The model is put in train mode, with the BatchNorm layers whose parameters are all frozen kept in
    eval mode (as in fine-tuning). ``batches`` is cycled if it has fewer than ``steps`` batches, and each
    batch is moved to the device of the model's parameters.

    Args:
        model: The network; its weights change only if ``optimizer`` is given.
        batches: Iterable of ``(images, targets)``, for example a DataLoader.
        steps: Number of steps (at least 1).
        criterion: Loss function, for example ``nn.CrossEntropyLoss()``.
        optimizer: Stepped after each backward; None records gradients without changing the weights.
        groups, relative: As in :func:`gradient_norms`.
        amp: Mixed precision on CUDA (``torch.autocast`` with bfloat16, which needs no loss scaling, so
            the recorded gradients are the true ones); ignored on other devices.

    Returns:
        One :class:`GradientStep` per step.

    Raises:
        ValueError: ``steps`` is not a positive integer, or ``batches`` is empty.

    Used in: 07_gradient_flow.ipynb
    """
    from course_utils.train import train_one_epoch

    require_int("steps", steps, example=5, fix="It is the number of optimizer steps to record.")
    history: list[GradientStep] = []

    def record(loss: float) -> None:  # after backward, before the optimizer's step
        history.append(GradientStep(len(history), loss, gradient_norms(model, groups=groups, relative=relative)))

    train_one_epoch(model, criterion, optimizer, itertools.islice(itertools.cycle(batches), steps),
                    next(model.parameters()).device, progress=False, autocast=torch.bfloat16 if amp else None,
                    after_backward=record)
    return history


def grad_bytes(model: nn.Module) -> int:
    """Bytes held by the ``.grad`` tensors of the model's parameters (0 before any backward).

    Used in: 07_gradient_flow.ipynb
    """
    return sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)


@dataclass
class SavedTensors:
    """What autograd saved for the backward pass inside :func:`track_saved_tensors`.

    Attributes:
        count: Number of distinct tensors saved.
        bytes: Their total size in bytes (each storage counted once, even when saved by several ops).
    """

    count: int = 0
    bytes: int = 0


@contextlib.contextmanager
def track_saved_tensors() -> Iterator[SavedTensors]:
    """Measure the activations autograd keeps for ``backward()`` during the forward passes inside.

    Uses ``torch.autograd.graph.saved_tensors_hooks``: every tensor an operation saves for its
    backward is counted once per storage. Parameters saved by an op count too (they are not copied,
    but they are small next to the activations of a CNN). The hooks are removed on exit.

    Yields:
        A :class:`SavedTensors` that fills up while the forward pass runs.

    Used in: 07_gradient_flow.ipynb
    """
    stats, seen = SavedTensors(), set()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key not in seen:
            seen.add(key)
            stats.count += 1
            stats.bytes += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield stats


@contextlib.contextmanager
def capture_activations(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of named submodules during the forward passes inside the ``with`` block.

    Example: ``with capture_activations(model, ["blocks.1", "blocks.5"]) as acts: model(x)``; then
    ``acts["blocks.1"]`` is that block's output (detached; the last forward pass wins).

    Args:
        model: The network.
        names: Dotted names from ``model.named_modules()``.

    Yields:
        A dict filled with ``{name: output tensor}`` as the forward pass runs.

    Raises:
        ValueError: A name is not a submodule; the message lists the valid names.

    Used in: 07_gradient_flow.ipynb
    """
    names = [names] if isinstance(names, str) else list(names)
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules or not n]
    if unknown:
        valid = [n for n in modules if n]
        raise ValueError(
            f"Unknown layer name(s) {unknown} in {type(model).__name__}. Valid names: {_short_list(valid)}. "
            "List them all with [name for name, _ in model.named_modules()]."
        )
    captured: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in names:
            def hook(module, args, output, name=name):
                captured[name] = output.detach()
            handles.append(modules[name].register_forward_hook(hook))
        yield captured
    finally:
        for handle in handles:
            handle.remove()

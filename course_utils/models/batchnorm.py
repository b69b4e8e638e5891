"""Frozen BatchNorm layers that stay frozen, also through ``model.train()``.

A BatchNorm layer in train mode normalises each batch with that batch's own statistics and moves its
running mean and variance towards them, even when its weight and bias are frozen. A frozen part of a
network should instead behave exactly as it did when it was trained, so its BatchNorm layers must stay
in eval mode. ``model.train()`` switches every submodule to train mode; to survive it, a frozen
BatchNorm gets a subclass of its own class (``BatchNorm2d`` becomes ``FrozenBatchNorm2d``, timm's
``BatchNormAct2d`` becomes ``FrozenBatchNormAct2d``) whose ``train()`` keeps it in eval mode. The object,
its parameters (still ``nn.Parameter``, ``requires_grad=False``), its buffers and its state-dict keys
are unchanged, so parameter counts, optimizers and checkpoints are unaffected; unfreezing gives it its
original class back. (timm's ``freeze_batch_norm_2d`` instead replaces the layers by new modules whose
weight and bias are buffers: parameter counts drop, ``num_batches_tracked`` leaves the state dict, and
references to the old layers go stale.)
"""
from __future__ import annotations

from torch import nn

_FROZEN_CLASSES: dict[type, type] = {}


class _StaysInEval:
    """Mixin of a frozen BatchNorm: ``train()`` keeps it (and its children) in eval mode."""

    def train(self, mode: bool = True):
        return super().train(False)

    def __reduce_ex__(self, protocol):
        # The class is made at run time, so pickle (torch.save of a whole model, deepcopy) rebuilds it.
        return _new_frozen, (unfrozen_class(self),), self.__dict__.copy()


def _frozen_class(cls: type) -> type:
    if cls not in _FROZEN_CLASSES:
        _FROZEN_CLASSES[cls] = type(f"Frozen{cls.__name__}", (_StaysInEval, cls), {"__module__": __name__})
    return _FROZEN_CLASSES[cls]


def _new_frozen(cls: type) -> nn.Module:
    frozen = _frozen_class(cls)
    return frozen.__new__(frozen)


def unfrozen_class(module: nn.Module) -> type:
    """The module's original class (``BatchNorm2d`` for a ``FrozenBatchNorm2d``; itself otherwise)."""
    cls = type(module)
    return cls.__bases__[1] if issubclass(cls, _StaysInEval) else cls


def is_locked(module: nn.Module) -> bool:
    """True for a BatchNorm that :func:`lock` keeps in eval mode."""
    return isinstance(module, _StaysInEval)


def lock(module: nn.Module) -> None:
    """Keep a BatchNorm in eval mode for good: its class becomes the frozen subclass of its class."""
    if not is_locked(module):
        module.__class__ = _frozen_class(type(module))
    module.train(False)


def release(module: nn.Module, *, training: bool) -> None:
    """Give a locked BatchNorm its own class back, in train mode when ``training``."""
    if is_locked(module):
        module.__class__ = unfrozen_class(module)
        module.train(training)

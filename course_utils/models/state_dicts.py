"""Load weights partially: bottom-up until the first layer whose shape changed, with a report per key."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class LoadReport:
    """What :func:`load_matching_state_dict` did, key by key.

    Attributes:
        loaded: Keys copied into the model.
        mismatched: Keys in both whose shapes differ (the first one stopped the loading).
        skipped: Keys in both with equal shapes, not loaded because they come after the first mismatch.
        unexpected: Keys of the state dict the model does not have.
        missing: Keys of the model the state dict does not have.
    """

    loaded: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def summary(self, *, show: int = 3) -> str:
        """A few lines: the count of each kind of key and its first ``show`` keys."""
        lines = []
        for kind in ("loaded", "mismatched", "skipped", "unexpected", "missing"):
            keys = getattr(self, kind)
            more = f", ... (+{len(keys) - show})" if len(keys) > show else ""
            lines.append(f"{kind:>10}: {len(keys):4d}  {', '.join(keys[:show])}{more}")
        return "\n".join(lines)


def load_matching_state_dict(
    model: nn.Module, state_dict: dict[str, torch.Tensor], *, stop_at_first_mismatch: bool = True
) -> LoadReport:
    """Load a state dict bottom-up until the first shape mismatch, and report every key.

    The model's keys are walked in order (input side first); tensors are copied while name and
    shape match. Keys absent from ``state_dict`` are reported as missing and do not stop the walk.
    At the first shape mismatch loading stops: layers above a changed layer would receive inputs
    they were not trained on. ``stop_at_first_mismatch=False`` loads every matching key instead.

    Args:
        model: Modified in place.
        state_dict: For example ``torch.load(path, weights_only=True)``.

    Returns:
        A :class:`LoadReport`.

    Raises:
        TypeError: ``state_dict`` is a path or a model instead of a dict of tensors.
        ValueError: Nothing would be loaded: the state dict is from an unrelated model (no key with the
            same name and shape), or its first shared key already mismatches. The model is unchanged.

    Used in: 04_model_surgery.ipynb
    """
    _check_state_dict(state_dict)
    own = model.state_dict()
    # num_batches_tracked is a scalar counter every BatchNorm has: it says nothing about the architecture.
    fitting = [k for k, t in own.items() if k in state_dict and state_dict[k].shape == t.shape
               and not k.endswith("num_batches_tracked")]
    if not fitting:
        raise ValueError(
            f"None of the state dict's tensors fits {type(model).__name__} by name and shape (its first keys: "
            f"{list(state_dict)[:3]}; the model's: {list(own)[:3]}), so it is from an unrelated model. "
            "Load weights saved from the same architecture, or rename the keys first."
        )
    report, stopped, to_load = LoadReport(), False, {}
    for key, tensor in own.items():
        if key not in state_dict:
            report.missing.append(key)
        elif state_dict[key].shape != tensor.shape:
            report.mismatched.append(key)
            stopped = stopped or stop_at_first_mismatch
        elif stopped:
            report.skipped.append(key)
        else:
            report.loaded.append(key)
            to_load[key] = state_dict[key]
    report.unexpected = [key for key in state_dict if key not in own]
    if not report.loaded:
        first = report.mismatched[0]
        raise ValueError(
            f"Nothing was loaded: the first key both share, {first!r}, has shape {tuple(state_dict[first].shape)} "
            f"in the state dict but {tuple(own[first].shape)} in {type(model).__name__}, and loading stops at the "
            f"first mismatch. Pass stop_at_first_mismatch=False to load the {len(fitting)} tensors that fit."
        )
    model.load_state_dict(to_load, strict=False)
    return report


def _check_state_dict(state_dict) -> None:
    from collections.abc import Mapping
    from os import PathLike

    if isinstance(state_dict, (str, PathLike)):
        raise TypeError(f"Got the path {str(state_dict)!r}, not a state dict. Load the file first: "
                        "load_matching_state_dict(model, torch.load(path, weights_only=True)['state_dict']) for a "
                        "file of checkpoints.save (a bare state dict: without ['state_dict']).")
    if isinstance(state_dict, nn.Module):
        raise TypeError(f"Got a {type(state_dict).__name__} model, not a state dict: pass its .state_dict().")
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise TypeError(f"Expected a state dict (names mapped to tensors), got a {type(state_dict).__name__}. "
                        "A checkpoint that wraps it (e.g. {'state_dict': ...}) needs that key first.")

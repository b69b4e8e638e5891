"""Model surgery: freeze and unfreeze parts of a network, name its stages, and load weights partially.

A *stage* is a dotted module name such as ``"blocks.3"`` or ``"layer2"``; :func:`stages` lists them
bottom-up (input side first, head last), so "freeze everything up to block 3" is one call.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

# Containers that hold a backbone's main stages one level down (torchvision ``features``, timm ``blocks``).
_EXPANDED_CONTAINERS = ("features", "blocks", "stages", "layers")


def _owns_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def stages(model: nn.Module) -> list[str]:
    """The ordered stages of a backbone, bottom-up, as dotted module names.

    Top-level children that own parameters are stages; a container named ``features``, ``blocks``,
    ``stages`` or ``layers`` is expanded one level, so ``"features.3"`` (torchvision) and
    ``"blocks.5"`` (timm) are stages. Examples: timm EfficientNet gives ``conv_stem, bn1, blocks.0 ...
    blocks.6, conv_head, bn2, classifier``; torchvision ResNet gives ``conv1, bn1, layer1 ... layer4, fc``.

    Args:
        model: Any network.

    Returns:
        Dotted names; the last one holds the head.

    Used in: 04_model_surgery.ipynb, 06_fine_tuning.ipynb, 07_gradient_flow.ipynb
    """
    names = []
    for name, child in model.named_children():
        if not _owns_parameters(child):
            continue
        if name in _EXPANDED_CONTAINERS and isinstance(child, (nn.Sequential, nn.ModuleList)):
            names += [f"{name}.{sub}" for sub, grandchild in child.named_children() if _owns_parameters(grandchild)]
        else:
            names.append(name)
    return names


def _valid_names(model: nn.Module) -> list[str]:
    top = [name for name, child in model.named_children() if _owns_parameters(child)]
    return list(dict.fromkeys(top + stages(model)))


def _set_requires_grad(model: nn.Module, modules: Sequence[str] | None, flag: bool) -> None:
    """Set ``requires_grad`` on all parameters, or on those under the dotted prefixes ``modules``."""
    if modules is None:
        for parameter in model.parameters():
            parameter.requires_grad_(flag)
        return
    if isinstance(modules, str):
        modules = [modules]
    named = list(model.named_parameters())
    for prefix in modules:
        selected = [p for n, p in named if n == prefix or n.startswith(prefix + ".")]
        if not selected:
            raise ValueError(
                f"{type(model).__name__} has no parameters under {prefix!r}. Valid names include "
                f"{', '.join(_valid_names(model))} (or any dotted prefix of a name in "
                "model.named_parameters()). Pass one of those, or None for the whole model."
            )
        for parameter in selected:
            parameter.requires_grad_(flag)


def freeze(model: nn.Module, modules: Sequence[str] | None = None) -> None:
    """Stop training parameters: all of them (``None``) or those of the named submodules.

    Args:
        model: Modified in place.
        modules: Dotted names or prefixes such as ``["blocks.5", "classifier"]``; ``None`` means all.

    Raises:
        ValueError: A name matches no parameter; the message lists valid names.

    Used in: 02_data_augmentation.ipynb, 04_model_surgery.ipynb, 05_feature_extraction.ipynb,
        07_gradient_flow.ipynb
    """
    _set_requires_grad(model, modules, False)


def unfreeze(model: nn.Module, modules: Sequence[str] | None = None) -> None:
    """Train parameters again: all of them (``None``) or those of the named submodules.

    Args:
        model: Modified in place.
        modules: Dotted names or prefixes; ``None`` means all.

    Raises:
        ValueError: A name matches no parameter; the message lists valid names.

    Used in: 02_data_augmentation.ipynb, 04_model_surgery.ipynb, 06_fine_tuning.ipynb, 07_gradient_flow.ipynb
    """
    _set_requires_grad(model, modules, True)


def _stage_index(model: nn.Module, stage: str | int) -> tuple[list[str], int]:
    names = stages(model)
    if isinstance(stage, bool) or not isinstance(stage, (str, int)):
        raise TypeError(f"stage must be a stage name or an index, got {type(stage).__name__}: {stage!r}.")
    if isinstance(stage, int):
        if not -len(names) <= stage < len(names):
            raise ValueError(f"Stage index {stage} is out of range: the model has {len(names)} stages "
                             f"({', '.join(names)}). Use an index from 0 to {len(names) - 1}.")
        return names, stage % len(names)
    if stage not in names:
        raise ValueError(f"Unknown stage {stage!r}. The stages of {type(model).__name__} are "
                         f"{', '.join(names)}; pass one of them (or its index).")
    return names, names.index(stage)


def freeze_up_to(model: nn.Module, stage: str | int) -> list[str]:
    """Freeze every stage up to and including ``stage``; all later stages are made trainable.

    Args:
        model: Modified in place.
        stage: A name from :func:`stages` or its index (negative indices count from the head).

    Returns:
        The frozen stage names, bottom-up.

    Raises:
        ValueError: Unknown stage name or index out of range.

    Used in: 04_model_surgery.ipynb
    """
    names, index = _stage_index(model, stage)
    unfreeze(model)
    frozen = names[: index + 1]
    freeze(model, frozen)
    return frozen


def unfreeze_last(model: nn.Module, n: int) -> list[str]:
    """Freeze everything, then make the last ``n`` stages trainable (the head counts as a stage).

    Returns:
        The trainable stage names, bottom-up.

    Raises:
        ValueError: ``n`` is not an integer between 0 and the number of stages.

    Used in: 04_model_surgery.ipynb, 06_fine_tuning.ipynb
    """
    names = stages(model)
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(names):
        raise ValueError(f"n must be an integer from 0 to {len(names)} (the number of stages: "
                         f"{', '.join(names)}), got {n!r}.")
    freeze(model)
    trainable = names[len(names) - n:] if n else []
    unfreeze(model, trainable)
    return trainable


def eval_frozen_batchnorm(model: nn.Module) -> int:
    """Put every BatchNorm whose parameters are all frozen into eval mode.

    In train mode a BatchNorm keeps updating its running mean and variance even when its weight and
    bias are frozen, so a "frozen" backbone would still drift. Call this after ``model.train()``
    (``train.train_one_epoch`` does). BatchNorms without affine parameters are left alone.

    Returns:
        How many BatchNorm layers were put into eval mode.

    Used in: 04_model_surgery.ipynb, 06_fine_tuning.ipynb, 07_gradient_flow.ipynb
    """
    count = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
                count += 1
    return count


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Number of parameters: ``{"total": ..., "trainable": ..., "frozen": ...}`` (shared ones once).

    Used in: 04_model_surgery.ipynb, 05_feature_extraction.ipynb, 06_fine_tuning.ipynb
    """
    trainable = frozen = 0
    for parameter in model.parameters():
        if parameter.requires_grad:
            trainable += parameter.numel()
        else:
            frozen += parameter.numel()
    return {"total": trainable + frozen, "trainable": trainable, "frozen": frozen}


def parameter_groups(model: nn.Module, *, head_lr: float, backbone_lr: float) -> list[dict]:
    """Optimizer parameter groups with discriminative learning rates: head vs. the rest.

    The head is found with :func:`course_utils.models.get_head`. Frozen parameters are left out, and
    so is a group that would be empty. Pass the result to any optimizer: ``AdamW(groups)``.

    Args:
        model: The network to optimise.
        head_lr: Learning rate of the head (typically 10x ``backbone_lr``).
        backbone_lr: Learning rate of every other trainable parameter.

    Returns:
        A list of ``{"name", "params", "lr"}`` dicts (head first).

    Raises:
        ValueError: A learning rate is not a positive number, or nothing is trainable.

    Used in: 06_fine_tuning.ipynb, 07_gradient_flow.ipynb
    """
    from course_utils.models import get_head

    for label, lr in (("head_lr", head_lr), ("backbone_lr", backbone_lr)):
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"{label} must be a positive number such as 1e-3, got {lr!r}.")
    head_name, _ = get_head(model)
    head, backbone = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (head if name.startswith(head_name + ".") else backbone).append(parameter)
    groups = [{"name": "head", "params": head, "lr": float(head_lr)},
              {"name": "backbone", "params": backbone, "lr": float(backbone_lr)}]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("Every parameter is frozen, so there is nothing to optimise. "
                         "Call unfreeze(model, [...]) or unfreeze_last(model, 1) first.")
    return groups


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
        ValueError: ``state_dict`` shares no key with the model (it comes from an unrelated model).

    Used in: 04_model_surgery.ipynb
    """
    own = model.state_dict()
    if not set(own) & set(state_dict):
        raise ValueError(
            f"The state dict shares no key with {type(model).__name__} (its first keys: "
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
    model.load_state_dict(to_load, strict=False)
    return report

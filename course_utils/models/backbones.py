"""Choosing a backbone with numbers: which ones work offline here, how large and how fast they are.

Accuracy comes from the task itself (a head on each backbone's features, :mod:`probes`); this module
adds what else decides the choice on a given computer: the weights that are available without a
download, and the milliseconds each backbone needs per image on this CPU.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from course_utils.arguments import require_int


def cached_torchvision_backbones() -> dict[str, Path]:
    """The torchvision backbones of ``models.TORCHVISION_BACKBONES`` whose ImageNet weights are already cached.

    Looks for each weight file in torch's hub cache (``$TORCH_HOME/hub/checkpoints``), where torchvision
    downloads it the first time; nothing is downloaded here.

    Returns:
        ``{backbone name: path of its cached weight file}``; empty when none is cached.

    Used in: 09_when_to_transfer.ipynb
    """
    import torchvision

    from course_utils.models import TORCHVISION_BACKBONES

    folder = Path(torch.hub.get_dir()) / "checkpoints"
    found = {}
    for name in TORCHVISION_BACKBONES:
        url = torchvision.models.get_model_weights(name).DEFAULT.url
        path = folder / url.rsplit("/", 1)[-1]
        if path.is_file():
            found[name] = path
    return found


def milliseconds_per_image(model: nn.Module, images: torch.Tensor, *, repeats: int = 3) -> float:
    """Median wall-clock milliseconds per image of ``model``'s forward pass on ``images`` (eval, no gradients).

    One untimed pass warms up (memory allocation, kernel selection); then ``repeats`` timed passes. The
    result depends on the computer, its load and torch's thread count: compare backbones measured together.

    Args:
        model: Any network; run in eval mode, its mode is restored afterwards.
        images: One ``(N, 3, H, W)`` batch at the backbone's input size.
        repeats: Timed passes (the median is returned).

    Raises:
        ValueError: ``images`` is not a non-empty 4-D batch, or ``repeats`` is not a positive integer.

    Used in: 09_when_to_transfer.ipynb
    """
    if images.dim() != 4 or len(images) == 0:
        raise ValueError(f"images must be a non-empty (N, 3, H, W) batch, got shape {tuple(images.shape)}.")
    require_int("repeats", repeats, example=3, fix="It is the number of timed passes (their median is returned).")
    images = images.contiguous(memory_format=torch.channels_last)
    was_training, times = model.training, []
    model.eval()
    try:
        with torch.inference_mode():
            model(images)
            for _ in range(repeats):
                start = time.perf_counter()
                model(images)
                times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return 1000 * sorted(times)[len(times) // 2] / len(images)

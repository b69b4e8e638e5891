"""Images per second of EfficientNet-Lite0 on this machine's CPU, in two memory layouts.

``load_backbone`` returns its models in ``channels_last`` layout (pixels stored channel-innermost), which
suits the CPU convolution kernels; this script measures that choice against PyTorch's default (NCHW)
layout and checks that both give the same logits.

Run: ``python benchmarks/inference_throughput.py [--batch 32] [--size 224] [--repeats 5] [--rounds 3]``.
"""
from __future__ import annotations

import argparse
import copy
import platform
import time

import torch

from course_utils import models


def _images_per_second(model: torch.nn.Module, images: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        model(images)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            model(images)
    return repeats * len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per layout, interleaved")
    args = parser.parse_args()

    torch.manual_seed(0)
    channels_last, _ = models.load_backbone("efficientnet_lite0")
    default = copy.deepcopy(channels_last).to(memory_format=torch.contiguous_format)
    images = torch.randn(args.batch, 3, args.size, args.size)
    layouts = {"default (NCHW)": (default, torch.contiguous_format),
               "channels_last (load_backbone)": (channels_last, torch.channels_last)}
    speeds = {name: [] for name in layouts}
    for _ in range(args.rounds):
        for name, (model, memory_format) in layouts.items():
            speeds[name].append(_images_per_second(model, images.contiguous(memory_format=memory_format),
                                                   args.repeats))
    with torch.inference_mode():
        difference = (default(images) - channels_last(images.contiguous(memory_format=torch.channels_last)))
    print(f"EfficientNet-Lite0 inference, batch {args.batch}, {args.size} px, {torch.get_num_threads()} CPU "
          f"threads, torch {torch.__version__}, {platform.machine()}; median of {args.rounds} rounds\n")
    print("| memory layout | images/s (median) | all rounds |\n| --- | --- | --- |")
    for name, values in speeds.items():
        rounds = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {name} | {sorted(values)[len(values) // 2]:.1f} | {rounds} |")
    medians = [sorted(v)[len(v) // 2] for v in speeds.values()]
    print(f"\nspeed-up of channels_last: {medians[1] / medians[0]:.2f}x; "
          f"largest logit difference between the layouts: {difference.abs().max().item():.1e}")


if __name__ == "__main__":
    main()

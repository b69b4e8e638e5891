"""PyTorch eager vs ONNX Runtime latency, and bfloat16 autocast vs float32, on this machine's CPU.

The same measurements as notebook 10, on EfficientNet-Lite0 with a 2-class head (random head weights: speed
does not depend on them), with more repeats and the machine's load printed beside the table.

Run: ``python benchmarks/deployment.py [--backbone efficientnet_lite0] [--repeats 5] [--bf16-images 1]
[--threads N] [--no-readme]``; the output replaces the ``deployment`` section of README.md. On a machine
shared with other jobs, compare ``--threads 1`` too: PyTorch's thread pool loses much more to a busy CPU
than ONNX Runtime's, which inflates the ratio at the default thread count.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from readme_section import machine_line, write_section

from course_utils import deploy, models
from course_utils.models import weights


def _export(model: torch.nn.Module, size: int, folder: Path) -> tuple[Path, float]:
    start = time.perf_counter()
    path = deploy.export_onnx(model, torch.randn(2, 3, size, size), folder / "model.onnx")  # checks parity too
    return path, time.perf_counter() - start


def _bf16_rows(model: torch.nn.Module, images: torch.Tensor, repeats: int) -> list[str]:
    outputs = {}

    def forward(bfloat16: bool) -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            outputs[bfloat16] = model(images).float()

    timings = {dtype: deploy.time_runs(lambda dtype=dtype: forward(dtype), repeats=repeats, warmup=1)
               for dtype in (False, True)}
    gap = (outputs[True] - outputs[False]).abs().max().item()
    ratio = timings[True].median / timings[False].median
    rows = [f"| {'bfloat16 autocast' if dtype else 'float32'} | {1000 * t.median:.0f} | "
            f"{', '.join(f'{1000 * s:.0f}' for s in t.runs)} | {1000 * t.median_cpu:.0f} |"
            for dtype, t in timings.items()]
    return ["| precision | median (ms) | all runs (ms) | CPU time per call (ms) |", "| --- | ---: | --- | ---: |",
            *rows, "", f"bfloat16 takes {ratio:.1f}x the time of float32 (CPU time: "
            f"{timings[True].median_cpu / timings[False].median_cpu:.1f}x); largest logit difference {gap:.3f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=weights.OFFLINE_BACKBONES, default=models.DEFAULT_BACKBONE)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (after 1 warm-up)")
    parser.add_argument("--bf16-images", type=int, default=1, help="batch for the bfloat16 comparison")
    parser.add_argument("--threads", type=int, default=None, help="threads for both engines (default: torch's)")
    parser.add_argument("--no-readme", action="store_true", help="print the tables without writing README.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # this benchmark only; onnx_session uses the same number

    torch.manual_seed(0)
    model, pre = models.load_backbone(args.backbone)
    models.replace_head(model, 2, seed=0)
    model.eval()
    images = torch.randn(32, 3, pre.crop, pre.crop)
    with tempfile.TemporaryDirectory() as folder:
        path, export_seconds = _export(model, pre.crop, Path(folder))
        session = deploy.onnx_session(path)

        def eager(batch: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return model(batch.contiguous(memory_format=torch.channels_last))

        rows = deploy.compare_latency({"PyTorch eager": eager, "ONNX Runtime": lambda b: deploy.run_onnx(session, b)},
                                      {1: images[:1], 32: images}, repeats=args.repeats)
        gap = (deploy.run_onnx(session, images) - eager(images)).abs().max().item()
    cpu = {(row["engine"], row["batch"]): row["cpu_ms"] for row in rows}
    ratios = "; ".join(f"batch {batch}: {cpu['ONNX Runtime', batch] / cpu['PyTorch eager', batch]:.2f}x"
                       for batch in (1, 32))
    support = deploy.cpu_bf16_support()
    bf16 = _bf16_rows(model, images[: args.bf16_images].contiguous(memory_format=torch.channels_last), args.repeats)
    markdown = "\n".join([
        machine_line(threads=torch.get_num_threads()), "",
        f"{args.backbone}, {pre.crop} px, {torch.get_num_threads()} threads for both engines; median of "
        f"{args.repeats} runs after 1 warm-up", "", deploy.format_latency_table(rows), "",
        f"export {export_seconds:.0f} s; largest logit difference ONNX Runtime vs PyTorch {gap:.1e}", "",
        f"ONNX Runtime's CPU time per call as a share of PyTorch's: {ratios}", "",
        f"bfloat16: {support}; batch {args.bf16_images}, median of {args.repeats} runs after 1 warm-up", "", *bf16])
    print(markdown)
    if not args.no_readme:
        write_section("deployment", markdown)
        print("README.md: the deployment section rewritten")


if __name__ == "__main__":
    main()

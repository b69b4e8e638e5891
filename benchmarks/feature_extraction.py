"""Feature extraction speed: eager PyTorch and ONNX Runtime side by side with this CPU's limit.

The limit is computed, not typed: the FLOPs of one image (EfficientNet-Lite0 without its head, counted by
``torch.utils.flop_counter.FlopCounterMode``, which counts 2 FLOPs per multiply-add) divided into the
FLOP/s of a large float32 matrix product on the same threads (the best of several, measured between the
engines' runs). Both engines run through ``engines.frozen_forward``, exactly as ``features.extract_features``
does; the last rows time ``extract_features`` itself on in-memory images (the export included, then reused).

Every speed is given twice: by the wall clock, and by CPU time (images per CPU-second of this process times
the threads: the speed if its threads had the cores to themselves). On a machine that other jobs share, the
wall-clock numbers drop with the load; the CPU-time percentages much less (threads that spin while waiting
count as work, which only makes them lower).

Run: ``python benchmarks/feature_extraction.py [--threads 2] [--batches 1,16,32,64] [--no-readme]``
(about a minute on 2 idle cores). It prints the table and writes it into README.md between
``<!-- benchmark:feature_extraction -->`` markers.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_section import machine_line, write_section  # noqa: E402


def flops_per_image(model: torch.nn.Module, size: int) -> tuple[float, dict[str, float]]:
    """FLOPs of one image as FlopCounterMode counts them, and the share of each operator."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.randn(1, 3, size, size))
    return counter.get_total_flops(), {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}


def matmul_flops(seconds: float = 1.0, n: int = 2048) -> tuple[float, float]:
    """FLOP/s of repeated float32 n x n matrix products (2 n^3 FLOPs each) for about ``seconds``: by the wall
    clock, and per CPU-second times the threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    count, start, start_cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    flops = count * 2 * n**3
    return flops / (time.perf_counter() - start), flops * torch.get_num_threads() / (time.process_time() - start_cpu)


def nominal_flops(cores: int) -> tuple[float | None, str]:
    """cores x clock x FP32 FLOPs per cycle, where /proc/cpuinfo says which core this is; else None and why."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None, "no /proc/cpuinfo"
    fields = dict(line.split(":", 1) for line in info.split("\n\n")[0].splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = fields.get("flags", "").split()
    if fields.get("vendor_id") == "AuthenticAMD" and fields.get("cpu family") == "25" and "cpu MHz" in fields:
        per_cycle = 32  # Zen 3 / Zen 4: two 256-bit FMA pipes (Zen 4 splits AVX-512 into two halves)
        mhz = float(fields["cpu MHz"])
        core = "Zen 4" if "avx512f" in flags else "Zen 3"
        return cores * mhz * 1e6 * per_cycle, (f"{cores} cores x {mhz:.0f} MHz (as /proc/cpuinfo reports it; boost "
                                               f"clocks can be higher) x {per_cycle} FP32 FLOPs per cycle ({core})")
    return None, "not derived: this CPU's FMA width per cycle is not known to this script"


def images_per_second(run, images: torch.Tensor, budget: float) -> tuple[float, float]:
    """Median images/s of ``run(images)`` over repeats filling about ``budget`` seconds (at least 3), by the
    wall clock and by CPU time (per CPU-second times the threads)."""
    run(images)  # warm-up
    times, cpu, start = [], [], time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < budget:
        tick, tick_cpu = time.perf_counter(), time.process_time()
        run(images)
        times.append(time.perf_counter() - tick)
        cpu.append(time.process_time() - tick_cpu)
    return len(images) / statistics.median(times), len(images) * torch.get_num_threads() / statistics.median(cpu)


def measure(model, size: int, batches: list[int], budget: float) -> tuple[list[dict], list[float], float]:
    from course_utils.deploy import engines

    rows, peaks = [], []
    images = torch.randn(max(batches), 3, size, size)
    nchw = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    with engines.frozen_forward(model, images[:2], images=len(images), engine="torch") as eager:
        with engines.frozen_forward(model, images[:8], images=8, engine="onnxruntime") as fast:
            gap = max((f - e).abs().max().item() / e.abs().max().item()
                      for f, e in zip(fast(images[:8]), eager(images[:8]), strict=True))
        for batch in batches:
            peaks.append(matmul_flops())
            # the export is fixed to its batch size, as extract_features makes it: one export per batch size
            with engines.frozen_forward(model, images[:batch], images=batch, engine="onnxruntime") as fast:
                onnx_speed = images_per_second(fast, images[:batch], budget)
            row = {"batch": batch, "eager": images_per_second(eager, images[:batch], budget), "onnxruntime": onnx_speed}
            if batch == 32:
                with torch.inference_mode():
                    row["nchw"] = images_per_second(lambda x: nchw(x.contiguous()), images[:batch], budget)
            rows.append(row)
    peaks.append(matmul_flops())
    return rows, peaks, gap


def end_to_end(model, size: int, count: int) -> list[tuple[str, float]]:
    """extract_features on ``count`` in-memory images (a notebook-sized job): first call (exports), second call
    (reuses the export)."""
    import inspect

    from torch.utils.data import TensorDataset

    from course_utils.deploy import engines
    from course_utils.transfer import features

    engines._SESSIONS.clear()  # the first call pays for its export
    batch = inspect.signature(features.extract_features).parameters["batch_size"].default
    dataset = TensorDataset(torch.randn(count, 3, size, size), torch.zeros(count, dtype=torch.long))
    results = []
    for label in ("first call: exports when the engine is onnxruntime", "second call: reuses the export"):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = features.extract_features(model, dataset, progress=False)
        results.append((f"extract_features ({result.engine}, batch {batch} (its default), {count} images, {label})",
                        (count / (time.perf_counter() - start),
                         count * torch.get_num_threads() / (time.process_time() - start_cpu))))
    return results


def table(rows, peaks, gap, flops, counts, nominal, extras, size) -> str:
    limits = [max(peak[i] for peak in peaks) / flops for i in (0, 1)]  # wall clock, CPU time

    def cells(speed: tuple[float, float]) -> str:
        return f"{speed[0]:.1f} | {100 * speed[0] / limits[0]:.0f}% | {100 * speed[1] / limits[1]:.0f}%"

    ops = ", ".join(f"{op} {n / 1e9:.3f} G" for op, n in counts.items())
    lines = [f"EfficientNet-Lite0 without its head, {size} px, {torch.get_num_threads()} threads: "
             f"{flops / 1e9:.3f} GFLOP per image by FlopCounterMode ({ops}; 2 FLOPs per multiply-add, so "
             f"{flops / 2e9:.3f} G multiply-adds). Float32 matrix product: best {max(p[0] for p in peaks) / 1e9:.0f} "
             f"GFLOP/s by the wall clock (all: {', '.join(f'{p[0] / 1e9:.0f}' for p in peaks)}), "
             f"{max(p[1] for p in peaks) / 1e9:.0f} by CPU time, so the limit is **{limits[0]:.0f} images/s** "
             f"({limits[1]:.0f} by CPU time).",
             f"Nominal peak: {nominal[0] / 1e9:.0f} GFLOP/s ({nominal[1]})." if nominal[0] else
             f"Nominal peak: {nominal[1]}.", "",
             "| batch | eager PyTorch, channels_last (images/s) | % of limit | % by CPU time | "
             "ONNX Runtime, TorchScript export at a fixed batch (images/s) | % of limit | % by CPU time |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {row['batch']} | {cells(row['eager'])} | {cells(row['onnxruntime'])} |" for row in rows]
    lines.append("")
    lines += [f"- {label}: {speed[0]:.1f} images/s, {100 * speed[0] / limits[0]:.0f}% of the limit "
              f"({100 * speed[1] / limits[1]:.0f}% by CPU time)" for label, speed in extras]
    nchw = [row for row in rows if "nchw" in row]
    if nchw:
        lines.append(f"- eager PyTorch in the default NCHW layout, batch 32: {nchw[0]['nchw'][0]:.1f} images/s "
                     f"(channels_last is {nchw[0]['eager'][0] / nchw[0]['nchw'][0]:.2f}x that)")
    lines.append(f"- largest difference ONNX Runtime vs eager on 8 images: {gap:.1e} of the largest feature")
    return "\n".join(lines)


def main() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="threads for torch, ONNX Runtime and the matmul")
    parser.add_argument("--batches", default="1,16,32,64", help="comma-separated batch sizes")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of repeats per measurement")
    parser.add_argument("--images", type=int, default=256, help="images for the extract_features rows")
    parser.add_argument("--no-readme", action="store_true", help="print only; leave README.md alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from course_utils import models
    from course_utils.transfer import features

    model, _ = models.load_backbone("efficientnet_lite0")
    model.eval()
    with features.head_removed(model):
        flops, counts = flops_per_image(model, args.size)
        rows, peaks, gap = measure(model, args.size, [int(b) for b in args.batches.split(",")], args.budget)
    extras = end_to_end(model, args.size, args.images)
    nominal = nominal_flops(min(args.threads, os.cpu_count() or 1))
    text = table(rows, peaks, gap, flops, counts, nominal, extras, args.size)
    text += f"\n\n{machine_line(threads=args.threads)} Command: `python benchmarks/feature_extraction.py " \
            f"--threads {args.threads}`."
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > (os.cpu_count() or 1):
        text += (f"\n\nThe load average ({load:.1f}) exceeded the {os.cpu_count()} cores: other jobs shared them, so "
                 "the wall-clock columns mostly show the load and the CPU-time columns are the ones to read. "
                 "Rerun on an idle machine to replace this table.")
    print(text)
    if not args.no_readme:
        write_section("feature_extraction", text)


if __name__ == "__main__":
    main()

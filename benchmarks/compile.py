"""Does ``torch.compile`` pay for the fine-tuning step on this CPU, at the notebooks' sizes and budgets?

Fine-tuning EfficientNet-Lite0 (every parameter trains, AdamW, channels_last) as notebooks 06 and
06_fine_tuning_far_domain run it, with random images of their exact batch shapes (speed does not depend on the
pixels): training batches of 32 at 112 px (06, 244 images, so the last batch holds 20) or of 64 at 64 px
(06_far, 800 images, last batch 32), then 06's evaluation pass (153 images at 128 px in batches of 64; 06_far
evaluates nothing between epochs, only each finished model, which this leaves out). Each mode runs in a fresh
Python process: eager, and ``torch.compile(model)`` (inductor) with an empty compile cache ("cold", what a first
run and CI pay) and again with the cache the cold run left ("warm", a rerun of the notebook on the same
machine). In each process two seeds each train a fresh copy of the model for two epochs, as the notebooks train
one copy per seed.

Compile seconds = a copy's first epoch minus the median later epoch (the first epoch compiles the training
graph, the recompile for the smaller last batch and, for 06, the evaluation graph). Seconds saved per epoch =
eager's median epoch minus the compiled one. CPU seconds (the process and the compiler runs it waited for) stand
in brackets beside wall seconds: on a shared machine they are the steadier measure. The verdict compares, for
the notebook's own seeds x epochs, eager training against compiling once plus the later copies' compile seconds
plus the compiled epochs, and says whether that training alone stays within a notebook's 2-minute budget. The
table goes into README.md between the ``compile`` markers with the machine's CPU, threads and load.

Run:  python benchmarks/compile.py [--workloads 06 06_far] [--no-readme]   (several minutes: compiling is slow)
"""
# ruff: noqa: E402
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported, as in every notebook

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from readme_section import machine_line, write_section
from torch import nn

from course_utils import models
from course_utils.models import surgery

# name: (classes, training images, batch, train px, validation images, eval batch, eval px, seeds, epochs, lrs)
WORKLOADS = {
    "06": (2, 244, 32, 112, 153, 64, 128, 3, 4, (1e-3, 1e-4)),
    "06_far": (10, 800, 64, 64, 0, 100, 64, 3, 5, (5e-3, 2e-3)),   # fit(val_loader=None): no evaluation pass
}
COPIES, EPOCHS = 2, 2  # measured per process
NOTEBOOK_BUDGET = 120  # seconds a whole notebook may take on 2 cores (issue 19)


def _batches(total: int, batch: int) -> list[int]:
    return [batch] * (total // batch) + ([total % batch] if total % batch else [])


def _data(sizes: list[int], pixels: int, classes: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(n, 3, pixels, pixels, generator=generator).contiguous(memory_format=torch.channels_last),
             torch.randint(classes, (n,), generator=generator)) for n in sizes]


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (the compiler runs that inductor starts)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _epoch(net: nn.Module, optimizer: torch.optim.Optimizer, train_data: list, eval_data: list) -> tuple[float, float]:
    """Wall and CPU seconds (:func:`_cpu`) of one training pass (forward, backward, AdamW step per batch) and one
    evaluation pass (none when ``eval_data`` is empty)."""
    start, cpu = time.perf_counter(), _cpu()
    net.train()
    for images, labels in train_data:
        loss = nn.functional.cross_entropy(net(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.inference_mode():
        for images, _ in eval_data:
            net(images)
    return time.perf_counter() - start, _cpu() - cpu


def worker(workload: str, compiled: bool) -> dict:
    """Epoch seconds of ``COPIES`` fresh copies x ``EPOCHS`` epochs, in this process."""
    classes, n_train, batch, pixels, n_val, eval_batch, eval_pixels, _, _, (head_lr, backbone_lr) = WORKLOADS[workload]
    train_data = _data(_batches(n_train, batch), pixels, classes)
    eval_data = _data(_batches(n_val, eval_batch), eval_pixels, classes)
    imagenet, _ = models.load_backbone("efficientnet_lite0")
    seconds, cpu = [], []
    for seed in range(COPIES):
        model = copy.deepcopy(imagenet)
        models.replace_head(model, classes, seed=seed)
        optimizer = torch.optim.AdamW(surgery.parameter_groups(model, head_lr=head_lr, backbone_lr=backbone_lr))
        net = torch.compile(model) if compiled else model
        epochs = [_epoch(net, optimizer, train_data, eval_data) for _ in range(EPOCHS)]
        seconds.append([wall for wall, _ in epochs])
        cpu.append([used for _, used in epochs])
    return {"seconds": seconds, "cpu": cpu, "threads": torch.get_num_threads()}


def _run(workload: str, mode: str, cache: str) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    command = [sys.executable, __file__, "--worker", workload, mode]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} run of workload {workload} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(workload: str) -> dict:
    """Eager, compiled with a cold cache and compiled again with the cache it left, each a fresh process."""
    with tempfile.TemporaryDirectory() as cache:
        return {mode: _run(workload, "eager" if mode == "eager" else "compiled", cache)
                for mode in ("eager", "compiled, cold cache", "compiled, warm cache")}


def _budget(seconds: float) -> str:
    return f"{'within' if seconds <= NOTEBOOK_BUDGET else 'over'} a notebook's {NOTEBOOK_BUDGET} s"


def _costs(run: dict, key: str) -> tuple[float, float, float]:
    """Median later epoch, and the extra seconds of the first and of the second copy's first epoch."""
    steady = statistics.median(s for copy_ in run[key] for s in copy_[1:])
    return steady, run[key][0][0] - steady, run[key][1][0] - steady


def summarise(workload: str, runs: dict) -> list[str]:
    """Table rows: per-epoch seconds, compile seconds, break-even and the notebook's training with each mode."""
    *_, seeds, epochs, _ = WORKLOADS[workload]
    eager, eager_cpu = _costs(runs["eager"], "seconds")[0], _costs(runs["eager"], "cpu")[0]
    rows = [f"| {workload} | eager | {eager:.2f} ({eager_cpu:.2f}) | | | | | {seeds * epochs * eager:.0f} "
            f"| {_budget(seeds * epochs * eager)} |"]
    for mode, run in runs.items():
        if mode == "eager":
            continue
        (steady, first, later), (cpu, first_cpu, later_cpu) = _costs(run, "seconds"), _costs(run, "cpu")
        saved = eager - steady
        notebook = first + (seeds - 1) * later + seeds * epochs * steady
        even = f"{first / saved:.1f}" if saved > 0 else "never"
        verdict = "pays" if notebook < seeds * epochs * eager else "does not pay"
        rows.append(f"| {workload} | {mode} | {steady:.2f} ({cpu:.2f}) | {saved:+.2f} ({eager_cpu - cpu:+.2f}) "
                    f"| {first:.1f} ({first_cpu:.1f}) | {later:.1f} ({later_cpu:.1f}) | {even} | {notebook:.0f} "
                    f"| {verdict}; {_budget(notebook)} |")
    return rows


def report(results: dict[str, dict], threads: int, wall: float) -> str:
    lines = [machine_line(threads=threads),
             f"torch.compile (inductor, default mode) on the fine-tuning step, {COPIES} fresh copies x {EPOCHS} epochs "
             f"per mode, each mode in a fresh process; {wall:.0f} s wall in all.", "",
             "| notebook | mode | s per epoch (CPU s) | saved per epoch | compile s, first copy "
             "| compile s, each later copy | epochs to break even | notebook's training (s) | verdict |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for workload, runs in results.items():
        lines += summarise(workload, runs)
    lines += ["", "Notebook's training: " + "; ".join(
        f"{name}: {WORKLOADS[name][7]} seeds x {WORKLOADS[name][8]} epochs" for name in results)
        + ", projected from the measured epochs."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--no-readme", action="store_true", help="print the table without writing README.md")
    parser.add_argument("--worker", nargs=2, metavar=("WORKLOAD", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], compiled=args.worker[1] == "compiled")))
        return
    start = time.perf_counter()
    results = {}
    for workload in args.workloads:
        results[workload] = measure(workload)
        print(f"{workload}: " + json.dumps({m: r["seconds"] for m, r in results[workload].items()}), flush=True)
    threads = next(iter(results.values()))["eager"]["threads"]
    markdown = report(results, threads, time.perf_counter() - start)
    print("\n" + markdown)
    if not args.no_readme:
        write_section("compile", markdown)
        print("README.md: the compile section rewritten")


if __name__ == "__main__":
    main()

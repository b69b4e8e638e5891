"""Fine-tuning speed with torch's default CPU thread count vs one thread, on an idle and on a busy CPU.

PyTorch runs each convolution on ``torch.get_num_threads()`` threads (by default one per core). When another
program keeps a core busy, those threads wait for each other at every operation, and training can become
several times slower than with a single thread. This script measures that on the course's workloads:

- ``02``: EfficientNet-Lite0, batch 32 at 96 px, last two stages and the head trainable (notebook 02);
- ``07``: EfficientNet-Lite0, batch 8 at 160 px, every parameter trainable (notebook 07);
- ``06_far``: EfficientNet-Lite0, batch 64 at 64 px, every parameter trainable (06_fine_tuning_far_domain).

Five settings, each measured in a fresh Python process: torch's default thread count, one thread
(``torch.set_num_threads(1)``), the default count with ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP threads
sleep while they wait instead of spinning; the variable must be set before torch is imported), and PASSIVE
with a short spin before the sleep (``GOMP_SPINCOUNT`` 10,000 and 100,000, read by libgomp). Each
measurement times ``--steps`` optimizer steps (forward, backward, AdamW step) after one warm-up step, under
two conditions: ``idle`` (nothing started by this script) and ``busy`` (``--busy`` processes that spin a
pure-Python loop, started before and stopped after the measurement). Rounds are interleaved; the table
shows the median seconds per step over ``--repeats`` rounds and the process's CPU seconds per step (all its
threads). The load average printed with each condition shows what else ran on the machine.

Run: ``python benchmarks/thread_oversubscription.py [--repeats 3] [--steps 4] [--busy 1] [--workloads 07 06_far]
[--no-readme]``; the table replaces the ``thread_oversubscription`` section of README.md.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from readme_section import machine_line, write_section
from torch import nn

from course_utils import models
from course_utils.models import surgery

WORKLOADS = {  # name: (batch, pixels, trainable stages; None = everything)
    "02": (32, 96, ("blocks.5", "blocks.6", "conv_head", "bn2", "classifier")),
    "07": (8, 160, None),
    "06_far": (64, 64, None),
}


def _spin() -> None:
    """Keep one core busy until terminated, or until the benchmark that started it is gone."""
    parent, x = os.getppid(), 0
    while os.getppid() == parent:
        for _ in range(100_000):
            x = (x + 1) % 1_000_003


def _training_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                   labels: torch.Tensor) -> None:
    loss = nn.functional.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _build(workload: str) -> tuple[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    batch, pixels, trainable = WORKLOADS[workload]
    torch.manual_seed(0)
    model, _ = models.load_backbone("efficientnet_lite0")
    models.replace_head(model, 2, seed=0)
    if trainable is not None:
        surgery.freeze(model)
        surgery.unfreeze(model, list(trainable))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    images = torch.randn(batch, 3, pixels, pixels).contiguous(memory_format=torch.channels_last)
    return model, optimizer, images, torch.arange(batch) % 2


def _seconds_per_step(workload: str, threads: int, steps: int) -> tuple[float, float]:
    """Wall and CPU seconds per training step, after one warm-up step."""
    torch.set_num_threads(threads)
    model, optimizer, images, labels = _build(workload)
    _training_step(model, optimizer, images, labels)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        _training_step(model, optimizer, images, labels)
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


SETTINGS = {  # name: (threads, extra environment); None threads = torch's default
    "default": (None, {}),
    "1 thread": (1, {}),
    "default + OMP_WAIT_POLICY=PASSIVE": (None, {"OMP_WAIT_POLICY": "PASSIVE"}),
    # GOMP_SPINCOUNT overrides the spin that the policy implies (libgomp, torch's OpenMP on Linux): a waiting
    # thread spins that many times (about 100,000 per millisecond, by libgomp's own estimate), then sleeps.
    "PASSIVE + GOMP_SPINCOUNT=10000": (None, {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"}),
    "PASSIVE + GOMP_SPINCOUNT=100000": (None, {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "100000"}),
}


def _worker(setting: str, workloads: list[str], steps: int) -> None:
    """Measure in this (fresh) process and print one JSON line: {workload: [wall, cpu]}."""
    threads, _ = SETTINGS[setting]
    if threads is not None:
        torch.set_num_threads(threads)
    print(json.dumps({"threads": torch.get_num_threads(),
                      **{w: _seconds_per_step(w, torch.get_num_threads(), steps) for w in workloads}}))


def _run_worker(setting: str, workloads: list[str], steps: int) -> dict:
    """One measurement in a new Python process, so that the OpenMP environment takes effect."""
    env = {**os.environ, **SETTINGS[setting][1]}
    command = [sys.executable, __file__, "--worker", setting, "--steps", str(steps), "--workloads", *workloads]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(*, repeats: int, steps: int, busy: int, workloads: list[str]) -> dict:
    """``{(workload, condition, setting): [(wall, cpu) per round]}``, thread counts and load averages."""
    results, loads, threads = {}, {}, {}
    context = multiprocessing.get_context("spawn")
    for _ in range(repeats):
        for condition in ("idle", "busy"):
            spinners = [context.Process(target=_spin, daemon=True) for _ in range(busy if condition == "busy" else 0)]
            for process in spinners:
                process.start()
            try:
                time.sleep(0.5 if spinners else 0.0)
                loads.setdefault(condition, []).append(os.getloadavg()[0])
                for setting in SETTINGS:
                    measured = _run_worker(setting, workloads, steps)
                    threads[setting] = measured.pop("threads")
                    for workload, pair in measured.items():
                        results.setdefault((workload, condition, setting), []).append(tuple(pair))
            finally:
                for process in spinners:
                    process.terminate()
                    process.join()
    return {"results": results, "loads": loads, "threads": threads}


def report(measured: dict, *, repeats: int, steps: int, busy: int) -> str:
    """A Markdown table: median seconds per step, CPU seconds per step, and the ratio to one thread."""
    lines = [f"EfficientNet-Lite0 fine-tuning steps, {os.cpu_count()} CPUs, torch {torch.__version__}, "
             f"{platform.machine()}; median of {repeats} rounds of {steps} steps; busy = {busy} spinning "
             "Python process(es) started by the benchmark",
             "load average (1 min) when each condition started: "
             + "; ".join(f"{c} {', '.join(f'{x:.1f}' for x in v)}" for c, v in measured["loads"].items()), "",
             "| workload | CPU | setting | threads | s/step (median) | all rounds | CPU s/step | time / 1 thread |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    results = measured["results"]
    for (workload, condition, setting), rounds in results.items():
        walls = [w for w, _ in rounds]
        one = statistics.median(w for w, _ in results[(workload, condition, "1 thread")])
        batch, pixels, trainable = WORKLOADS[workload]
        what = f"{workload}: batch {batch}, {pixels} px, {'partial' if trainable else 'full'}"
        lines.append(f"| {what} | {condition} | {setting} | {measured['threads'][setting]} "
                     f"| {statistics.median(walls):.2f} | {', '.join(f'{w:.2f}' for w in walls)} "
                     f"| {statistics.median(c for _, c in rounds):.2f} | {statistics.median(walls) / one:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds per setting")
    parser.add_argument("--steps", type=int, default=4, help="timed training steps per measurement")
    parser.add_argument("--busy", type=int, default=1, help="spinning processes in the busy condition")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--no-readme", action="store_true", help="print the table without writing README.md")
    parser.add_argument("--worker", choices=list(SETTINGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.workloads, args.steps)
        return
    measured = measure(repeats=args.repeats, steps=args.steps, busy=args.busy, workloads=args.workloads)
    markdown = (machine_line(threads=measured["threads"]["default"]) + "\n\n"
                + report(measured, repeats=args.repeats, steps=args.steps, busy=args.busy))
    print(markdown)
    if not args.no_readme:
        write_section("thread_oversubscription", markdown)
        print("README.md: the thread_oversubscription section rewritten")


if __name__ == "__main__":
    main()

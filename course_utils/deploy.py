"""A trained model outside the notebook: ONNX Runtime sessions, latency measured honestly, and what this
CPU can do in bfloat16.

The export itself is one call the notebook shows (``torch.onnx.export(..., dynamo=True)``); this module
holds the plumbing around it. ONNX Runtime, ``onnx`` and ``onnxscript`` (the exporter's translator) come
with the ``deploy`` extra: ``pip install "course-utils[deploy]"``.
"""
from __future__ import annotations

import importlib.util
import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

DEPLOY_PACKAGES = ("onnx", "onnxruntime", "onnxscript")


def require_deploy_packages() -> dict[str, str]:
    """Versions of onnx, onnxruntime and onnxscript; a clear error naming the fix when one is missing.

    Raises:
        ModuleNotFoundError: A package is missing; the message names the pip command.

    Used in: 10_deployment_and_scaling.ipynb
    """
    from importlib import metadata

    missing = [name for name in DEPLOY_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ModuleNotFoundError(f"{', '.join(missing)} not installed. Install the deploy extra: "
                                  'pip install "course-utils[deploy]" (or: pip install onnx onnxruntime onnxscript).')
    return {name: metadata.version(name) for name in DEPLOY_PACKAGES}


def save_onnx(program, path: str | os.PathLike) -> Path:
    """Write what ``torch.onnx.export(..., dynamo=True)`` returned to ``path``, weights inside, atomically.

    The file is written beside ``path`` and renamed onto it (``checkpoints.atomic_path``), so a crash
    never leaves half a model behind.

    Used in: 10_deployment_and_scaling.ipynb, 11_your_own_images.ipynb
    """
    from course_utils.checkpoints import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        program.save(tmp, external_data=False)
    return path


def onnx_session(path: str | os.PathLike, *, threads: int | None = None):
    """An ONNX Runtime session on the CPU with a fixed number of threads.

    Args:
        path: The ``.onnx`` file.
        threads: Threads for one operator (``intra_op_num_threads``); default ``torch.get_num_threads()``,
            so that PyTorch and ONNX Runtime are compared with the same number. Operators run one at a
            time (``inter_op_num_threads=1``), as in PyTorch.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: ``threads`` is not a positive integer.

    Used in: 10_deployment_and_scaling.ipynb, 11_your_own_images.ipynb
    """
    require_deploy_packages()
    import onnxruntime

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No ONNX model at {path}: export one with torch.onnx.export(...).save(path).")
    threads = torch.get_num_threads() if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer such as {torch.get_num_threads()}, got {threads!r}.")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, images: torch.Tensor) -> torch.Tensor:
    """The session's first output for a batch of images (float32, any memory layout), as a tensor.

    Used in: 10_deployment_and_scaling.ipynb, 11_your_own_images.ipynb
    """
    feed = {session.get_inputs()[0].name: images.detach().float().contiguous().cpu().numpy()}
    return torch.from_numpy(session.run(None, feed)[0])


@dataclass(frozen=True)
class Timing:
    """Seconds of repeated runs of the same call (after warm-up runs that are not counted).

    Attributes:
        runs: Wall-clock seconds of each run: what a user waits, including time spent waiting for a CPU
            that other programs use.
        cpu: CPU seconds of each run, all threads of this process together: the work done, which a busy
            machine inflates much less (threads that spin while waiting for each other count, too).
    """

    runs: tuple[float, ...]
    cpu: tuple[float, ...]

    @property
    def median(self) -> float:
        """The median wall-clock run: robust to the odd slow run when other programs share the CPU."""
        return statistics.median(self.runs)

    @property
    def median_cpu(self) -> float:
        """The median CPU time of a run."""
        return statistics.median(self.cpu)


def time_runs(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed (wall clock and CPU time).

    Raises:
        ValueError: ``repeats`` < 1 or ``warmup`` < 0.

    Used in: 10_deployment_and_scaling.ipynb
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer (e.g. 5), got {repeats!r}.")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative integer (e.g. 1), got {warmup!r}.")
    for _ in range(warmup):
        fn()
    runs, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        runs.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return Timing(tuple(runs), tuple(cpu))


def compare_latency(
    engines: Mapping[str, Callable[[torch.Tensor], object]], batches: Mapping[int, torch.Tensor], *,
    repeats: int = 5, warmup: int = 1,
) -> list[dict[str, object]]:
    """Time every engine on every batch; one row per pair with the median latency and the throughput.

    Args:
        engines: Name to a function that runs the model on a batch (e.g. PyTorch eager, ONNX Runtime).
        batches: Batch size to an input batch of that size.
        repeats, warmup: As in :func:`time_runs`; the engines alternate batch by batch.

    Returns:
        Rows ``{"engine", "batch", "median_ms", "runs_ms", "images_per_s", "cpu_ms"}`` (``cpu_ms``: the
        median CPU time of a call, all threads together).

    Raises:
        ValueError: A batch's first dimension differs from its key.

    Used in: 10_deployment_and_scaling.ipynb
    """
    rows = []
    for size, images in batches.items():
        if images.shape[0] != size:
            raise ValueError(f"batches[{size}] holds {images.shape[0]} images; key each batch by its size.")
        for name, run in engines.items():
            timing = time_runs(lambda: run(images), repeats=repeats, warmup=warmup)
            rows.append({"engine": name, "batch": size, "median_ms": 1000 * timing.median,
                         "runs_ms": [round(1000 * s, 1) for s in timing.runs], "images_per_s": size / timing.median,
                         "cpu_ms": 1000 * timing.median_cpu})
    return rows


def format_latency_table(rows: list[dict[str, object]]) -> str:
    """The rows of :func:`compare_latency` as a Markdown table (prints readably as text too).

    Besides the median, the table gives the 90th percentile of the runs (NumPy's default, linear
    interpolation): the slow calls a user notices one time in ten.

    Used in: 10_deployment_and_scaling.ipynb
    """
    lines = ["| engine | batch | runs | median latency (ms) | 90th percentile (ms) | images/s | CPU time per call (ms) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        runs = sorted(row["runs_ms"])
        position = 0.9 * (len(runs) - 1)
        low, frac = int(position), position - int(position)
        p90 = runs[low] + frac * (runs[min(low + 1, len(runs) - 1)] - runs[low])
        lines.append(f"| {row['engine']} | {row['batch']} | {len(runs)} | {row['median_ms']:.1f} | {p90:.1f} | "
                     f"{row['images_per_s']:.1f} | {row['cpu_ms']:.1f} |")
    return "\n".join(lines)


def cpu_bf16_support() -> dict[str, object]:
    """Whether this CPU computes bfloat16 natively, which decides if ``torch.autocast("cpu")`` can pay off.

    Returns:
        ``{"cpu_capability"`` (the vector instructions PyTorch's kernels use, e.g. ``"AVX2"``),
        ``"onednn_bf16"`` (oneDNN has fast bfloat16 kernels here; without them convolutions fall back to
        a slow reference implementation), ``"cpu_flags"`` (the bfloat16 flags in ``/proc/cpuinfo``:
        ``avx512_bf16``, ``amx_bf16``; empty elsewhere or when absent)}``.

    Used in: 10_deployment_and_scaling.ipynb
    """
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private operator: absent in some builds
        onednn = False
    flags: list[str] = []
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        words = set(cpuinfo.read_text(errors="replace").split())
        flags = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in words]
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "onednn_bf16": onednn, "cpu_flags": flags}

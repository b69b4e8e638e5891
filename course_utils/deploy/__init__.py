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

from course_utils.arguments import require_int

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

    The file is written beside ``path`` and renamed onto it (``files.atomic_path``), so a crash
    never leaves half a model behind.

    Used in: 10_deployment_and_scaling.ipynb, 11_your_own_images.ipynb
    """
    from course_utils.files import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        program.save(tmp, external_data=False)
    return path


def onnx_session(path: str | os.PathLike, *, threads: int | None = None, spinning: bool = True):
    """An ONNX Runtime session on the CPU with a fixed number of threads.

    Args:
        path: The ``.onnx`` file.
        threads: Threads for one operator (``intra_op_num_threads``); default ``torch.get_num_threads()``,
            so that PyTorch and ONNX Runtime are compared with the same number. Operators run one at a
            time (``inter_op_num_threads=1``), as in PyTorch.
        spinning: Let idle threads spin for the next operator (ONNX Runtime's default: lowest latency on
            idle cores). ``False`` makes them sleep: what feature extraction uses, since spinning threads
            burn the CPU that other threads of the process (and other programs) need; on a 2-core machine
            shared with other jobs it ran 1.3x more images per CPU-second.

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
    require_int("threads", threads, example=torch.get_num_threads(),
                fix="It is how many CPU threads ONNX Runtime uses; leave it as None for torch's count.")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, images: torch.Tensor) -> torch.Tensor:
    """The session's first output for a batch of images (float32, any memory layout), as a tensor.

    Used in: 10_deployment_and_scaling.ipynb, 11_your_own_images.ipynb
    """
    return run_onnx_outputs(session, images)[0]


def run_onnx_outputs(session, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every output of the session for a batch of images, as tensors in the model's output order.

    Used in: 05_feature_extraction.ipynb, 09_when_to_transfer.ipynb (through engines.frozen_forward)
    """
    feed = {session.get_inputs()[0].name: images.detach().float().contiguous().cpu().numpy()}
    return tuple(torch.from_numpy(output) for output in session.run(None, feed))


def _outputs(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.inference_mode():
        result = model(images)
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


def export_onnx(
    model: torch.nn.Module, example: torch.Tensor, path: str | os.PathLike, *, dynamo: bool = True,
    tolerance: float = 1e-4, fixed_batch: bool = False,
) -> Path:
    """Export ``model`` (eval mode) with a dynamic (or fixed) batch size, save it atomically, check it against PyTorch.

    The input is named ``images``, the outputs ``output0``, ``output1``, ... in the model's order. After
    saving, ONNX Runtime runs ``example`` and every output is compared with PyTorch's: the largest
    difference, divided by ``max(1, largest absolute PyTorch value)``, must not exceed ``tolerance``
    (float32 rounding over dozens of layers stays near 1e-5; a wrong export does not).

    Args:
        model: A network on the CPU; put in eval mode (and left there).
        example: A batch of at least 2 images of the size the model will see (the size is fixed); with
            ``fixed_batch``, exactly the batch every run will get (1 image is allowed).
        path: The ``.onnx`` file to write.
        dynamo: ``True``: ``torch.export`` (the exporter torch recommends). ``False``: the older TorchScript
            exporter, deprecated but about ten times faster to export EfficientNet-Lite0 on a CPU (about 1 s
            vs 12 s of CPU time here), which is what makes exporting pay for one feature extraction.
        tolerance: The largest relative difference accepted.
        fixed_batch: Fix the batch size too, so that every shape in the graph is a constant. ONNX Runtime
            then folds the shape arithmetic of TensorFlow-style "same" padding (EfficientNet-Lite's
            ``Conv2dSame``) away when it loads the TorchScript exporter's file, instead of computing it in
            every run: Lite0 ran about 1.4 times as fast at 224 px (``benchmarks/feature_extraction.py``).

    Raises:
        ValueError: ``example`` holds fewer than 2 images (none, with ``fixed_batch``), or ONNX Runtime differs
            from PyTorch by more than ``tolerance`` (the file is removed; the message gives the difference).

    Used in: 05_feature_extraction.ipynb, 09_when_to_transfer.ipynb (through engines.frozen_forward),
        benchmarks/deployment.py, benchmarks/feature_extraction.py
    """
    import warnings

    from course_utils.files import atomic_path

    if example.dim() < 1 or len(example) < (1 if fixed_batch else 2):
        raise ValueError(f"example must hold at least 2 images (a batch of 1 would fix the batch size; pass "
                         f"fixed_batch=True if that is meant), got shape {tuple(example.shape)}.")
    path, example = Path(path), example.detach().float().cpu().contiguous()
    expected = _outputs(model.eval(), example)
    names = [f"output{i}" for i in range(len(expected))]
    if dynamo:
        dynamic = None if fixed_batch else ({0: torch.export.Dim("batch")},)
        program = torch.onnx.export(model, (example,), dynamo=True, verbose=False, input_names=["images"],
                                    output_names=names, dynamic_shapes=dynamic)
        save_onnx(program, path)
    else:
        with atomic_path(path) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter says it is deprecated
            torch.onnx.export(model, (example,), str(tmp), dynamo=False, input_names=["images"], output_names=names,
                              dynamic_axes=None if fixed_batch else {name: {0: "batch"} for name in ["images", *names]})
    gap = onnx_gap(onnx_session(path), expected, example)
    if not gap <= tolerance:
        path.unlink()
        raise ValueError(f"ONNX Runtime's outputs differ from PyTorch's by {gap:.1e} (relative), more than the "
                         f"tolerance {tolerance:g}: the export is wrong. The file was removed.")
    return path


def onnx_gap(session, expected: tuple[torch.Tensor, ...], images: torch.Tensor) -> float:
    """The largest difference between the session's outputs and ``expected``, over ``max(1, max |expected|)``.

    Used in: 05_feature_extraction.ipynb (through export_onnx)
    """
    gaps = [(got - want).abs().max().item() / max(1.0, want.abs().max().item())
            for got, want in zip(run_onnx_outputs(session, images), expected, strict=True)]
    return max(gaps)


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
    require_int("repeats", repeats, example=5, fix="It is how many timed calls the median is taken over.")
    require_int("warmup", warmup, minimum=0, example=1, fix="It is how many untimed calls come first (0 for none).")
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
            timing = time_runs(lambda run=run, images=images: run(images), repeats=repeats, warmup=warmup)
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

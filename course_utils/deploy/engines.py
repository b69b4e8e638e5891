"""Which engine runs a frozen network over many images: ONNX Runtime when it is installed and pays, else PyTorch.

Feature extraction only runs the network forward, in eval mode, over the same image size again and again.
On the 2-core CPUs measured, ONNX Runtime did that 1.5 to 4 times faster than eager PyTorch (per image: 21 vs
45 ms of CPU at 224 px, 3.6 vs 5.5 ms at 96 px, on 1 thread of an AMD EPYC; ``benchmarks/feature_extraction.py``
measures it against the machine's limit), so :func:`frozen_forward` exports the network once per weights,
batch size, image size and outputs (``deploy.export_onnx``, checked against PyTorch) and runs the export. The
export's batch size is fixed: with every shape a constant, ONNX Runtime folds the arithmetic of Lite0's "same"
padding away instead of running it in every call (1.4 times as fast as a dynamic batch there); a smaller last
batch is padded with copies of its first image, whose outputs are dropped. Eager PyTorch (``channels_last``,
``torch.inference_mode``) runs instead when onnxruntime is missing, the model is on a GPU, there are too few
pixels for the export to pay, or the export fails; the engine that ran is reported.
"""
from __future__ import annotations

import hashlib
import importlib.util
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

ENGINES = ("auto", "onnxruntime", "torch")
# Below this many pixels (images x height x width) "auto" runs eager PyTorch unless this process already exported
# the network: twice the break-even measured for Lite0 on 1 thread of a 2-core AMD EPYC, where export + session
# cost 1.8 CPU s at 224 px and ONNX Runtime saved 23 of 45 ms per image (break-even 75 images, 3.8 M pixels),
# and 0.7 s at 96 px for 1.9 of 5.5 ms per image (384 images, 3.5 M pixels).
ONNX_MIN_PIXELS = 8_000_000
_SESSIONS: OrderedDict[tuple, object] = OrderedDict()  # the last few exports of this process, by what they compute
_KEEP_SESSIONS = 4


def digest(tensors: Iterable[tuple[object, torch.Tensor]]) -> str:
    """SHA-256 of named tensors: each name, shape, dtype and the exact bytes.

    Used in: 09_when_to_transfer.ipynb (through probes.stage_features's cache key)
    """
    hashed = hashlib.sha256()
    for name, tensor in tensors:
        tensor = tensor.detach().cpu().contiguous()
        hashed.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}".encode())
        hashed.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return hashed.hexdigest()


def weights_digest(model: nn.Module) -> str:
    """:func:`digest` of ``model.state_dict()``: equal only for equal weights (and buffers).

    Used in: 05_feature_extraction.ipynb (through features.extract_features)
    """
    return digest(model.state_dict().items())


def pool(activation: torch.Tensor) -> torch.Tensor:
    """Global average over the spatial positions of an ``(N, C, H, W)`` output; other shapes are flattened.

    Used in: 09_when_to_transfer.ipynb (through probes.stage_features)
    """
    return activation.float().mean(dim=(2, 3)) if activation.dim() == 4 else activation.float().flatten(1)


class Outputs(nn.Module):
    """``model`` returning a tuple: its own output flattened (no ``pooled`` or ``maps``), else the pooled
    outputs of the ``pooled`` submodules followed by the whole outputs of the ``maps`` submodules.

    Used in: 09_when_to_transfer.ipynb (through probes.stage_features)
    """

    def __init__(self, model: nn.Module, *, pooled: Sequence[str] = (), maps: Sequence[str] = ()) -> None:
        from course_utils.inside.gradients import capture_activations

        super().__init__()
        self.model, self.pooled, self.maps = model, list(pooled), list(maps)
        with capture_activations(model, [*self.pooled, *self.maps]):
            pass  # a name that is not a submodule fails here, with the list of valid names

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from course_utils.inside.gradients import capture_activations

        if not self.pooled and not self.maps:
            return (self.model(images).flatten(1).float(),)
        with capture_activations(self.model, list(dict.fromkeys([*self.pooled, *self.maps]))) as outputs:
            self.model(images)
        return (*[pool(outputs[name]) for name in self.pooled], *[outputs[name].float() for name in self.maps])


@dataclass(frozen=True)
class Forward:
    """A batch of images to the tuple of CPU float32 outputs of :class:`Outputs`, and the engine that computes it.

    Used in: 05_feature_extraction.ipynb (through features.extract_features)
    """

    engine: str
    run: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.run(images)


def _key(network: Outputs, example: torch.Tensor, batch_size: int) -> tuple:
    return (weights_digest(network), batch_size, tuple(example.shape[1:]), tuple(network.pooled), tuple(network.maps),
            torch.get_num_threads())


def _session(network: Outputs, example: torch.Tensor, key: tuple, *, batch_size: int):
    """An ONNX Runtime session of ``network`` for batches of ``batch_size`` images shaped like ``example``,
    exported once per process (the TorchScript exporter: about 1.5 s for Lite0 against 8 s for dynamo's,
    and with every shape fixed its graph ran as fast)."""
    from course_utils import deploy

    if key not in _SESSIONS:
        batch = example[torch.arange(batch_size) % len(example)]   # batch_size images, repeating the example's
        with tempfile.TemporaryDirectory() as folder:  # the session keeps the model in memory
            path = deploy.export_onnx(network, batch, Path(folder) / "frozen.onnx", dynamo=False, fixed_batch=True)
            _SESSIONS[key] = deploy.onnx_session(path, spinning=False)
        while len(_SESSIONS) > _KEEP_SESSIONS:
            _SESSIONS.popitem(last=False)
    _SESSIONS.move_to_end(key)
    return _SESSIONS[key]


def _export_errors() -> tuple[type[Exception], ...]:
    """What a failed export or session start raises: torch's exporter errors are RuntimeErrors; ONNX Runtime's
    own errors derive from Exception only."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort

    return (RuntimeError, ValueError, TypeError, ort.Fail, ort.InvalidArgument, ort.InvalidGraph, ort.NotImplemented)


def _onnx(session, batch_size: int) -> Forward:
    from course_utils import deploy

    def run(images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        parts = []
        for chunk in images.split(batch_size):
            count = len(chunk)
            if count < batch_size:   # the export takes exactly batch_size images: pad with copies of the first
                chunk = torch.cat([chunk, chunk[:1].expand(batch_size - count, *chunk.shape[1:])])
            parts.append([output[:count] for output in deploy.run_onnx_outputs(session, chunk)])
        return tuple(torch.cat(outputs) for outputs in zip(*parts, strict=True))

    return Forward("onnxruntime", run)


def _eager(network: Outputs, device: torch.device) -> Forward:
    def run(images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.inference_mode():
            outputs = network(images.to(device, memory_format=torch.channels_last))
        return tuple(output.cpu().contiguous() for output in outputs)

    return Forward("torch", run)


def _choose(engine: str, device: torch.device, pixels: int, network: Outputs, example: torch.Tensor,
            batch_size: int) -> str:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}.")
    installed = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
    if engine == "onnxruntime" and (not installed or device.type != "cpu"):
        raise ValueError(f"engine='onnxruntime' needs onnx and onnxruntime installed (pip install \"course-utils"
                         f"[deploy]\") and the model on the CPU (it is on {device}); or pass engine='auto'.")
    if engine == "auto":
        exported = _key(network, example, batch_size) in _SESSIONS
        pays = installed and device.type == "cpu" and (pixels >= ONNX_MIN_PIXELS or exported)
        return "onnxruntime" if pays else "torch"
    return engine


@contextmanager
def frozen_forward(
    model: nn.Module, example: torch.Tensor, *, images: int, pooled: Sequence[str] = (), maps: Sequence[str] = (),
    engine: str = "auto", device: torch.device | None = None, batch_size: int | None = None,
) -> Iterator[Forward]:
    """The forward pass of a frozen ``model`` (eval mode inside the block, its mode restored after) on one engine.

    Args:
        model: The network; :class:`Outputs` says what comes out (``pooled``, ``maps``).
        example: A first batch: its image size is the size every batch must have.
        images: How many images will run (``"auto"`` exports only when they hold ``ONNX_MIN_PIXELS``).
        engine: ``"auto"`` (ONNX Runtime when installed, on the CPU and worth it, else PyTorch),
            ``"onnxruntime"`` or ``"torch"`` (eager, ``channels_last``, ``torch.inference_mode``).
        device: Where eager PyTorch runs (default: where the model's parameters are).
        batch_size: The batch size the export is fixed to (default: ``len(example)``); larger batches are
            split, smaller ones padded.

    Raises:
        ValueError: An unknown ``engine``, or ``"onnxruntime"`` without onnxruntime or for a model on a GPU.

    Used in: 05_feature_extraction.ipynb, 09_when_to_transfer.ipynb (through extract_features, stage_features)
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    network, was_training = Outputs(model, pooled=pooled, maps=maps), model.training
    pixels = images * example.shape[-2] * example.shape[-1]
    batch_size = len(example) if batch_size is None else batch_size
    chosen = _choose(engine, device, pixels, network, example, batch_size)
    model.eval()
    try:
        forward = _eager(network, device)
        if chosen == "onnxruntime":
            try:
                session = _session(network, example, _key(network, example, batch_size), batch_size=batch_size)
                forward = _onnx(session, batch_size)
            except _export_errors() as err:
                if engine == "onnxruntime":
                    raise
                warnings.warn(f"ONNX export failed ({type(err).__name__}: {str(err)[:200]}); running eager "
                              "PyTorch instead (same features, slower).", RuntimeWarning, stacklevel=3)
        yield forward
    finally:
        model.train(was_training)

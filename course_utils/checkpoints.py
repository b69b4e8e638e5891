"""Checkpoints: the one atomic write of the package, and state dicts saved and loaded safely."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on success it replaces ``path`` in one step.

    The writer inside the ``with`` block writes the whole file to the temporary path; the file is then
    flushed to the disk (``fsync``) and renamed onto ``path``, so a crash mid-write never leaves a
    broken file and never destroys the previous one. On an error the temporary file is removed. The file
    gets the permissions of any new file of the user (the umask applies). This is the one place the
    package writes files: torch files through :func:`atomic_save`, ONNX models through
    ``deploy.save_onnx``.

    Used in: 04_model_surgery.ipynb, 06_fine_tuning.ipynb, 10_deployment_and_scaling.ipynb (through
    save_checkpoint, finetuned.save and deploy.save_onnx)
    """
    import secrets

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    os.close(os.open(tmp, flags, 0o666))  # as open(): the umask decides (mkstemp would make it 0600)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            os.fsync(fd)  # the bytes are on the disk before the new name points at them
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def atomic_save(payload, path: str | Path) -> Path:
    """``torch.save(payload)`` to ``path`` atomically (see :func:`atomic_path`).

    Used in: 04_model_surgery.ipynb, 06_fine_tuning.ipynb (through save_checkpoint and finetuned.save)
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX; Windows cannot open a folder for this)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(model: nn.Module, path: str | Path) -> Path:
    """Save ``model.state_dict()`` atomically (:func:`atomic_save`).

    Only tensors are saved, so the file loads with ``torch.load(path, weights_only=True)``.

    Used in: 04_model_surgery.ipynb; 06_fine_tuning.ipynb (through train.fit)
    """
    return atomic_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state dict saved by :func:`save_checkpoint` (``weights_only=True``, safe to open).

    Raises:
        FileNotFoundError: No file at ``path``.

    Used in: 04_model_surgery.ipynb, 06_fine_tuning.ipynb
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}. Train with fit(..., checkpoint=path) first.")
    device = next(model.parameters()).device
    model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    return model

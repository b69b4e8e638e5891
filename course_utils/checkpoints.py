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
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(tmp, flags, 0o666))  # as open(): the umask decides (mkstemp would make it 0600)
    except OSError as err:
        raise _unwritable(path, err) from None
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


def _unwritable(path: Path, err: OSError) -> PermissionError:
    return PermissionError(
        f"Cannot write {path}: {err.strerror or err} in {path.parent}. Choose a folder you can write to: set "
        "the environment variable COURSE_RUNS (where the course writes checkpoints and caches) to one, e.g. "
        "COURSE_RUNS=~/course_runs, or pass another path."
    )


def write_error(folder: str | Path, *, create: bool = True) -> OSError | None:
    """Why a new file cannot be written in ``folder`` (None: it can), tried with a file removed at once.

    Trying is right also for root and read-only mounts, where permission bits mislead. ``create``: make
    the folder (with its parents) first; otherwise it must exist.
    """
    import secrets

    probe = Path(folder) / f".write-test-{secrets.token_hex(6)}"
    try:
        if create:
            Path(folder).mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as err:
        return err
    probe.unlink()
    return None


def check_writable(path: str | Path) -> None:
    """Make sure a file can be written at ``path`` (its folder is created), before long work that ends in it.

    Raises:
        PermissionError: The folder cannot be created or written; the message names it and the fix.

    Used in: 05_feature_extraction.ipynb, 06_fine_tuning.ipynb (through extract_features and fit)
    """
    path = Path(path)
    err = write_error(path.parent)
    if err is not None:
        raise _unwritable(path, err)


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


def read_torch_file(path: str | Path, *, device: torch.device | str = "cpu"):
    """``torch.load(path, weights_only=True)``, or an error naming the file when it is empty or damaged.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: The file is empty, truncated or not a torch file.

    Used in: 04_model_surgery.ipynb, 06_fine_tuning.ipynb (through load_checkpoint and finetuned.load)
    """
    import pickle

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}. Train with fit(..., checkpoint=path) first.")
    size = path.stat().st_size
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as err:
        state = "is empty (0 bytes)" if size == 0 else f"is truncated or not a torch file ({size} bytes: {err})"
        raise ValueError(f"The checkpoint {path} {state}; an interrupted copy or download leaves such files. "
                         "Delete it and save it again: fit(..., checkpoint=path) or save_checkpoint().") from None


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state dict saved by :func:`save_checkpoint` (``weights_only=True``, safe to open).

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: The file is damaged, is a ``finetuned.save`` file, or holds weights of another
            architecture or number of classes (the message says which, and the fix).

    Used in: 04_model_surgery.ipynb, 06_fine_tuning.ipynb
    """
    state = read_torch_file(path, device=next(model.parameters()).device)
    if isinstance(state, dict) and "state_dict" in state and "backbone" in state:
        raise ValueError(f"{path} is a whole fine-tuned model saved by finetuned.save (backbone "
                         f"{state['backbone']!r}, classes {state.get('classes')}), not a plain state dict. "
                         "Load it with finetuned.load(path), which rebuilds the model.")
    _check_fits(model, state, Path(path))
    model.load_state_dict(state)
    return model


def _check_fits(model: nn.Module, state, path: Path) -> None:
    """Refuse a state dict that does not fit ``model``, saying what the file holds."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors. "
                         "Save checkpoints with save_checkpoint(model, path) or fit(..., checkpoint=path).")
    own = model.state_dict()
    if set(own) != set(state):
        raise ValueError(
            f"{path} holds the weights of another architecture: {len(set(state) - set(own))} of its "
            f"{len(state)} tensors are not in the {type(model).__name__} (first: {sorted(set(state) - set(own))[:2]}) "
            f"and {len(set(own) - set(state))} of the model's are not in the file. Build the model the way "
            "the saved one was built (same load_backbone name, replace_head with its number of classes), "
            "or use state_dicts.load_matching_state_dict to load the layers that fit."
        )
    differ = [k for k in own if own[k].shape != state[k].shape]
    if differ:
        from course_utils.models import get_head

        try:
            head = get_head(model)[0]
        except ValueError:
            head = None
        if head is not None and all(k.startswith(head + ".") for k in differ):
            saved, has = state[f"{head}.weight"].shape[0], own[f"{head}.weight"].shape[0]
            raise ValueError(f"{path} holds a model with {saved} classes, but the head {head!r} of this model has "
                             f"{has}. Give it the saved head size first: models.replace_head(model, {saved}).")
        raise ValueError(f"{path} has other shapes than the model for {len(differ)} tensors (first: {differ[0]}: "
                         f"{tuple(state[differ[0]].shape)} in the file, {tuple(own[differ[0]].shape)} in the "
                         "model). Build the model the way the saved one was built.")

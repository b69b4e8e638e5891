"""Writing the course's files safely: atomically (a crash never leaves half a file) and into folders that work.

Checkpoints (:func:`course_utils.models.checkpoints.save`), cached features, ONNX files and the audit's copies are
written through :func:`atomic_path`; :func:`check_writable` and :func:`write_error` refuse an unwritable folder
before long work, with the fix (``COURSE_RUNS``).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on success it replaces ``path`` in one step.

    The writer inside the ``with`` block writes the whole file to the temporary path; the file is then
    flushed to the disk (``fsync``) and renamed onto ``path``, so a crash mid-write never leaves a
    broken file and never destroys the previous one. On an error the temporary file is removed. The file
    gets the permissions of any new file of the user (the umask applies). Checkpoints
    (:func:`course_utils.models.checkpoints.save`), cached features, ONNX files (``deploy.save_onnx``,
    ``predict.attach_metadata``) and the audit's copies are written through it; downloads, the instructor
    tools (``course_admin``) and the exercise checks' scratch files are written directly.

    Used in: 04_model_surgery.ipynb, 06_fine_tuning.ipynb, 10_deployment_and_scaling.ipynb (through
    checkpoints.save and deploy.save_onnx)
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

    Used in: 04_model_surgery.ipynb, 06_fine_tuning.ipynb (through checkpoints.save)
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



"""The one cache scheme of computed features (``features.extract_features``, ``probes.stage_features``).

A cache file's name is a hash of everything the features depend on: what computed them (``kind`` and the
caller's ``key``), the network's weights, and the data: the exact list of image files (path, label, size,
mtime) with the dataset's transforms (their ``repr``, e.g. ``Normalize``'s mean and std), or, for images held
in memory, the bytes of the image tensors. A changed dataset, model or preprocessing never gets stale
features; a damaged file is reported and computed again.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch

from course_utils.data import image_files
from course_utils.deploy.engines import digest

CACHE_FORMAT = 3  # bump when what extract_features or probes.stage_features computes changes


class Extracted(tuple):
    """What :func:`extract_features` and ``probes.stage_features`` return: their tuple, plus ``engine``.

    ``engine`` is ``"onnxruntime"`` or ``"torch"``, or ``"cache (computed by onnxruntime)"`` and the like when
    the result was read from the cache.

    Used in: 05_feature_extraction.ipynb (returned by features.extract_features), 09_when_to_transfer.ipynb
        (returned by probes.stage_features)
    """

    def __new__(cls, items, *, engine: str) -> Extracted:
        result = super().__new__(cls, items)
        result.engine = engine
        return result


def pipeline_description(dataset) -> list[str]:
    """What an image goes through on its way out of ``dataset``: each wrapper's type and transforms.

    Follows ``.dataset`` (``Subset``, ``Transformed``, ``CachedImages``) down to the image folder; lists
    ``transform``, ``target_transform`` and ``size`` (the cached image size) by their ``repr``. A
    transform whose ``repr`` holds a memory address (a ``lambda``) differs in every session, so its
    features are recomputed each time rather than ever reused wrongly.

    Used in: 05_feature_extraction.ipynb (through extract_features)
    """
    steps = []
    while dataset is not None:
        parts = [type(dataset).__name__]
        for attribute in ("transform", "target_transform", "size"):
            value = getattr(dataset, attribute, None)
            if value is not None:
                parts.append(f"{attribute}={value!r}")
        steps.append(" ".join(parts))
        dataset = getattr(dataset, "dataset", None)
    return steps


def _data_identity(dataset, inputs: Sequence[torch.Tensor] | None) -> dict:
    try:
        listed = image_files(dataset)
    except TypeError as err:
        if inputs is None:
            raise TypeError(f"{err} Without the file list its features cannot be cached safely; "
                            "pass cache_dir=None to skip the cache.") from None
        return {"tensors": digest(enumerate(inputs))}
    files = []
    for path, label in listed:
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            target = f" is a broken link to {os.readlink(path)}" if os.path.islink(path) else " no longer exists"
            raise FileNotFoundError(f"The image {path}{target}. Restore the file, or delete it and build the "
                                    "dataset again (find_splits / image_folder).") from None
        files.append([os.path.abspath(path), label, stat.st_size, stat.st_mtime_ns])
    return {"files": files, "pipeline": pipeline_description(dataset)}


def cache_path(
    cache_dir: str | Path, *, kind: str, weights: str, dataset, key: str = "",
    inputs: Sequence[torch.Tensor] | None = None,
) -> Path:
    """The cache file ``cache_dir/{kind}-{hash}.pt``: the hash covers everything the features depend on.

    Hashed: :data:`CACHE_FORMAT`, ``kind``, ``key``, ``weights`` (``engines.weights_digest``) and the data:
    the dataset's exact file list (path, label, size, mtime) with its :func:`pipeline_description` when it
    lists its files, else the bytes, shapes and dtypes of ``inputs`` (every image tensor and the labels).
    The engine is not hashed: ONNX Runtime's outputs equal PyTorch's within 1e-4 (relative, checked at
    every export by ``deploy.export_onnx``), so a file serves both.

    Raises:
        TypeError: The dataset lists no files and no ``inputs`` are given.
        FileNotFoundError: An image file is gone (a broken link); the message names it.

    Used in: 05_feature_extraction.ipynb, 09_when_to_transfer.ipynb (through extract_features, stage_features)
    """
    blob = json.dumps({"format": CACHE_FORMAT, "kind": kind, "key": key, "weights": weights,
                       **_data_identity(dataset, inputs)}).encode()
    return Path(cache_dir) / f"{kind}-{hashlib.sha256(blob).hexdigest()[:24]}.pt"


def load_cache(path: Path, keys: Sequence[str]) -> dict | None:
    """The dict cached at ``path``, or None when there is none or it is damaged (then a warning names it).

    A damaged file (cut short, not a torch file, missing one of ``keys``) is reported and treated as
    missing: the caller computes the result again and overwrites it.

    Used in: 05_feature_extraction.ipynb, 09_when_to_transfer.ipynb (through extract_features, stage_features)
    """
    if not path.is_file():
        return None
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        problem = f"{type(err).__name__}: {str(err)[:200]}"
    else:
        missing = [name for name in keys if not isinstance(cached, dict) or name not in cached]
        if not missing:
            return cached
        problem = f"it has no {', '.join(missing)}"
    warnings.warn(f"The cache file {path} is damaged ({problem}); computing it again and overwriting it.",
                  RuntimeWarning, stacklevel=3)
    return None

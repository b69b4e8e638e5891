"""Classify image files with an exported model, from the command line:

    python -m course_utils.deploy.predict model.onnx photo1.jpg holiday/ ...

prints one line per image, ``<file>: <class> (<probability>)``. Folders are searched for image files
(hidden folders left out). The model's description, the same ``checkpoints.Description`` a checkpoint holds
(class names, preprocessing, backbone, info), travels inside the ``.onnx`` file's metadata (written by
:func:`attach_metadata`), so the model file is all a user needs. A file that cannot be read is named on
stderr and the others are still classified; the exit status is then 1 (2 when nothing could be classified
at all: no model, no metadata, no images).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from course_utils.files import atomic_path
from course_utils.models.checkpoints import Description
from course_utils.models.weights import Preprocessing

METADATA_KEY = "course_utils.classifier"


def attach_metadata(path: str | os.PathLike, *, classes: list[str], preprocessing: Preprocessing,
                    backbone: str | None = None, **info) -> Path:
    """Store the model's description in an ONNX file's metadata (the file is rewritten atomically).

    The arguments are those of ``checkpoints.save``, and the same ``checkpoints.Description`` is stored.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: ``info`` holds a value that is not plain (a tensor, an object).

    Used in: 11_your_own_images.ipynb
    """
    import onnx

    path = Path(path)
    description = Description(backbone=backbone, classes=classes, preprocessing=preprocessing, info=info)
    text = json.dumps(description.to_plain())
    if not path.is_file():
        raise FileNotFoundError(f"No ONNX model at {path}: export it first (deploy.save_onnx).")
    model = onnx.load(str(path))
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    for key, value in [*kept, (METADATA_KEY, text)]:
        model.metadata_props.add(key=key, value=value)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return path


def read_metadata(session, *, path: str | os.PathLike = "the model") -> Description:
    """The description :func:`attach_metadata` stored in an ONNX Runtime session's model.

    Raises:
        ValueError: The model carries no description, or one without class names or preprocessing (the
            message says how to add them).

    Used in: 11_your_own_images.ipynb (through the command line)
    """
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    description = None if text is None else Description.from_plain(json.loads(text))
    if description is None or description.classes is None or description.preprocessing is None:
        raise ValueError(f"{path} holds no class names or preprocessing. Add them once with "
                         "course_utils.deploy.predict.attach_metadata(path, classes=..., preprocessing=...).")
    return description


def image_paths(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """The files to classify (files as given, image files found in folders) and errors for missing inputs.

    Used in: 11_your_own_images.ipynb (through the command line)
    """
    from course_utils.data.decoding import is_image_file

    files, errors = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(Path(d) / name for d, subs, names in os.walk(item, followlinks=True)
                           if not any(p.startswith((".", "__MACOSX")) for p in Path(d).relative_to(item).parts)
                           for name in names if is_image_file(name))
            if not found:
                errors.append(f"{item}: no image files in this folder")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            errors.append(f"{item}: no such file or folder")
    return files, errors


def classify(session, paths: list[Path], *, classes: list[str], preprocessing: Preprocessing,
             batch_size: int = 32) -> list[dict]:
    """Class and probability of every file: rows ``{"path", "class", "probability"}`` or ``{"path", "error"}``.

    Each file is decoded with :func:`images.load_rgb` and goes through the evaluation transform of
    :func:`data.build_transforms` for ``preprocessing``, exactly as the validation images did in training.

    Used in: 11_your_own_images.ipynb (through the command line)
    """
    import torch

    from course_utils.data import build_transforms
    from course_utils.data.decoding import load_rgb
    from course_utils.deploy import run_onnx

    transform = build_transforms(preprocessing, augment=False)["val"]
    rows, ready = [], []
    for path in paths:
        try:
            ready.append((path, transform(load_rgb(path))))
        except ValueError as err:
            rows.append({"path": str(path), "error": str(err)})
    for start in range(0, len(ready), batch_size):
        chunk = ready[start:start + batch_size]
        probabilities = run_onnx(session, torch.stack([image for _, image in chunk])).softmax(dim=1)
        best, index = probabilities.max(dim=1)
        rows += [{"path": str(path), "class": classes[i], "probability": p}
                 for (path, _), p, i in zip(chunk, best.tolist(), index.tolist())]
    order = {str(path): n for n, path in enumerate(paths)}
    return sorted(rows, key=lambda row: order[row["path"]])


def main(argv: list[str] | None = None) -> int:
    """Command line: classify files and folders; exit 0 when all were classified, 1 or 2 otherwise."""
    parser = argparse.ArgumentParser(prog="python -m course_utils.deploy.predict", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="the .onnx file (with class names: predict.attach_metadata)")
    parser.add_argument("inputs", nargs="+", help="image files and folders of images")
    args = parser.parse_args(argv)
    from course_utils.deploy import onnx_session

    try:
        session = onnx_session(args.model)
        description = read_metadata(session, path=args.model)
    except (FileNotFoundError, ValueError, ModuleNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - ONNX Runtime's own errors on a damaged file
        print(f"error: cannot load {args.model} as an ONNX model ({type(err).__name__}: {err}). "
              "Export it again (deploy.save_onnx).", file=sys.stderr)
        return 2
    files, errors = image_paths(args.inputs)
    rows = classify(session, files, classes=description.classes, preprocessing=description.preprocessing)
    for row in rows:
        if "error" in row:
            errors.append(row["error"])
        else:
            print(f"{row['path']}: {row['class']} ({row['probability']:.1%})")
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    classified = sum("error" not in row for row in rows)
    if errors:
        print(f"{classified} of {classified + len(errors)} inputs classified; fix or remove the others.", file=sys.stderr)
    return 0 if not errors else (1 if classified else 2)


if __name__ == "__main__":
    sys.exit(main())

"""Checkpoints: one self-describing file for a trained model, written atomically (:mod:`course_utils.files`).

A checkpoint is a dict of plain values that ``torch.load(path, weights_only=True)`` opens without running any
code: ``"format"``, the model's :class:`Description` (``"backbone"``, ``"classes"``, ``"preprocessing"``,
``"info"``) and its weights (``"state_dict"``). :func:`save` writes one; :func:`load` rebuilds the model from
it alone, or loads its weights into a model you built. An exported ONNX file carries the same description in
its metadata (:mod:`course_utils.deploy.predict`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from course_utils.files import atomic_save
from course_utils.models.weights import Preprocessing

FORMAT = 1  # the version of the file layout; files of 06 saved before descriptions were optional are format 1 too


@dataclass(kw_only=True)
class Description:
    """What a saved model is, besides its weights: it travels in checkpoints and in ONNX metadata.

    Attributes:
        backbone: The name given to ``models.load_backbone``; None for a model of your own.
        classes: Class names in label order (None: not recorded).
        preprocessing: What evaluation images go through; it may differ from the backbone's own (None: not
            recorded).
        info: Plain values the saver recorded (strategy, validation accuracy, ...).

    Used in: 04_model_surgery.ipynb, 06_fine_tuning.ipynb, 11_your_own_images.ipynb (through checkpoints.save,
        predict.attach_metadata)
    """

    backbone: str | None = None
    classes: list[str] | None = None
    preprocessing: Preprocessing | None = None
    info: dict = field(default_factory=dict)

    def to_plain(self) -> dict:
        """The description as numbers, strings, lists and dicts, as files store it (ValueError: ``info`` is not)."""
        _check_plain(self.info)
        return {"format": FORMAT, "backbone": self.backbone,
                "classes": None if self.classes is None else [str(name) for name in self.classes],
                "preprocessing": None if self.preprocessing is None else dataclasses.asdict(self.preprocessing),
                "info": dict(self.info)}

    @classmethod
    def from_plain(cls, plain: dict) -> Description:
        """The description :meth:`to_plain` stored (keys it lacks, as in older ONNX metadata, become None)."""
        pre = plain.get("preprocessing")
        if pre is not None:
            pre = Preprocessing(**{**pre, "mean": tuple(pre["mean"]), "std": tuple(pre["std"])})
        classes = plain.get("classes")
        return cls(backbone=plain.get("backbone"), classes=None if classes is None else list(classes),
                   preprocessing=pre, info=dict(plain.get("info") or {}))


@dataclass(kw_only=True)
class Classifier(Description):
    """A model with its description: what :func:`load` rebuilds, and ``finetuned.load_or_train`` returns.

    Attributes:
        model: The network (from :func:`load` without ``into``: in eval mode on the CPU).
        source: One sentence saying where the model came from (a file, or trained just now).

    Used in: 04_model_surgery.ipynb, 06_fine_tuning.ipynb, 06_fine_tuning_far_domain.ipynb (returned by
        checkpoints.load); 08_attribution_with_captum.ipynb, 10_deployment_and_scaling.ipynb (returned by
        finetuned.load_or_train)
    """

    model: nn.Module
    source: str = ""


def save(
    model: nn.Module, path: str | Path, *, backbone: str | None = None, classes: list[str] | None = None,
    preprocessing: Preprocessing | None = None, **info,
) -> Path:
    """Save a model's weights with its description, atomically: one file that :func:`load` rebuilds.

    Args:
        model: Usually ``load_backbone(backbone)`` with a head for ``classes`` (``models.replace_head``).
        path: The file to write (its folder is created); returned.
        backbone: The name given to ``load_backbone``. Leave it out for a model of your own: the file then
            holds its weights and description, loaded with ``load(path, into=model)``.
        classes: Class names in label order (as many as the head has outputs).
        preprocessing: What evaluation images go through.
        **info: Plain values to keep with it (strategy name, validation accuracy, ...).

    Raises:
        ValueError: ``backbone`` is not one ``load_backbone`` builds, the head's outputs differ from
            ``len(classes)``, or ``info`` holds a value that is not plain. Nothing is written then.
        PermissionError: ``path`` cannot be written.

    Used in: 04_model_surgery.ipynb, 06_fine_tuning.ipynb, 10_deployment_and_scaling.ipynb (its DDP script)
    """
    from course_utils.models import BACKBONES, get_head

    if backbone is not None and backbone not in BACKBONES:
        raise ValueError(f"backbone={backbone!r} is not a name models.load_backbone builds ({', '.join(BACKBONES)}). "
                         "Pass the name the model was built with, or leave it out for a model of your own.")
    if classes is not None:
        head_name, head = get_head(model)
        if head.out_features != len(classes):
            raise ValueError(f"The head {head_name!r} has {head.out_features} outputs but {len(classes)} classes "
                             f"were given ({list(classes)}). Pass the training set's classes, in label order.")
    description = Description(backbone=backbone, classes=classes, preprocessing=preprocessing, info=info)
    weights = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    return atomic_save({**description.to_plain(), "state_dict": weights}, path)


def load(path: str | Path, *, into: nn.Module | None = None) -> Classifier:
    """The model saved by :func:`save`, with its description (``torch.load(..., weights_only=True)``).

    Without ``into`` the model is built from the file alone: ``load_backbone(backbone, pretrained=False)``
    (nothing is downloaded), a head for its classes, the saved weights; it comes back in eval mode on the
    CPU. With ``into`` the weights go into that model, on its device, once they are shown to fit.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: The file is empty or truncated, holds a bare state dict (an older save) or another
            format, was saved without a backbone name and ``into`` is missing, or its weights do not fit
            ``into`` (another backbone, another number of classes). The message names the path, what it
            found and the fix.

    Used in: 04_model_surgery.ipynb, 06_fine_tuning.ipynb, 06_fine_tuning_far_domain.ipynb;
        08_attribution_with_captum.ipynb, 10_deployment_and_scaling.ipynb (through finetuned.load_or_train)
    """
    path = Path(path)
    device = next((t.device for t in into.state_dict().values()), "cpu") if into is not None else "cpu"
    payload = _read(path, device=device)
    description = _description_of(payload, path)
    model = _rebuild(description, path) if into is None else into
    _check_fits(model, payload["state_dict"], path, description)
    model.load_state_dict(payload["state_dict"])
    return Classifier(**vars(description), model=model if into is not None else model.eval(),
                      source=f"loaded from {path}")


def _check_plain(value, where: str = "info") -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif not isinstance(value, (str, int, float, bool, type(None))):
        raise ValueError(f"{where} is a {type(value).__name__}; keep only numbers, strings, booleans and "
                         "lists or dicts of them (e.g. float(accuracy), not a tensor).")


def _read(path: Path, *, device: torch.device | str):
    """``torch.load(path, weights_only=True)``, or an error naming the file when it is missing, empty or damaged."""
    import pickle

    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}. Save one there first: checkpoints.save(model, path, "
                                "backbone=..., classes=..., preprocessing=...), or fit(..., checkpoint=path).")
    size = path.stat().st_size
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as err:
        state = "is empty (0 bytes)" if size == 0 else f"is truncated or not a torch file ({size} bytes: {err})"
        raise ValueError(f"The checkpoint {path} {state}; an interrupted copy or download leaves such files. "
                         "Delete it and save it again: checkpoints.save(...) or fit(..., checkpoint=path).") from None


def _description_of(payload, path: Path) -> Description:
    """The description in a loaded file, or an error saying what the file holds instead and the fix."""
    if isinstance(payload, dict) and payload.get("format") == FORMAT and isinstance(payload.get("state_dict"), dict):
        return Description.from_plain(payload)
    resave = ("and save it again with checkpoints.save(model, path, backbone=..., classes=..., preprocessing=...), "
              "which records what the weights belong to.")
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise ValueError(f"{path} holds a bare state dict ({len(payload)} tensors, first {next(iter(payload))!r}): "
                         "weights alone, as torch.save(model.state_dict()) and older versions of the course "
                         "(save_checkpoint) wrote them. Build the model they came from, load them with "
                         f"model.load_state_dict(torch.load(path, weights_only=True)) {resave}")
    if isinstance(payload, dict) and isinstance(payload.get("format"), int) and payload["format"] > FORMAT:
        raise ValueError(f"{path} is checkpoint format {payload['format']}, newer than this course_utils reads "
                         f"({FORMAT}). Update course_utils (pip install -U course-utils).")
    found = f"a dict with the keys {sorted(map(str, payload))[:6]}" if isinstance(payload, dict) else \
        f"a {type(payload).__name__}"
    raise ValueError(f"{path} holds {found}, not a checkpoint written by checkpoints.save (format {FORMAT}). "
                     "If it holds weights under a key such as 'state_dict', load them into the model they came "
                     f"from with model.load_state_dict(torch.load(path, weights_only=True)[key]) {resave}")


def _what(description: Description) -> str:
    """What a file holds, in words: "weights of efficientnet_lite0 with 3 classes"."""
    if description.backbone is None:
        return "weights saved without a backbone name"
    classes = "" if description.classes is None else f" with {len(description.classes)} classes"
    return f"weights of {description.backbone}{classes}"


def _rebuild(description: Description, path: Path) -> nn.Module:
    """The untrained model the file's weights belong to: its backbone, with a head for its classes."""
    from course_utils.models import get_head, load_backbone, replace_head

    if description.backbone is None:
        raise ValueError(f"{path} holds {_what(description)} (a model of your own, or fit(..., checkpoint=path)), "
                         "so it cannot say how to build the model. Build it the way it was built and load the "
                         "weights into it: checkpoints.load(path, into=model).")
    model, _ = load_backbone(description.backbone, pretrained=False)
    if description.classes is not None and get_head(model)[1].out_features != len(description.classes):
        replace_head(model, len(description.classes))
    return model


def _check_fits(model: nn.Module, state: dict, path: Path, description: Description) -> None:
    """Refuse weights that do not fit ``model``, saying what the file holds and how to build what fits."""
    own = model.state_dict()
    head_size = "" if description.classes is None else f", models.replace_head(model, {len(description.classes)})"
    build = ("Build the model the way the saved one was built" if description.backbone is None else
             f"Let checkpoints.load(path) rebuild it (no into=), or build it the same way: models.load_backbone("
             f"{description.backbone!r}, pretrained=False){head_size}")
    if set(own) != set(state):
        extra, lacking = sorted(set(state) - set(own)), set(own) - set(state)
        raise ValueError(f"{path} holds {_what(description)}, another architecture than this "
                         f"{type(model).__name__}: {len(extra)} of its {len(state)} tensors are not in the model "
                         f"(first: {extra[:2]}) and {len(lacking)} of the model's are not in the file. {build}; or "
                         "load the layers that fit with state_dicts.load_matching_state_dict.")
    differ = [k for k in own if own[k].shape != state[k].shape]
    head = differ[0].rpartition(".")[0] if differ else ""
    one_linear = differ and isinstance(model.get_submodule(head), nn.Linear)
    if one_linear and all(k.rpartition(".")[0] == head for k in differ):
        saved, has = state[f"{head}.weight"].shape[0], own[f"{head}.weight"].shape[0]
        raise ValueError(f"{path} holds a model with {saved} classes, but the head {head!r} of this model has "
                         f"{has}. Give it the saved head size first: models.replace_head(model, {saved}).")
    if differ:
        raise ValueError(f"{path} has other shapes than the model for {len(differ)} tensors (first: {differ[0]}: "
                         f"{tuple(state[differ[0]].shape)} in the file, {tuple(own[differ[0]].shape)} in the "
                         f"model). {build}.")

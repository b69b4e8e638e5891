"""The fine-tuned ants/bees model as one self-describing file: saved by 06, used by 08 and 10.

A checkpoint from :func:`course_utils.train.save_checkpoint` holds weights only; to use a model later you
also need its architecture, class names and preprocessing. :func:`save` writes all of them into one file
(loadable with ``torch.load(..., weights_only=True)``), and :func:`load` rebuilds the model from it.
:func:`load_or_train` is what later notebooks call: it loads the model 06 saved, or, when that file is
missing (06 not run yet), trains a head on frozen features in a few seconds and says which happened.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from course_utils.models import DEFAULT_BACKBONE, Preprocessing

FORMAT_VERSION = 1


@dataclass
class FineTuned:
    """A rebuilt fine-tuned classifier and everything needed to use it.

    Attributes:
        model: The classifier, in eval mode on the CPU.
        preprocessing: Resize, crop and normalisation its evaluation images need.
        classes: Class names in label order.
        info: What the saver recorded (strategy, validation accuracy, image size...).
        source: One sentence saying where the model came from (loaded from a file, or trained just now).
    """

    model: nn.Module
    preprocessing: Preprocessing
    classes: list[str]
    info: dict
    source: str


def default_path() -> Path:
    """Where 06 saves its chosen model: ``runs_root()/finetuned/hymenoptera_model.pt``.

    Used in: 06_fine_tuning.ipynb, 08_attribution_with_captum.ipynb, 10_deployment_and_scaling.ipynb
    """
    from course_utils.data import runs_root

    return runs_root() / "finetuned" / "hymenoptera_model.pt"


def save(
    model: nn.Module, path: str | Path | None = None, *, backbone: str, classes: list[str],
    preprocessing: Preprocessing, **info,
) -> Path:
    """Save a fine-tuned classifier with its backbone name, classes and preprocessing (atomically).

    Args:
        model: A backbone from ``load_backbone(backbone)`` whose head was replaced by a ``num_classes`` Linear.
        path: Target file; default :func:`default_path`.
        backbone: The name given to ``load_backbone``.
        classes: Class names in label order (as many as the head has outputs).
        preprocessing: What evaluation images go through (it may differ from the backbone's own, e.g. a
            smaller crop when the model was fine-tuned at a lower resolution).
        **info: Plain values to keep with it (strategy name, validation accuracy, ...).

    Returns:
        The path written.

    Raises:
        ValueError: The head's output size differs from ``len(classes)``, or ``info`` holds values that are
            not plain numbers, strings, booleans or lists/dicts of them.

    Used in: 06_fine_tuning.ipynb, 10_deployment_and_scaling.ipynb
    """
    from course_utils.models import get_head
    from course_utils.train import atomic_save

    head_name, head = get_head(model)
    if head.out_features != len(classes):
        raise ValueError(f"The head {head_name!r} has {head.out_features} outputs but {len(classes)} classes were "
                         f"given ({classes}). Pass the training set's classes, in label order.")
    _check_plain(info)
    payload = {
        "format": FORMAT_VERSION, "backbone": backbone, "classes": list(classes),
        "preprocessing": dataclasses.asdict(preprocessing), "info": dict(info),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    return atomic_save(payload, default_path() if path is None else path)


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


def load(path: str | Path | None = None) -> FineTuned:
    """Rebuild a classifier saved by :func:`save` (no pretrained weights are downloaded).

    Raises:
        FileNotFoundError: No file at ``path``; the message says how to make one.
        ValueError: The file was not written by :func:`save`, or it is empty or truncated.

    Used in: 06_fine_tuning.ipynb, 06_fine_tuning_far_domain.ipynb; 08_attribution_with_captum.ipynb,
        10_deployment_and_scaling.ipynb (through load_or_train)
    """
    from course_utils.models import load_backbone, replace_head

    path = default_path() if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No fine-tuned model at {path}. Run notebook 06 (it saves its chosen model "
                                "there), or call finetuned.load_or_train() to train one in seconds.")
    from course_utils.checkpoints import read_torch_file

    payload = read_torch_file(path)  # an empty or truncated file: an error naming it
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a model saved by course_utils.finetuned.save (format "
                         f"{FORMAT_VERSION}); a plain state dict loads with train.load_checkpoint instead.")
    model, _ = load_backbone(payload["backbone"], pretrained=False)
    replace_head(model, len(payload["classes"]))
    model.load_state_dict(payload["state_dict"])
    pre = payload["preprocessing"]
    preprocessing = Preprocessing(**{**pre, "mean": tuple(pre["mean"]), "std": tuple(pre["std"])})
    return FineTuned(model.eval(), preprocessing, list(payload["classes"]), dict(payload["info"]),
                     source=f"loaded from {path}")


def load_or_train(path: str | Path | None = None, *, progress: bool = False) -> FineTuned:
    """The model 06 saved, or (file missing) a head trained on frozen features just now.

    The fallback is the quickest honest fine-tune: EfficientNet-Lite0 features of every image (read
    from the same cache as notebook 05 when it ran), a linear head trained for 30 epochs on them
    (``features.train_head``), attached to the backbone. It is not saved, so a later run of 06 is never
    mistaken for it. ``result.source`` says which of the two happened.

    Used in: 08_attribution_with_captum.ipynb, 10_deployment_and_scaling.ipynb
    """
    path = default_path() if path is None else Path(path)
    if path.is_file():
        return load(path)
    start = time.perf_counter()
    result = _train_head_only(progress=progress)
    result.source = (f"trained just now in {time.perf_counter() - start:.0f} s (head only, on frozen features) "
                     f"because {path} does not exist yet; run notebook 06 to save its chosen model there")
    return result


def _train_head_only(*, progress: bool) -> FineTuned:
    from course_utils import data, download, features, models

    model, pre = models.load_backbone(DEFAULT_BACKBONE)
    splits = data.find_splits(download.hymenoptera())
    transform = data.build_transforms(pre)["val"]
    cache = {"cache_dir": data.runs_root() / "features", "cache_key": f"{DEFAULT_BACKBONE} {pre} evaluation-transform"}
    extracted = {}
    for split in ("train", "val"):
        images = data.CachedImages(splits[split], size=pre.resize, transform=transform)
        extracted[split] = features.extract_features(model, images, batch_size=32, progress=progress, **cache)
    classes = list(splits["train"].classes)
    head, history = features.train_head(*extracted["train"], *extracted["val"], num_classes=len(classes),
                                        epochs=30, lr=1e-3, seed=0)
    new_head = models.replace_head(model, len(classes))
    new_head.load_state_dict(head.state_dict())
    info = {"strategy": "head only on frozen features (fallback)", "val_acc": history[-1]["val_acc"],
            "image_size": pre.crop}
    return FineTuned(model.eval(), pre, classes, info, source="")

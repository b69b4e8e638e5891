"""The model notebook 06 chooses: where it is saved, and a stand-in when it is not there yet.

06 saves its chosen ants/bees model with ``checkpoints.save`` at :func:`default_path`; 08 and 10 call
:func:`load_or_train`, which rebuilds it from that file (``checkpoints.load``) or, when the file is missing
(06 not run yet), trains a head on frozen features in a few seconds and says which happened.
"""
from __future__ import annotations

import time
from pathlib import Path

from course_utils.models import DEFAULT_BACKBONE, checkpoints


def default_path() -> Path:
    """Where 06 saves its chosen model: ``runs_root()/finetuned/hymenoptera_model.pt``.

    Used in: 06_fine_tuning.ipynb, 06_fine_tuning_far_domain.ipynb; 08_attribution_with_captum.ipynb,
        10_deployment_and_scaling.ipynb (through load_or_train)
    """
    from course_utils.data import runs_root

    return runs_root() / "finetuned" / "hymenoptera_model.pt"


def load_or_train(path: str | Path | None = None, *, progress: bool = False) -> checkpoints.Classifier:
    """The model 06 saved, or (file missing) a head trained on frozen features just now.

    The fallback is the quickest honest fine-tune: EfficientNet-Lite0 features of every image (read
    from the same cache as notebook 05 when it ran), a linear head trained for 30 epochs on them
    (``features.train_head``), attached to the backbone. It is not saved, so a later run of 06 is never
    mistaken for it. ``result.source`` says which of the two happened.

    Used in: 08_attribution_with_captum.ipynb, 10_deployment_and_scaling.ipynb
    """
    path = default_path() if path is None else Path(path)
    if path.is_file():
        return checkpoints.load(path)
    start = time.perf_counter()
    result = _train_head_only(progress=progress)
    result.source = (f"trained just now in {time.perf_counter() - start:.0f} s (head only, on frozen features) "
                     f"because {path} does not exist yet; run notebook 06 to save its chosen model there")
    return result


def _train_head_only(*, progress: bool) -> checkpoints.Classifier:
    from course_utils import data, models
    from course_utils.data import download, folders
    from course_utils.transfer import features

    model, pre = models.load_backbone(DEFAULT_BACKBONE)
    splits = folders.find_splits(download.hymenoptera())
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
    return checkpoints.Classifier(model=model.eval(), backbone=DEFAULT_BACKBONE, classes=classes, preprocessing=pre,
                                  info=info)

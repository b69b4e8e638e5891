"""Honest numbers: every accuracy with a bootstrap interval, next to the baselines it must beat.

With 153 validation images one image is worth 0.65 percentage points, so two models a few images
apart are not "better" and "worse". :func:`mean_interval` is the course's one bootstrap: it resamples
per-image values (scipy's ``bootstrap``, percentile method) to show how much their mean could move with
another draw of images. :func:`accuracy_interval` applies it to per-image correctness and
:func:`difference_interval` to the per-image gap between two models evaluated on the same images (a paired
bootstrap, much tighter than comparing two separate intervals). Both also take per-image averages over
seeds (the share of seeds that got each image right), which pools several training runs into one test.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from course_utils.arguments import require_int, require_number

DEFAULT_RESAMPLES = 2000  # about 10 ms for 153 images; the interval's ends move by < 0.5 points between seeds


@dataclass(frozen=True)
class Interval:
    """A measured value with the ends of its bootstrap confidence interval.

    Attributes:
        value: The estimate on the data at hand (e.g. the accuracy).
        low, high: Ends of the interval.
        level: Its confidence level (0.95 is a 95% interval).
        n: Number of items (images) it was computed from.
    """

    value: float
    low: float
    high: float
    level: float
    n: int

    def __str__(self) -> str:
        return f"{self.value:.1%} [{self.low:.1%}, {self.high:.1%}]"

    def excludes(self, value: float) -> bool:
        """True when ``value`` lies outside the interval (e.g. 0 for a difference, a baseline for an accuracy)."""
        return not self.low <= value <= self.high


def _per_item(values, name: str, *, low: float, high: float, fix: str) -> np.ndarray:
    """``values`` as a 1-D float array, checked to lie in [low, high]."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence with one entry per image, got shape "
                         f"{array.shape}. {fix}")
    if array.dtype != bool and not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must hold numbers or True/False per image, got dtype {array.dtype}. {fix}")
    array = array.astype(float)
    bad = array[~((array >= low) & (array <= high))]  # NaN fails both comparisons
    if bad.size:
        raise ValueError(f"{name} must lie between {low:g} and {high:g} per image, got values such as "
                         f"{sorted(set(bad.tolist()))[:5]}. {fix}")
    return array


def _check_level(level: float, n_resamples: int) -> None:
    require_number("level", level, above=0, below=1, example=0.95, fix="It is the interval's confidence level.")
    require_int("n_resamples", n_resamples, minimum=100, example=DEFAULT_RESAMPLES,
                fix="Fewer bootstrap resamples give unstable interval ends.")


def mean_interval(
    values, *, level: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> Interval:
    """Mean of per-image values and its percentile-bootstrap interval, resampling the images.

    Args:
        values: One number per image in [-1, 1]: 0/1 correctness, the share of seeds that got the image
            right, or the difference of two such values (tensor, array or list).
        level: Confidence level of the interval.
        n_resamples: Bootstrap resamples.
        seed: Seed of the resampling, so the printed interval repeats.

    Returns:
        An :class:`Interval`; ``str()`` gives ``"91.5% [87.0%, 95.4%]"``.

    Raises:
        ValueError: ``values`` is empty, not 1-D, or outside [-1, 1]; bad ``level`` or ``n_resamples``.

    Used in: every notebook that prints an accuracy interval (through accuracy_interval and difference_interval)
    """
    from scipy.stats import bootstrap

    array = _per_item(values, "values", low=-1.0, high=1.0,
                      fix="Pass one share per image, e.g. (predictions == labels) or its average over seeds.")
    _check_level(level, n_resamples)
    if array.min() == array.max():  # every resample has the same mean
        return Interval(float(array[0]), float(array[0]), float(array[0]), level, array.size)
    result = bootstrap((array,), np.mean, n_resamples=n_resamples, confidence_level=level, method="percentile",
                       vectorized=True, rng=np.random.default_rng(seed))
    ci = result.confidence_interval
    return Interval(float(array.mean()), float(ci.low), float(ci.high), level, array.size)


_CORRECT_FIX = ("Pass (predictions == labels) for the whole validation set, or its average over seeds "
                "(torch.stack(per_seed).float().mean(0)).")


def accuracy_interval(
    correct, *, level: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> Interval:
    """Accuracy and its percentile-bootstrap interval over the evaluated images (:func:`mean_interval`).

    Args:
        correct: One entry per image: True where the prediction was right, or the share of seeds that got
            the image right (a float in [0, 1]); tensor, array or list.
        level, n_resamples, seed: As in :func:`mean_interval`.

    Returns:
        An :class:`Interval`; ``str()`` gives ``"91.5% [87.0%, 95.4%]"``.

    Raises:
        ValueError: ``correct`` is empty, not 1-D, or outside [0, 1]; bad ``level`` or ``n_resamples``.

    Used in: 03_out_of_the_box_inference.ipynb, 05_feature_extraction.ipynb, 09_when_to_transfer.ipynb,
        11_your_own_images.ipynb
    """
    flags = _per_item(correct, "correct", low=0.0, high=1.0, fix=_CORRECT_FIX)
    return mean_interval(flags, level=level, n_resamples=n_resamples, seed=seed)


def difference_interval(
    correct_a, correct_b, *, level: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> Interval:
    """Accuracy of A minus accuracy of B on the same images, with a paired bootstrap interval.

    Resampling images (not the two models separately) keeps what the two models share: an image that
    both get wrong does not widen the interval. If the interval contains 0, this validation set cannot
    tell the two apart. Pass per-image averages over seeds to pool several training runs of each side.

    Args:
        correct_a, correct_b: Per-image correctness (True/False, or shares of seeds in [0, 1]) of the two
            models, in the same image order.
        level, n_resamples, seed: As in :func:`mean_interval`.

    Returns:
        An :class:`Interval` of the difference (positive: A is more accurate).

    Raises:
        ValueError: The two do not have one entry per image each, in equal numbers, or lie outside [0, 1].

    Used in: 02_data_augmentation.ipynb, 03_out_of_the_box_inference.ipynb, 05_feature_extraction.ipynb,
        06_fine_tuning.ipynb, 06_fine_tuning_far_domain.ipynb, 09_when_to_transfer.ipynb,
        10_deployment_and_scaling.ipynb, 11_your_own_images.ipynb
    """
    a = _per_item(correct_a, "correct_a", low=0.0, high=1.0, fix=_CORRECT_FIX)
    b = _per_item(correct_b, "correct_b", low=0.0, high=1.0, fix=_CORRECT_FIX)
    if a.size != b.size:
        raise ValueError(f"correct_a has {a.size} entries but correct_b has {b.size}; evaluate both models "
                         "on the same images, in the same order.")
    return mean_interval(a - b, level=level, n_resamples=n_resamples, seed=seed)


def share_of_seeds(right_by_seed) -> torch.Tensor:
    """Per image, the share of the runs (seeds) that got it right: what ``difference_interval`` pools over.

    Args:
        right_by_seed: A dict seed -> per-image True/False (or a list of them), every run on the same images
            in the same order.

    Raises:
        ValueError: No runs, or runs that do not cover the same number of images.

    Used in: 06_fine_tuning_far_domain.ipynb; 09_when_to_transfer.ipynb (through verdicts.difference)
    """
    runs = list(right_by_seed.values()) if isinstance(right_by_seed, dict) else list(right_by_seed)
    lengths = sorted({len(run) for run in runs})
    if len(lengths) != 1:
        raise ValueError(f"right_by_seed must hold at least one run, each with one entry per image in the same "
                         f"order; got {len(runs)} runs of lengths {lengths}. Pass (predictions == labels) of "
                         "every seed on the same images.")
    return torch.stack([torch.as_tensor(run) for run in runs]).float().mean(dim=0)


def majority_baseline(labels: Sequence[int] | torch.Tensor) -> float:
    """Accuracy of always answering the most frequent class of ``labels``.

    Computed on the evaluated labels themselves, it is the best any constant answer can score there: a
    model must beat it before it has learned anything (83 bees of 153 validation images: 54.2%).

    Raises:
        ValueError: ``labels`` is empty.

    Used in: 02_data_augmentation.ipynb, 03_out_of_the_box_inference.ipynb, 05_feature_extraction.ipynb,
        06_fine_tuning.ipynb, 08_attribution_with_captum.ipynb, 09_when_to_transfer.ipynb,
        10_deployment_and_scaling.ipynb, 06_fine_tuning_far_domain.ipynb
    """
    values = labels.tolist() if isinstance(labels, torch.Tensor) else list(labels)
    if not values:
        raise ValueError("labels is empty: pass the labels of the evaluated images, e.g. val_set.targets.")
    return Counter(values).most_common(1)[0][1] / len(values)


def chance_level(num_classes: int) -> float:
    """Accuracy of guessing uniformly at random among ``num_classes`` classes.

    Raises:
        ValueError: ``num_classes`` is not an integer >= 2.

    Used in: 09_when_to_transfer.ipynb
    """
    require_int("num_classes", num_classes, minimum=2, fix="Pass num_classes=len(dataset.classes).")
    return 1 / num_classes

"""course_utils.stats: bootstrap intervals and the baselines every comparison prints."""
import numpy as np
import pytest
import torch

from course_utils import stats


def _flags(right: int, total: int) -> torch.Tensor:
    return torch.arange(total) < right


def test_accuracy_interval_brackets_the_accuracy_and_matches_a_numpy_bootstrap():
    correct = _flags(140, 153)
    interval = stats.accuracy_interval(correct, seed=0)
    assert interval.value == pytest.approx(140 / 153)
    assert interval.low < interval.value < interval.high and interval.n == 153
    # Reference: resample the images by hand; the percentile ends agree within a fraction of a point.
    rng = np.random.default_rng(1)
    means = correct.numpy()[rng.integers(0, 153, size=(20000, 153))].mean(axis=1)
    assert interval.low == pytest.approx(np.percentile(means, 2.5), abs=0.01)
    assert interval.high == pytest.approx(np.percentile(means, 97.5), abs=0.01)


def test_interval_narrows_with_more_images_and_widens_with_the_level():
    small, large = stats.accuracy_interval(_flags(45, 50)), stats.accuracy_interval(_flags(900, 1000))
    assert large.high - large.low < small.high - small.low
    assert (stats.accuracy_interval(_flags(45, 50), level=0.99).high - stats.accuracy_interval(_flags(45, 50), level=0.99).low
            > small.high - small.low)


def test_degenerate_accuracy_is_its_own_interval():
    assert str(stats.accuracy_interval([True] * 7)) == "100.0% [100.0%, 100.0%]"
    assert stats.accuracy_interval(np.zeros(5, dtype=bool)).high == 0.0


def test_paired_difference_is_tighter_than_separate_intervals():
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(153, generator=generator) < 0.85
    b = a.clone()
    b[:6] = ~b[:6]  # B differs from A on six images only
    diff = stats.difference_interval(a, b)
    assert diff.value == pytest.approx((a.float().mean() - b.float().mean()).item())
    width_a = stats.accuracy_interval(a).high - stats.accuracy_interval(a).low
    assert diff.high - diff.low < width_a
    assert stats.difference_interval(a, a).excludes(0) is False


def test_a_clear_difference_excludes_zero():
    a, b = _flags(150, 153), _flags(80, 153)
    assert stats.difference_interval(a, b).excludes(0)


@pytest.mark.parametrize("bad, match", [
    ([], "non-empty"), ([[True, False]], "1-D"), ([0, 2, 1], "True/False"),
])
def test_bad_correctness_input_is_named(bad, match):
    with pytest.raises(ValueError, match=match):
        stats.accuracy_interval(bad)


def test_difference_needs_the_same_images():
    with pytest.raises(ValueError, match="same images"):
        stats.difference_interval([True, False], [True])


@pytest.mark.parametrize("kwargs", [{"level": 95}, {"level": 1.0}, {"n_resamples": 10}, {"n_resamples": True}])
def test_bad_level_or_resamples(kwargs):
    with pytest.raises(ValueError):
        stats.accuracy_interval([True, False, True], **kwargs)


def test_majority_baseline_and_chance():
    labels = [0] * 70 + [1] * 83
    assert stats.majority_baseline(labels) == pytest.approx(83 / 153)
    assert stats.majority_baseline(torch.tensor([2, 2, 1, 0, 2])) == pytest.approx(0.6)
    assert stats.chance_level(5) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="empty"):
        stats.majority_baseline([])
    with pytest.raises(ValueError, match="num_classes"):
        stats.chance_level(1)

"""course_utils.stats: bootstrap intervals and the baselines every comparison prints."""
import math
import re
from statistics import NormalDist, fmean, pvariance

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


def _binomial_quantile(q: float, k: int, n: int) -> float:
    """Smallest share j/n with P(Binomial(n, k/n) <= j) >= q: where a bootstrap of k right of n converges."""
    p, total = k / n, 0.0
    for j in range(n + 1):
        total += math.comb(n, j) * p**j * (1 - p) ** (n - j)
        if total >= q:
            return j / n
    return 1.0


@pytest.mark.parametrize("right, total", [(40, 50), (3, 5), (130, 153)])
def test_mean_interval_of_flags_matches_the_exact_binomial_bootstrap(right, total):
    # Resampling k right of n images draws Binomial(n, k/n) right: the ends are its quantiles, within a step.
    interval = stats.mean_interval([1.0] * right + [0.0] * (total - right), n_resamples=20000, seed=3)
    assert interval.value == pytest.approx(right / total) and interval.n == total
    assert interval.low == pytest.approx(_binomial_quantile(0.025, right, total), abs=1 / total + 1e-9)
    assert interval.high == pytest.approx(_binomial_quantile(0.975, right, total), abs=1 / total + 1e-9)


def test_mean_interval_of_seed_shares_matches_the_normal_approximation():
    # 120 images; the share of three seeds that got each one right.
    shares = [0.0] * 10 + [1 / 3] * 20 + [2 / 3] * 30 + [1.0] * 60
    interval = stats.mean_interval(shares, n_resamples=20000)
    spread = NormalDist().inv_cdf(0.975) * math.sqrt(pvariance(shares) / len(shares))
    assert interval.value == pytest.approx(fmean(shares))
    assert interval.low == pytest.approx(fmean(shares) - spread, abs=0.01)
    assert interval.high == pytest.approx(fmean(shares) + spread, abs=0.01)


def test_accuracy_and_difference_are_the_one_bootstrap():
    a, b = _flags(140, 153), torch.arange(153) % 3 != 0
    assert stats.accuracy_interval(a, seed=4) == stats.mean_interval(a.float(), seed=4)
    assert stats.difference_interval(a, b, seed=4) == stats.mean_interval(a.float() - b.float(), seed=4)


def test_pooled_seed_difference_averages_the_seeds_and_is_no_wider_than_the_widest_seed():
    generator = torch.Generator().manual_seed(1)
    frozen = [torch.rand(200, generator=generator) < 0.8 for _ in range(3)]
    tuned = [torch.rand(200, generator=generator) < 0.87 for _ in range(3)]
    per_seed = [stats.difference_interval(t, f) for t, f in zip(tuned, frozen)]
    pooled = stats.difference_interval(torch.stack(tuned).float().mean(0), torch.stack(frozen).float().mean(0))
    assert pooled.value == pytest.approx(fmean(gap.value for gap in per_seed)) and pooled.n == 200
    assert pooled.high - pooled.low <= max(gap.high - gap.low for gap in per_seed)


def test_share_of_seeds_is_the_per_image_mean_over_runs_of_the_same_images():
    runs = {0: torch.tensor([True, True, False, False]), 4: torch.tensor([True, False, False, True]),
            7: torch.tensor([True, False, False, False])}
    torch.testing.assert_close(stats.share_of_seeds(runs), torch.tensor([1.0, 1 / 3, 0.0, 1 / 3]))
    assert torch.equal(stats.share_of_seeds(list(runs.values())), stats.share_of_seeds(runs))
    with pytest.raises(ValueError, match=r"3 runs of lengths \[3, 4\]"):
        stats.share_of_seeds([torch.ones(4, dtype=torch.bool), torch.ones(3, dtype=torch.bool), torch.ones(4)])
    with pytest.raises(ValueError, match="0 runs"):
        stats.share_of_seeds({})


@pytest.mark.parametrize("bad, match", [
    ([], "non-empty"), ([[True, False]], "1-D"), ([0, 2, 1], r"between 0 and 1 .* \[2\.0\]"),
    ([0.5, float("nan")], "between 0 and 1"), (["right", "wrong"], "numbers or True/False"),
])
def test_bad_correctness_input_is_named(bad, match):
    with pytest.raises(ValueError, match=match):
        stats.accuracy_interval(bad)


def test_bad_values_name_the_range_and_the_fix():
    with pytest.raises(ValueError, match=r"values must lie between -1 and 1 .*1\.5.*average over seeds"):
        stats.mean_interval([0.5, 1.5, -0.2])
    with pytest.raises(ValueError, match="correct_b must lie between 0 and 1"):
        stats.difference_interval([1, 0, 1], [0.5, -0.5, 1])


def test_difference_needs_the_same_images():
    with pytest.raises(ValueError, match="same images"):
        stats.difference_interval([True, False], [True])


@pytest.mark.parametrize("kwargs, message", [
    ({"level": 95}, "level must be a number between 0 and 1 (exclusive) such as 0.95, got 95. It is the"),
    ({"level": 1.0}, "level must be a number between 0 and 1 (exclusive) such as 0.95, got 1.0."),
    ({"n_resamples": 10}, f"n_resamples must be an integer of at least 100 such as {stats.DEFAULT_RESAMPLES}, got 10"),
    ({"n_resamples": True}, "n_resamples must be an integer of at least 100 such as"),
])
def test_bad_level_or_resamples(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        stats.accuracy_interval([True, False, True], **kwargs)


def test_majority_baseline_and_chance():
    labels = [0] * 70 + [1] * 83
    assert stats.majority_baseline(labels) == pytest.approx(83 / 153)
    assert stats.majority_baseline(torch.tensor([2, 2, 1, 0, 2])) == pytest.approx(0.6)
    assert stats.chance_level(5) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="empty"):
        stats.majority_baseline([])
    with pytest.raises(ValueError, match=r"num_classes must be an integer of at least 2, got 1\. Pass num_classes="):
        stats.chance_level(1)

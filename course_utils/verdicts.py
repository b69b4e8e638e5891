"""Reading the grid of :mod:`scenarios`: seed-averaged intervals, paired differences, verdicts, the table, figures.

Every cell of the grid records which validation images each seed got right. An accuracy is the mean over
images of the share of seeds that got each image right, with a percentile bootstrap over the images (as
:func:`stats.accuracy_interval`, which it equals for one seed); a difference between two strategies pairs
them image by image (as :func:`stats.difference_interval`). A rule of thumb *holds* where the interval of
its difference lies above zero.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from course_utils.stats import Interval


def _bootstrap_mean(values: np.ndarray, *, level: float, seed: int, n_resamples: int = 2000) -> Interval:
    from scipy.stats import bootstrap

    if values.min() == values.max():
        return Interval(float(values[0]), float(values[0]), float(values[0]), level, values.size)
    result = bootstrap((values,), np.mean, n_resamples=n_resamples, confidence_level=level, method="percentile",
                       vectorized=True, rng=np.random.default_rng(seed))
    ci = result.confidence_interval
    return Interval(float(values.mean()), float(ci.low), float(ci.high), level, values.size)


def _per_image(rows: Sequence[dict], domain: str, strategy: str, per_class: int | None) -> np.ndarray:
    """Share of seeds that got each validation image right, for one cell of the grid."""
    chosen = [r["correct"] for r in rows
              if (r["domain"], r["strategy"], r["per_class"]) == (domain, strategy, per_class)]
    if not chosen:
        raise ValueError(f"No rows for {domain!r}, {strategy!r}, per_class={per_class!r}: run that cell first.")
    return torch.stack(chosen).float().mean(0).numpy()


def mean_interval(rows: Sequence[dict], *, domain: str, strategy: str, per_class: int | None,
                  level: float = 0.95, seed: int = 0) -> Interval:
    """Accuracy of one cell, averaged over its seeds, with a bootstrap interval over the validation images.

    Each validation image counts with the share of seeds that classified it correctly; the images are
    resampled (as in :func:`stats.accuracy_interval`, which this equals for a single seed). The spread
    between seeds (different training subsets) is not in this interval: compare the seeds' own accuracies.

    Used in: 09_when_to_transfer.ipynb
    """
    return _bootstrap_mean(_per_image(rows, domain, strategy, per_class), level=level, seed=seed)


def difference(rows: Sequence[dict], *, domain: str, better: str, worse: str, per_class: int | None,
               level: float = 0.95, seed: int = 0) -> Interval:
    """Accuracy of ``better`` minus ``worse`` in one domain and size, paired over the validation images.

    Used in: 09_when_to_transfer.ipynb
    """
    gap = _per_image(rows, domain, better, per_class) - _per_image(rows, domain, worse, per_class)
    return _bootstrap_mean(gap, level=level, seed=seed)


def verdict(gap: Interval) -> str:
    """``"holds"`` when the interval of a difference lies above 0, ``"reversed"`` below, else ``"undecided"``.

    Used in: 09_when_to_transfer.ipynb
    """
    return "holds" if gap.low > 0 else "reversed" if gap.high < 0 else "undecided"


def summarise(rows: Sequence[dict], *, level: float = 0.95) -> list[dict]:
    """One entry per domain, strategy and size of ``rows``, in the order they first appear.

    Returns:
        Dicts with ``domain``, ``strategy``, ``per_class``, ``n_train`` (of the first seed), ``accuracy``
        (:func:`mean_interval`), ``seed_accuracies`` (one per seed) and ``seconds`` (all seeds together).

    Used in: 09_when_to_transfer.ipynb, benchmarks/transfer_scenarios.py
    """
    cells = dict.fromkeys((r["domain"], r["strategy"], r["per_class"]) for r in rows)
    summary = []
    for domain, strategy, per_class in cells:
        mine = [r for r in rows if (r["domain"], r["strategy"], r["per_class"]) == (domain, strategy, per_class)]
        summary.append({
            "domain": domain, "strategy": strategy, "per_class": per_class, "n_train": mine[0]["n_train"],
            "accuracy": mean_interval(rows, domain=domain, strategy=strategy, per_class=per_class, level=level),
            "seed_accuracies": [r["correct"].float().mean().item() for r in mine],
            "seconds": sum(r["seconds"] for r in mine),
        })
    return summary


def markdown_table(summary: Sequence[dict], *, intervals: bool = True) -> str:
    """The summary as a Markdown table: one row per domain and strategy, one column per training-set size.

    Each cell reads ``accuracy [interval]`` (seed-averaged; only the accuracy with ``intervals=False``)
    and, with several seeds, the range of the seeds' own accuracies below it.

    Used in: 09_when_to_transfer.ipynb, benchmarks/transfer_scenarios.py
    """
    sizes = list(dict.fromkeys(s["per_class"] for s in summary))
    label = {n: "all" if n is None else str(n) for n in sizes}
    lines = ["| domain | strategy | " + " | ".join(f"{label[n]} per class" for n in sizes) + " |",
             "| --- | --- |" + " --- |" * len(sizes)]
    for domain, strategy in dict.fromkeys((s["domain"], s["strategy"]) for s in summary):
        cells = {s["per_class"]: s for s in summary if (s["domain"], s["strategy"]) == (domain, strategy)}
        texts = []
        for n in sizes:
            cell = cells.get(n)
            if cell is None:
                texts.append("not run")
                continue
            seeds = cell["seed_accuracies"]
            spread = f"<br>seeds {min(seeds):.1%}-{max(seeds):.1%}" if len(seeds) > 1 else ""
            texts.append(f"{cell['accuracy'] if intervals else format(cell['accuracy'].value, '.1%')}{spread}")
        lines.append(f"| {domain} | {strategy} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def _interval_bars(ax, xs, intervals, **style):
    """Points at each interval's value with error bars to its ends."""
    values = [i.value for i in intervals]
    errors = [[i.value - i.low for i in intervals], [i.high - i.value for i in intervals]]
    return ax.errorbar(xs, values, yerr=errors, capsize=3, marker="o", **style)


def plot_scenarios(summary: Sequence[dict], *, baselines: dict | None = None, axes=None):
    """Accuracy against training images per class: one panel per domain, one line per strategy.

    Args:
        summary: From :func:`summarise` (``accuracy`` intervals drawn as error bars).
        baselines: ``{domain: {label: accuracy}}`` drawn as horizontal dashed lines (majority, chance).
        axes: One axes per domain; a new figure if None.

    Returns:
        The figure.

    Used in: 09_when_to_transfer.ipynb
    """
    import matplotlib.pyplot as plt

    domains = list(dict.fromkeys(s["domain"] for s in summary))
    sizes = list(dict.fromkeys(s["per_class"] for s in summary))
    order = sorted(sizes, key=lambda n: math.inf if n is None else n)
    if axes is None:
        _, axes = plt.subplots(1, len(domains), figsize=(5.5 * len(domains), 4), sharey=True, squeeze=False)
        axes = axes[0]
    strategies = list(dict.fromkeys(s["strategy"] for s in summary))  # one colour per strategy in every panel
    for ax, domain in zip(axes, domains):
        for k, strategy in enumerate(strategies):
            cells = sorted((s for s in summary if (s["domain"], s["strategy"]) == (domain, strategy)),
                           key=lambda s: order.index(s["per_class"]))
            if not cells:
                continue
            shift = (k - (len(strategies) - 1) / 2) * 0.06  # side by side, so that the bars do not hide each other
            _interval_bars(ax, [order.index(s["per_class"]) + shift for s in cells], [s["accuracy"] for s in cells],
                           label=strategy, color=f"C{k}")
        for j, (label, value) in enumerate((baselines or {}).get(domain, {}).items()):
            ax.axhline(value, color="grey", linestyle=("--", ":")[j % 2], linewidth=1, label=label)
        ax.set_xticks(range(len(order)), ["all" if n is None else str(n) for n in order])
        ax.set(title=domain, xlabel="training images per class", ylabel="validation accuracy")
        ax.legend(fontsize=7, loc="lower right")
    fig = axes[0].figure
    fig.suptitle("Measured transfer scenarios (95% intervals over validation images)")
    fig.tight_layout()
    return fig


def plot_depth_probe(results: dict, *, ax=None):
    """Linear-probe accuracy at each stage of the backbone, one line per domain.

    Args:
        results: ``{domain: {stage: Interval}}`` with the stages in network order.
        ax: Axes to draw into; a new figure if None.

    Returns:
        The axes.

    Used in: 09_when_to_transfer.ipynb
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.8))
    for k, (domain, by_stage) in enumerate(results.items()):
        _interval_bars(ax, range(len(by_stage)), list(by_stage.values()), label=domain, color=f"C{k}")
        stages = list(by_stage)
    ax.set_xticks(range(len(stages)), stages, rotation=30, ha="right")
    ax.set(title="Which depth transfers? A linear head on each stage's pooled output",
           xlabel="stage of the backbone (input side left)", ylabel="validation accuracy")
    ax.legend(fontsize=8)
    return ax


def plot_accuracy_vs_speed(rows: Sequence[dict], *, ax=None):
    """Accuracy (with its interval) against milliseconds per image, one labelled point per backbone.

    Args:
        rows: Dicts with ``name``, ``accuracy`` (an Interval), ``ms_per_image`` and ``parameters``.
        ax: Axes to draw into; a new figure if None.

    Returns:
        The axes.

    Used in: 09_when_to_transfer.ipynb
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for k, row in enumerate(rows):
        _interval_bars(ax, [row["ms_per_image"]], [row["accuracy"]], color=f"C{k}",
                       label=f"{row['name']} ({row['parameters'] / 1e6:.1f} M parameters)")
    ax.set(title="Choice of backbone: accuracy against speed on this CPU", xlabel="milliseconds per image",
           ylabel="validation accuracy")
    ax.legend(fontsize=8, loc="lower right")
    return ax

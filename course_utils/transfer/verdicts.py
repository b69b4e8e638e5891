"""Reading the grid of :mod:`scenarios`: seed-averaged intervals, paired differences, verdicts, the table, figures.

Every :class:`scenarios.CellResult` records which validation images one seed got right. The accuracy of a
cell is the mean over images of the share of its seeds that got each image right, with the course's bootstrap
over the images (:func:`stats.accuracy_interval`, which takes such shares); a difference between two strategies
pairs them image by image (:func:`stats.difference_interval`). A rule of thumb *holds* where the interval of its
difference lies above zero.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from course_utils import stats
from course_utils.stats import Interval


@dataclass(frozen=True)
class CellSummary:
    """One domain, strategy and training-set size of the grid, its seeds together (from :func:`summarise`).

    Attributes:
        domain, strategy, per_class: Which cell (``per_class=None``: all training images).
        n_train: Training images (of the first seed).
        accuracy: Seed-averaged accuracy with its interval (:func:`cell_accuracy`).
        seed_accuracies: Each seed's own accuracy.
        seconds: All seeds together.

    Used in: 09_when_to_transfer.ipynb (returned by summarise), benchmarks/transfer_scenarios.py
    """

    domain: str
    strategy: str
    per_class: int | None
    n_train: int
    accuracy: Interval
    seed_accuracies: tuple[float, ...]
    seconds: float


@dataclass(frozen=True, eq=False)
class BackboneScore:
    """One backbone measured for :func:`plot_accuracy_vs_speed`.

    Attributes:
        name: As for :func:`models.load_backbone`.
        size: Input side in pixels.
        correct: ``(N_val,)`` bool tensor, True where the validation image was classified correctly.
        accuracy: Its interval (:func:`stats.accuracy_interval`).
        parameters: Number of parameters.
        ms_per_image: Milliseconds per image on the device it was timed on.

    Used in: 09_when_to_transfer.ipynb
    """

    name: str
    size: int
    correct: torch.Tensor = field(repr=False)
    accuracy: Interval
    parameters: int
    ms_per_image: float


def _cell(results: Sequence, domain: str, strategy: str, per_class: int | None) -> list:
    """The results of one cell of the grid (one per seed), in their order."""
    chosen = [r for r in results if (r.domain, r.strategy, r.per_class) == (domain, strategy, per_class)]
    if not chosen:
        raise ValueError(f"No results for {domain!r}, {strategy!r}, per_class={per_class!r}: run that cell first.")
    return chosen


def _per_image(results: Sequence, domain: str, strategy: str, per_class: int | None) -> torch.Tensor:
    """Share of seeds that got each validation image right, for one cell of the grid."""
    return stats.share_of_seeds([r.correct for r in _cell(results, domain, strategy, per_class)])


def cell_accuracy(results: Sequence, *, domain: str, strategy: str, per_class: int | None,
                  level: float = 0.95, seed: int = 0) -> Interval:
    """Accuracy of one cell, averaged over its seeds, with a bootstrap interval over the validation images.

    ``results`` are :class:`scenarios.CellResult`. Each validation image counts with the share of seeds that
    classified it correctly (:func:`stats.accuracy_interval`; for a single seed, its plain accuracy). The
    spread between seeds (different training subsets) is not in this interval: compare the seeds' own accuracies.

    Used in: 09_when_to_transfer.ipynb (through summarise)
    """
    return stats.accuracy_interval(_per_image(results, domain, strategy, per_class), level=level, seed=seed)


def difference(results: Sequence, *, domain: str, better: str, worse: str, per_class: int | None,
               level: float = 0.95, seed: int = 0) -> Interval:
    """Accuracy of ``better`` minus ``worse`` in one domain and size, paired over the validation images.

    Used in: 09_when_to_transfer.ipynb, benchmarks/transfer_scenarios.py
    """
    return stats.difference_interval(_per_image(results, domain, better, per_class),
                                     _per_image(results, domain, worse, per_class), level=level, seed=seed)


def verdict(gap: Interval) -> str:
    """``"holds"`` when the interval of a difference lies above 0, ``"reversed"`` below, else ``"undecided"``.

    Used in: 09_when_to_transfer.ipynb
    """
    return "holds" if gap.low > 0 else "reversed" if gap.high < 0 else "undecided"


def summarise(results: Sequence, *, level: float = 0.95) -> list[CellSummary]:
    """One :class:`CellSummary` per domain, strategy and size of ``results``, in the order they first appear.

    Used in: 09_when_to_transfer.ipynb, benchmarks/transfer_scenarios.py
    """
    cells = dict.fromkeys((r.domain, r.strategy, r.per_class) for r in results)
    summary = []
    for domain, strategy, per_class in cells:
        mine = _cell(results, domain, strategy, per_class)
        accuracy = cell_accuracy(results, domain=domain, strategy=strategy, per_class=per_class, level=level)
        summary.append(CellSummary(domain, strategy, per_class, mine[0].n_train, accuracy,
                                   tuple(r.correct.float().mean().item() for r in mine),
                                   sum(r.seconds for r in mine)))
    return summary


def _table_text(cell: CellSummary | None, *, intervals: bool) -> str:
    """One cell of :func:`markdown_table`: ``accuracy [interval]`` and the seeds' range below it."""
    if cell is None:
        return "not run"
    seeds = cell.seed_accuracies
    spread = f"<br>seeds {min(seeds):.1%}-{max(seeds):.1%}" if len(seeds) > 1 else ""
    return f"{cell.accuracy if intervals else format(cell.accuracy.value, '.1%')}{spread}"


def markdown_table(summary: Sequence[CellSummary], *, intervals: bool = True) -> str:
    """The summary as a Markdown table: one row per domain and strategy, one column per training-set size.

    Each cell reads ``accuracy [interval]`` (seed-averaged; only the accuracy with ``intervals=False``)
    and, with several seeds, the range of the seeds' own accuracies below it.

    Used in: 09_when_to_transfer.ipynb, benchmarks/transfer_scenarios.py
    """
    sizes = list(dict.fromkeys(s.per_class for s in summary))
    label = {n: "all" if n is None else str(n) for n in sizes}
    lines = ["| domain | strategy | " + " | ".join(f"{label[n]} per class" for n in sizes) + " |",
             "| --- | --- |" + " --- |" * len(sizes)]
    for domain, strategy in dict.fromkeys((s.domain, s.strategy) for s in summary):
        cells = {s.per_class: s for s in summary if (s.domain, s.strategy) == (domain, strategy)}
        texts = [_table_text(cells.get(n), intervals=intervals) for n in sizes]
        lines.append(f"| {domain} | {strategy} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def _interval_bars(ax, xs, intervals, **style):
    """Points at each interval's value with error bars to its ends."""
    values = [i.value for i in intervals]
    errors = [[i.value - i.low for i in intervals], [i.high - i.value for i in intervals]]
    return ax.errorbar(xs, values, yerr=errors, capsize=3, marker="o", **style)


def _draw_domain(ax, summary: Sequence[CellSummary], domain: str, order: list, baselines: dict) -> None:
    """One panel of :func:`plot_scenarios`: a line per strategy, side by side, and the baselines."""
    strategies = list(dict.fromkeys(s.strategy for s in summary))  # one colour per strategy in every panel
    for k, strategy in enumerate(strategies):
        cells = sorted((s for s in summary if (s.domain, s.strategy) == (domain, strategy)),
                       key=lambda s: order.index(s.per_class))
        if cells:
            shift = (k - (len(strategies) - 1) / 2) * 0.06  # side by side, so that the bars do not hide each other
            _interval_bars(ax, [order.index(s.per_class) + shift for s in cells], [s.accuracy for s in cells],
                           label=strategy, color=f"C{k}")
    for j, (label, value) in enumerate(baselines.get(domain, {}).items()):
        ax.axhline(value, color="grey", linestyle=("--", ":")[j % 2], linewidth=1, label=label)
    ax.set_xticks(range(len(order)), ["all" if n is None else str(n) for n in order])
    ax.set(title=domain, xlabel="training images per class", ylabel="validation accuracy")
    ax.legend(fontsize=7, loc="lower right")


def plot_scenarios(summary: Sequence[CellSummary], *, baselines: dict | None = None, axes=None):
    """Accuracy against training images per class: one panel per domain, one line per strategy.

    Args:
        summary: From :func:`summarise` (``accuracy`` intervals drawn as error bars).
        baselines: ``{domain: {label: accuracy}}`` drawn as horizontal dashed lines (majority, chance).
        axes: One axes per domain, in the order the domains first appear in ``summary``.

    Returns:
        The figure, titled with what the error bars are.

    Used in: 09_when_to_transfer.ipynb
    """
    import numpy as np

    from course_utils.plotting import new_axes

    domains = list(dict.fromkeys(s.domain for s in summary))
    order = sorted(dict.fromkeys(s.per_class for s in summary), key=lambda n: math.inf if n is None else n)
    axes = np.ravel(new_axes(axes, ncols=len(domains), figsize=(5.5 * len(domains), 4), sharey=True, squeeze=False))
    for ax, domain in zip(axes, domains):
        _draw_domain(ax, summary, domain, order, baselines or {})
    fig = axes[0].figure
    fig.suptitle("Measured transfer scenarios (95% intervals over validation images)")
    fig.tight_layout()
    return fig


def plot_depth_probe(results: dict, *, ax=None):
    """Linear-probe accuracy at each stage of the backbone, one line per domain.

    Args:
        results: ``{domain: {stage: Interval}}`` with the stages in network order (the x axis).

    Returns:
        The axes.

    Used in: 09_when_to_transfer.ipynb
    """
    from course_utils.plotting import new_axes

    ax = new_axes(ax, figsize=(8, 3.8))
    for k, (domain, by_stage) in enumerate(results.items()):
        _interval_bars(ax, range(len(by_stage)), list(by_stage.values()), label=domain, color=f"C{k}")
        stages = list(by_stage)
    ax.set_xticks(range(len(stages)), stages, rotation=30, ha="right")
    ax.set(title="Which depth transfers? A linear head on each stage's pooled output",
           xlabel="stage of the backbone (input side left)", ylabel="validation accuracy")
    ax.legend(fontsize=8)
    return ax


def plot_accuracy_vs_speed(scores: Sequence[BackboneScore], *, ax=None):
    """Accuracy (with its interval) against milliseconds per image, one labelled point per backbone.

    Each point's legend entry gives the backbone's parameter count; the error bars are accuracy intervals.

    Args:
        scores: One :class:`BackboneScore` per backbone, measured on the same validation images.

    Returns:
        The axes.

    Used in: 09_when_to_transfer.ipynb
    """
    from course_utils.plotting import new_axes

    ax = new_axes(ax, figsize=(6, 4))
    for k, score in enumerate(scores):
        _interval_bars(ax, [score.ms_per_image], [score.accuracy], color=f"C{k}",
                       label=f"{score.name} ({score.parameters / 1e6:.1f} M parameters)")
    ax.set(title="Choice of backbone: accuracy against speed on this computer", xlabel="milliseconds per image",
           ylabel="validation accuracy")
    ax.legend(fontsize=8, loc="lower right")
    return ax

"""Plots of what happens inside a network: gradient norms, feature maps, filters, trainable parameters.

Images and curves are in :mod:`plotting`, whose docstring says what ``ax``/``axes`` do and what comes back.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from course_utils.data import denormalize
from course_utils.plotting import layout_square_panels, new_axes, panel_axes


def plot_gradient_norms(
    norms: dict[str, float | None], *, label: str | None = None, title: str = "Gradient norm per layer",
    ylabel: str = "gradient L2 norm (log scale)", ax=None,
):
    """Gradient norm per layer: layers on the x axis (input side left), norms on a log y axis.

    Layers whose gradient is ``None`` are drawn as grey crosses along the bottom edge. Call it again
    with the same ``ax`` and another ``label`` to compare runs.

    Args:
        norms: ``{layer: norm or None}``, e.g. from :func:`gradient_norms`.
        label: Legend entry of this series.
        title, ylabel: The axes' title and y label (the x axis names the layers).

    Returns:
        The axes: pass them as ``ax`` with the next run's norms to draw both on one scale.

    Raises:
        ValueError: ``norms`` is empty (no backward pass yet).

    Used in: 07_gradient_flow.ipynb
    """
    if not norms:
        raise ValueError("norms is empty: compute it with gradient_norms(model) after loss.backward().")
    ax = new_axes(ax, figsize=(max(6.0, 0.3 * len(norms)), 3.5))
    names = list(norms)
    xs = range(len(names))
    values = [v if v is not None and v > 0 else float("nan") for v in norms.values()]
    ax.plot(xs, values, marker="o", markersize=3, label=label)
    missing = [i for i, v in enumerate(norms.values()) if v is None]
    drawn = {tuple(line.get_xdata()) for line in ax.lines if line.get_gid() == "grad-none"}
    if missing and tuple(missing) not in drawn:  # the same crosses are drawn (and listed) once
        ax.plot(missing, [0.02] * len(missing), "x", color="grey", transform=ax.get_xaxis_transform(),
                label="grad is None", gid="grad-none")
    ax.set_yscale("log")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_xlabel("layer (input side → head)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if label or missing:
        ax.legend(fontsize=8)
    return ax


def plot_feature_maps(
    activation: torch.Tensor, *, count: int = 16, ncols: int = 8, title: str = "Feature maps", axes=None,
):
    """The first ``count`` channels of one CHW activation, each as a grey image.

    Args:
        activation: ``(C, H, W)`` tensor, e.g. ``capture_activations(...)[name][0]``.
        count: Channels to show (at most C).
        ncols: Panels per row.
        title: Figure title.
        axes: At least ``count`` axes (a new figure if None).

    Returns:
        The figure.

    Raises:
        ValueError: ``activation`` is not 3-dimensional.

    Used in: 07_gradient_flow.ipynb
    """
    if activation.dim() != 3:
        raise ValueError(f"plot_feature_maps expects one (C, H, W) activation, got shape "
                         f"{tuple(activation.shape)}. For a batch, pass activation[0].")
    count = min(count, activation.shape[0])
    flat = panel_axes(count, ncols, axes)
    maps = activation.detach().float().cpu()
    for i, ax in enumerate(flat):
        ax.axis("off")
        if i < count:
            ax.imshow(maps[i].numpy(), cmap="viridis")
            ax.set_title(f"ch {i}", fontsize=7)
    fig = flat[0].figure
    fig.suptitle(f"{title} ({activation.shape[1]}x{activation.shape[2]} px per map)")
    fig.tight_layout()
    return fig


def plot_filters(
    weight: torch.Tensor, *, count: int = 32, ncols: int = 8, titles: Sequence[str] | None = None,
    title: str = "Filters", axes=None,
):
    """Convolution filters as small images: RGB when they have 3 input channels, grey otherwise.

    Each filter is scaled to [0, 1] on its own, so the pattern (not its size) is what you see.

    Args:
        weight: ``(out_channels, in_channels, kH, kW)``, e.g. ``model.conv_stem.weight``.
        count: Filters to show (at most out_channels).
        ncols: Panels per row.
        titles: One short title per shown filter.
        title: Figure title.
        axes: At least ``count`` axes (a new figure if None).

    Returns:
        The figure.

    Raises:
        ValueError: ``weight`` is not 4-dimensional, or ``titles`` has the wrong length.

    Used in: 07_gradient_flow.ipynb
    """
    if weight.dim() != 4:
        raise ValueError(f"plot_filters expects a conv weight (out, in, kH, kW), got shape "
                         f"{tuple(weight.shape)}. Pass module.weight of an nn.Conv2d.")
    count = min(count, weight.shape[0])
    if titles is not None and len(titles) != count:
        raise ValueError(f"Got {len(titles)} titles for {count} filters; pass one title per filter.")
    flat = panel_axes(count, ncols, axes, cell=1.1)
    filters = weight.detach().float().cpu()[:count]
    low = filters.flatten(1).min(1).values.view(-1, 1, 1, 1)
    high = filters.flatten(1).max(1).values.view(-1, 1, 1, 1)
    filters = (filters - low) / (high - low).clamp_min(1e-12)
    for i, ax in enumerate(flat):
        ax.axis("off")
        if i < count:
            image = filters[i].permute(1, 2, 0) if filters.shape[1] == 3 else filters[i].mean(0)
            ax.imshow(image.numpy(), cmap=None if filters.shape[1] == 3 else "gray", interpolation="nearest")
            ax.set_title(titles[i] if titles else f"{i}", fontsize=7)
    fig = flat[0].figure
    fig.suptitle(f"{title} ({weight.shape[2]}x{weight.shape[3]} kernels)")
    fig.tight_layout()
    return fig


def plot_feature_overlay(
    image: torch.Tensor, activation: torch.Tensor, *, mean: Sequence[float], std: Sequence[float],
    channels: Sequence[int], ncols: int = 4, title: str = "Feature maps over the input", axes=None,
):
    """Chosen channels of a low-resolution activation, upsampled and laid over the input image.

    A late block's map of 7 x 7 cells says little on its own; over the image it shows *where* the
    channel responds. Each map is scaled to [0, 1] on its own (compare places, not strengths).

    Args:
        image: ``(3, H, W)`` normalised input the activation was computed from.
        activation: ``(C, h, w)`` activation of one image, e.g. ``capture_activations(...)[name][0]``.
        mean, std: Normalisation of the backbone, to show the image as a photo.
        channels: Channel indices to draw, one panel each (e.g. the most active ones).
        ncols: Panels per row.
        title: Figure title.
        axes: At least ``len(channels)`` axes (a new figure if None).

    Returns:
        The figure.

    Raises:
        ValueError: ``image`` or ``activation`` has the wrong shape, or a channel is out of range.

    Used in: 07_gradient_flow.ipynb
    """
    if image.dim() != 3 or image.shape[0] != 3 or activation.dim() != 3:
        raise ValueError(f"plot_feature_overlay expects a (3, H, W) image and a (C, h, w) activation, got "
                         f"{tuple(image.shape)} and {tuple(activation.shape)}. Pass image and activation[0].")
    bad = [c for c in channels if not 0 <= c < activation.shape[0]]
    if bad or not channels:
        raise ValueError(f"channels must be indices in [0, {activation.shape[0]}), got {list(channels)}.")
    maps = activation.detach().float().cpu()[list(channels)].unsqueeze(1)
    maps = torch.nn.functional.interpolate(maps, size=tuple(image.shape[1:]), mode="bilinear")[:, 0]
    low, high = maps.flatten(1).min(1).values, maps.flatten(1).max(1).values
    maps = (maps - low.view(-1, 1, 1)) / (high - low).clamp_min(1e-12).view(-1, 1, 1)
    photo = denormalize(image.detach().float().cpu(), mean, std).permute(1, 2, 0).numpy()
    flat = panel_axes(len(channels), ncols, axes, cell=2.2)
    for i, ax in enumerate(flat):
        ax.axis("off")
        if i < len(channels):
            ax.imshow(photo)
            ax.imshow(maps[i].numpy(), cmap="inferno", alpha=0.55, vmin=0, vmax=1)
            ax.set_title(f"ch {channels[i]}", fontsize=8)
    fig = flat[0].figure
    fig.suptitle(f"{title} ({activation.shape[1]}x{activation.shape[2]} cells upsampled to "
                 f"{image.shape[1]}x{image.shape[2]} px)")
    layout_square_panels(fig, rows=math.ceil(len(channels) / ncols), cell=2.2, title_lines=1, new=axes is None)
    return fig


def plot_trainable_by_stage(
    counts: dict[str, tuple[int, int]], *, title: str = "Parameters per stage", ax=None,
):
    """Stacked bars per stage: trainable and frozen parameters (in millions).

    The title ends with how many of all parameters train, and each orange bar is labelled with its count.

    Args:
        counts: ``{stage: (trainable, frozen)}`` in the model's order, input side first.
        title: Start of the title, e.g. the freezing strategy.

    Returns:
        The axes.

    Raises:
        ValueError: ``counts`` is empty.

    Used in: 04_model_surgery.ipynb
    """
    if not counts:
        raise ValueError("counts is empty: pass {stage: (trainable, frozen)} for at least one stage.")
    ax = new_axes(ax, figsize=(7, 3.5))
    names = list(counts)
    trainable = [counts[n][0] / 1e6 for n in names]
    frozen = [counts[n][1] / 1e6 for n in names]
    ax.bar(names, frozen, color="lightgrey", label="frozen")
    bars = ax.bar(names, trainable, bottom=frozen, color="tab:orange", label="trainable")
    ax.bar_label(bars, labels=[_short_count(counts[n][0]) for n in names], fontsize=7, padding=2)
    ax.set_ylim(0, 1.15 * max(t + f for t, f in zip(trainable, frozen)))
    ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    ax.set_xlabel("stage (input side → head)")
    ax.set_ylabel("parameters (millions)")
    total, train = sum(sum(c) for c in counts.values()), sum(c[0] for c in counts.values())
    ax.set_title(f"{title}: {train:,} of {total:,} train ({train / total:.1%})", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    return ax


def _short_count(n: int) -> str:
    """'' for 0, else 2.6k or 1.7M: the labels on the trainable bars."""
    return "" if n == 0 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"

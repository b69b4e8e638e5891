"""Plots for images, training curves and learning-rate tests; plots of the network's insides (gradients, feature
maps, filters) are in :mod:`network_plots`.

Every plot function of the package takes ``ax`` (or ``axes`` for several panels): it draws there, or on a new
figure when it is None (:func:`new_axes`), returns the axes (one panel) or the figure (several panels), and
never calls ``plt.show()``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from course_utils.data import denormalize

if TYPE_CHECKING:
    from course_utils.train.tuning import RangeTest


def show_image(
    image: torch.Tensor, *, mean: Sequence[float], std: Sequence[float], title: str | None = None, ax=None
):
    """Draw one normalised CHW image tensor.

    Args:
        image: ``(3, H, W)`` tensor as the model sees it.
        mean: Normalisation mean of the backbone (``preprocessing.mean``).
        std: Normalisation std of the backbone (``preprocessing.std``).
        title: Text above the image.

    Returns:
        The axes, with the image and no ticks (an overlay can be drawn on top).

    Raises:
        ValueError: ``image`` is not a 3-channel CHW tensor.

    Used in: 08_attribution_with_captum.ipynb, 09_when_to_transfer.ipynb,
        10_deployment_and_scaling.ipynb; every image grid (through plot_image_grid); 11_your_own_images.ipynb
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(
            f"show_image expects one (3, H, W) tensor, got shape {tuple(image.shape)}. "
            "For a batch, use plot_image_grid or pass images[0]."
        )
    ax = new_axes(ax, figsize=(3, 3))
    pixels = denormalize(image.detach().float().cpu(), mean, std).permute(1, 2, 0).numpy()
    ax.imshow(pixels)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def plot_image_grid(
    images: torch.Tensor, *, mean: Sequence[float], std: Sequence[float], titles: Sequence[str] | None = None,
    ncols: int = 4, suptitle: str | None = None, axes=None,
):
    """Draw a batch of normalised images in a grid, each with its title (e.g. its class name).

    Args:
        images: ``(N, 3, H, W)`` tensor.
        titles: One string per image.
        ncols: Images per row.
        suptitle: Title of the whole figure.
        axes: At least N axes, in an array of any shape.

    Returns:
        The figure.

    Raises:
        ValueError: ``images`` is not ``(N, 3, H, W)``, ``titles`` is not one per image, or ``axes``
            has fewer axes than there are images.

    Used in: 01_data_loading.ipynb, 02_data_augmentation.ipynb, 03_out_of_the_box_inference.ipynb,
        08_attribution_with_captum.ipynb
    """
    if not isinstance(images, torch.Tensor):
        images = torch.stack(list(images))  # a list of CHW tensors
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"plot_image_grid expects a (N, 3, H, W) batch, got shape {tuple(images.shape)}. "
            "For one image, use show_image or pass image.unsqueeze(0)."
        )
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"Got {len(images)} images but {len(titles)} titles; pass one title per image.")
    flat = panel_axes(len(images), ncols, axes, cell=2.6)
    for i, ax in enumerate(flat):
        if i < len(images):
            show_image(images[i], mean=mean, std=std, title=titles[i] if titles else None, ax=ax)
        else:
            ax.axis("off")
    fig = flat[0].figure
    if suptitle:
        fig.suptitle(suptitle)
    lines = max((str(t).count("\n") + 1 for t in titles), default=0) if titles else 0
    layout_square_panels(fig, rows=math.ceil(len(images) / ncols), cell=2.6, title_lines=lines, new=axes is None)
    return fig


def plot_history(history: Sequence[dict], *, title: str = "Training curves", axes=None):
    """Loss and accuracy per epoch, train and validation, from the history that ``fit`` returns.

    Args:
        history: One dict per epoch with ``train_loss``, ``train_acc`` and, unless ``fit`` ran without a
            validation set, ``val_loss``, ``val_acc``.
        title: Title of the figure.
        axes: Two axes: loss, then accuracy.

    Returns:
        The figure.

    Used in: 05_feature_extraction.ipynb
    """
    from matplotlib.ticker import MaxNLocator

    if not history:
        raise ValueError("history is empty: run fit(...) for at least one epoch first.")
    axes = new_axes(axes, ncols=2, figsize=(10, 3.5))
    epochs = [row["epoch"] for row in history]
    for ax, metric, label in ((axes[0], "loss", "cross-entropy loss"), (axes[1], "acc", "accuracy")):
        for split in ("train", "val") if "val_loss" in history[0] else ("train",):
            ax.plot(epochs, [row[f"{split}_{metric}"] for row in history], marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_ylabel(label)
        ax.set_title(label.capitalize())
        ax.legend()
    fig = axes[0].figure
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def new_axes(ax=None, *, figsize: tuple[float, float], nrows: int = 1, ncols: int = 1, **subplots):
    """``ax`` itself when given, else the axes of a new figure ``figsize`` inches wide and high.

    ``nrows``, ``ncols`` and the other keywords (``squeeze``, ``sharey``, ``gridspec_kw``) go to
    ``plt.subplots``, so a new grid comes back in the shape ``plt.subplots`` gives it.

    Used in: every plot function of plotting, network_plots, attribution, verdicts and audit (no notebook calls it)
    """
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=figsize, **subplots)[1]


def panel_axes(count: int, ncols: int, axes, cell: float = 1.4) -> list:
    """At least ``count`` axes, flattened: the given ``axes``, or a new figure of ``ncols`` columns.

    Used in: every image grid of plotting and network_plots (no notebook calls it)
    """
    import numpy as np

    nrows = math.ceil(count / ncols)
    axes = new_axes(axes, nrows=nrows, ncols=ncols, figsize=(cell * ncols, cell * nrows + 0.6), squeeze=False)
    flat = list(np.asarray(axes).ravel())
    if len(flat) < count:
        raise ValueError(f"Got {len(flat)} axes for {count} panels; pass at least {count} axes or axes=None.")
    return flat


def layout_square_panels(fig, *, rows: int, cell: float, title_lines: int, new: bool) -> None:
    """Lay out a grid of square images so that no title overlaps the row above.

    tight_layout ignores the fixed aspect of images, so in a figure we created we size the rows for the
    images plus their titles and let constrained layout place them; given axes keep tight_layout.

    Used in: every image grid of plotting and network_plots (no notebook calls it)
    """
    if new:
        fig.set_size_inches(fig.get_size_inches()[0], rows * (cell + 0.2 * title_lines) + 0.5)
        fig.set_layout_engine("constrained")
    else:
        fig.tight_layout()


def plot_lr_range(result: RangeTest, *, title: str = "Learning-rate range test", ax=None):
    """Loss against learning rate (log x axis) from :func:`course_utils.train.tuning.lr_range_test`.

    The raw losses are drawn as dots, the smoothed loss as a line, and the two suggested rates
    (lowest smoothed loss / 10, steepest descent) as vertical lines with their values in the legend.

    Returns:
        The axes.

    Raises:
        ValueError: ``result`` has no recorded steps.

    Used in: 09_when_to_transfer.ipynb
    """
    if not result.lr:
        raise ValueError("result has no steps: pass what tuning.lr_range_test(...) returned.")
    ax = new_axes(ax, figsize=(6, 3.5))
    ax.plot(result.lr, result.loss, ".", color="lightgrey", label="loss per batch")
    ax.plot(result.lr, result.smoothed, color="C0", label="smoothed loss")
    ax.axvline(result.min_loss_lr / 10, color="C1", linestyle="--",
               label=f"lowest loss / 10 = {result.min_loss_lr / 10:.1e}")
    ax.axvline(result.steepest_lr, color="C2", linestyle=":", label=f"steepest = {result.steepest_lr:.1e}")
    ax.set_xscale("log")
    # The smoothed curve sets the top (a diverging loss would squash the rest); every loss fits at the bottom.
    low = min(min(result.smoothed), min(result.loss))
    high = max(result.smoothed[0], min(result.smoothed) * 2)
    ax.set_ylim(low - 0.1 * (high - low) - 1e-3, high + 0.3 * (high - low) + 1e-3)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return ax

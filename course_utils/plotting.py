"""Plots for images and training curves. Every function takes ``ax``/``axes`` and never calls ``plt.show()``."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from course_utils.data import denormalize


def show_image(
    image: torch.Tensor, *, mean: Sequence[float], std: Sequence[float], title: str | None = None, ax=None
):
    """Draw one normalised CHW image tensor.

    Args:
        image: ``(3, H, W)`` tensor as the model sees it.
        mean: Normalisation mean of the backbone (``preprocessing.mean``).
        std: Normalisation std of the backbone (``preprocessing.std``).
        title: Text above the image.
        ax: Matplotlib axes to draw into (a new figure if None).

    Returns:
        The axes.

    Raises:
        ValueError: ``image`` is not a 3-channel CHW tensor.

    Used in: 01_data_loading.ipynb
    """
    import matplotlib.pyplot as plt

    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(
            f"show_image expects one (3, H, W) tensor, got shape {tuple(image.shape)}. "
            "For a batch, use plot_image_grid or pass images[0]."
        )
    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
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
        axes: Existing array of at least N axes (a new figure if None).

    Returns:
        The figure.

    Raises:
        ValueError: ``images`` is not ``(N, 3, H, W)``, ``titles`` is not one per image, or ``axes``
            has fewer axes than there are images.

    Used in: 01_data_loading.ipynb, 02_data_augmentation.ipynb, 03_out_of_the_box_inference.ipynb
    """
    import matplotlib.pyplot as plt
    import numpy as np

    if not isinstance(images, torch.Tensor):
        images = torch.stack(list(images))  # a list of CHW tensors
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"plot_image_grid expects a (N, 3, H, W) batch, got shape {tuple(images.shape)}. "
            "For one image, use show_image or pass image.unsqueeze(0)."
        )
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"Got {len(images)} images but {len(titles)} titles; pass one title per image.")
    if axes is None:
        nrows = math.ceil(len(images) / ncols)
        _, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.8 * nrows), squeeze=False)
    flat = list(np.asarray(axes).ravel())
    if len(flat) < len(images):
        raise ValueError(f"Got {len(images)} images but only {len(flat)} axes; pass at least one axes per image.")
    for i, ax in enumerate(flat):
        if i < len(images):
            show_image(images[i], mean=mean, std=std, title=titles[i] if titles else None, ax=ax)
        else:
            ax.axis("off")
    fig = flat[0].figure
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def plot_history(history: Sequence[dict], *, title: str = "Training curves", axes=None):
    """Loss and accuracy per epoch, train and validation, from the history that ``fit`` returns.

    Args:
        history: One dict per epoch with ``train_loss``, ``val_loss``, ``train_acc``, ``val_acc``.
        title: Title of the figure.
        axes: Two axes (loss, accuracy); a new figure if None.

    Returns:
        The figure.

    Used in: 06_fine_tuning.ipynb
    """
    import matplotlib.pyplot as plt

    if not history:
        raise ValueError("history is empty: run fit(...) for at least one epoch first.")
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    epochs = [row["epoch"] for row in history]
    for ax, metric, label in ((axes[0], "loss", "cross-entropy loss"), (axes[1], "acc", "accuracy")):
        for split in ("train", "val"):
            ax.plot(epochs, [row[f"{split}_{metric}"] for row in history], marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(label.capitalize())
        ax.legend()
    fig = axes[0].figure
    fig.suptitle(title)
    fig.tight_layout()
    return fig

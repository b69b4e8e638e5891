"""course_utils.plotting: images and training curves, drawn into new or given axes, with titles and labels."""
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from course_utils import plotting  # noqa: E402
from course_utils.data import denormalize  # noqa: E402
from course_utils.inside import network_plots  # noqa: E402
from course_utils.train import tuning  # noqa: E402

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
HISTORY = [
    {"epoch": 1, "train_loss": 1.2, "train_acc": 0.4, "val_loss": 1.0, "val_acc": 0.5, "seconds": 1.0},
    {"epoch": 2, "train_loss": 0.8, "train_acc": 0.6, "val_loss": 0.9, "val_acc": 0.55, "seconds": 1.0},
    {"epoch": 3, "train_loss": 0.5, "train_acc": 0.8, "val_loss": 0.7, "val_acc": 0.7, "seconds": 1.0},
]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _images(n: int) -> torch.Tensor:
    return torch.randn(n, 3, 6, 5, generator=torch.Generator().manual_seed(0))


def test_new_axes_returns_given_axes_untouched_or_a_new_figure_of_that_size():
    fig, given = plt.subplots()
    assert plotting.new_axes(given, figsize=(9, 9)) is given
    assert tuple(fig.get_size_inches()) != (9, 9)
    ax = plotting.new_axes(None, figsize=(4, 2.5))
    assert ax.figure is not fig and tuple(ax.figure.get_size_inches()) == (4, 2.5)
    grid = plotting.new_axes(None, figsize=(6, 3), nrows=2, ncols=3, squeeze=False)
    assert grid.shape == (2, 3) and len(grid[0, 0].figure.axes) == 6


def test_show_image_draws_the_denormalised_pixels():
    image = _images(1)[0]
    ax = plotting.show_image(image, mean=MEAN, std=STD, title="a bee")
    assert ax.get_title() == "a bee"
    shown = np.asarray(ax.images[0].get_array())
    expected = denormalize(image, MEAN, STD).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(shown, expected, atol=1e-6)


def test_show_image_draws_into_the_given_axes():
    fig, ax = plt.subplots()
    assert plotting.show_image(_images(1)[0], mean=MEAN, std=STD, ax=ax) is ax
    assert len(ax.images) == 1 and len(fig.axes) == 1


@pytest.mark.parametrize("shape", [(1, 3, 6, 5), (6, 5), (1, 6, 5), (4, 6, 5)])
def test_show_image_rejects_wrong_shapes(shape):
    with pytest.raises(ValueError, match=r"\(3, H, W\).*" + re.escape(str(shape))):
        plotting.show_image(torch.zeros(shape), mean=MEAN, std=STD)


def test_plot_image_grid_new_figure():
    titles = ["ants", "bees", "ants", "bees", "ants"]
    fig = plotting.plot_image_grid(_images(5), mean=MEAN, std=STD, titles=titles, ncols=3, suptitle="Batch")
    assert len(fig.axes) == 6
    assert [ax.get_title() for ax in fig.axes[:5]] == titles
    assert [len(ax.images) for ax in fig.axes] == [1, 1, 1, 1, 1, 0]
    assert not fig.axes[5].axison, "the unused axes is switched off"
    assert fig._suptitle.get_text() == "Batch"


@pytest.mark.parametrize("titles, ncols", [(["ants"] * 12, 6), (["true: ants\nlens cap (0.21)"] * 8, 4)])
def test_plot_image_grid_titles_do_not_overlap_the_row_above(titles, ncols):
    images = torch.rand(len(titles), 3, 16, 16)
    fig = plotting.plot_image_grid(images, mean=(0, 0, 0), std=(1, 1, 1), titles=titles, ncols=ncols, suptitle="S")
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    boxes = [(ax.get_window_extent(renderer), ax.title.get_window_extent(renderer)) for ax in fig.axes]
    for (above, _), (_, title) in zip(boxes, boxes[ncols:]):
        assert title.y1 < above.y0, "a title overlaps the image above it"
    assert max(t.y1 for _, t in boxes[:ncols]) < fig._suptitle.get_window_extent(renderer).y0


def test_plot_image_grid_draws_into_given_axes():
    fig, axes = plt.subplots(2, 2)
    assert plotting.plot_image_grid(_images(4), mean=MEAN, std=STD, axes=axes) is fig
    assert all(len(ax.images) == 1 for ax in axes.ravel())


def test_plot_image_grid_accepts_a_list_of_images():
    fig = plotting.plot_image_grid(list(_images(2)), mean=MEAN, std=STD, ncols=2)
    assert [len(ax.images) for ax in fig.axes] == [1, 1]


def test_plot_image_grid_rejects_mismatched_titles():
    with pytest.raises(ValueError, match="4 images but 3 titles"):
        plotting.plot_image_grid(_images(4), mean=MEAN, std=STD, titles=["a", "b", "c"])


def test_plot_image_grid_rejects_a_single_image():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*\(3, 6, 5\)"):
        plotting.plot_image_grid(_images(1)[0], mean=MEAN, std=STD)


def test_plot_image_grid_rejects_too_few_axes():
    _, axes = plt.subplots(1, 2)
    with pytest.raises(ValueError, match="Got 2 axes for 4 panels"):
        plotting.plot_image_grid(_images(4), mean=MEAN, std=STD, axes=axes)


def test_plot_history_new_figure():
    fig = plotting.plot_history(HISTORY, title="Fine-tuning")
    loss_ax, acc_ax = fig.axes
    assert fig._suptitle.get_text() == "Fine-tuning"
    for ax, key in ((loss_ax, "loss"), (acc_ax, "acc")):
        assert ax.get_title() and ax.get_xlabel() == "epoch" and ax.get_ylabel()
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert set(lines) == {"train", "val"}
        for split, line in lines.items():
            assert list(line.get_xdata()) == [1, 2, 3]
            assert list(line.get_ydata()) == [row[f"{split}_{key}"] for row in HISTORY]


def test_plot_history_ticks_whole_epochs_only():
    fig = plotting.plot_history(HISTORY[:2])  # two epochs: matplotlib alone would tick 1.0, 1.2, ..., 2.0
    fig.canvas.draw()
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks == [1, 2]


def test_plot_history_draws_into_given_axes():
    fig, axes = plt.subplots(1, 2)
    assert plotting.plot_history(HISTORY, axes=axes) is fig
    assert all(len(ax.get_lines()) == 2 for ax in axes)


def test_plot_history_of_a_fit_without_validation_draws_the_training_lines_only():
    train_only = [{k: v for k, v in row.items() if not k.startswith("val_")} for row in HISTORY]
    fig = plotting.plot_history(train_only)
    for ax, key in zip(fig.axes, ("loss", "acc")):
        (line,) = ax.get_lines()
        assert line.get_label() == "train"
        assert list(line.get_ydata()) == [row[f"train_{key}"] for row in HISTORY]


def test_plot_history_rejects_an_empty_history():
    with pytest.raises(ValueError, match="history is empty"):
        plotting.plot_history([])


def test_plot_lr_range_shows_every_loss_below_the_smoothed_curve():
    losses = [0.7, 0.68, 0.4, 0.2, 0.15, 0.3, 2.5]   # single batches fall below the smoothed minimum
    smoothed = [0.7, 0.69, 0.62, 0.5, 0.4, 0.37, 0.9]
    result = tuning.RangeTest(lr=[1e-5 * 10 ** i for i in range(7)], loss=losses, smoothed=smoothed)
    ax = plotting.plot_lr_range(result)
    bottom, top = ax.get_ylim()
    assert bottom < min(losses) and top > max(smoothed[:-1])


def test_plot_feature_overlay_lays_upsampled_maps_over_the_image():
    image = torch.zeros(3, 16, 16)
    activation = torch.zeros(5, 4, 4)
    activation[3, 0, 0] = 2.0  # channel 3 responds in the top-left cell only
    fig = network_plots.plot_feature_overlay(image, activation, mean=(0.5,) * 3, std=(0.5,) * 3, channels=[3, 1], ncols=2,
                                        title="Late")
    first = fig.axes[0]
    assert [ax.get_title() for ax in fig.axes] == ["ch 3", "ch 1"]
    assert len(first.images) == 2, "the photo, then the map over it"
    np.testing.assert_allclose(first.images[0].get_array(), np.full((16, 16, 3), 0.5), atol=1e-6)
    heat = np.asarray(first.images[1].get_array())
    assert heat.shape == (16, 16) and heat.max() == pytest.approx(1.0) and heat.min() == pytest.approx(0.0)
    assert heat[:4, :4].mean() > heat[8:, 8:].mean(), "the response stays where the channel fired"
    assert "4x4 cells upsampled to 16x16 px" in fig._suptitle.get_text()


@pytest.mark.parametrize("channels, shape, message", [
    ([5], (5, 4, 4), r"channels must be indices in \[0, 5\), got \[5\]"),
    ([], (5, 4, 4), r"got \[\]"),
    ([0], (4, 4), r"\(C, h, w\) activation"),
])
def test_plot_feature_overlay_rejects_bad_input(channels, shape, message):
    with pytest.raises(ValueError, match=message):
        network_plots.plot_feature_overlay(torch.zeros(3, 8, 8), torch.zeros(shape), mean=MEAN, std=STD, channels=channels)


def test_plot_trainable_by_stage_stacks_frozen_and_trainable():
    counts = {"stem": (0, 1_000), "block": (400_000, 600_000), "head": (2_562, 0)}
    fig, ax = plt.subplots()
    assert network_plots.plot_trainable_by_stage(counts, title="partial", ax=ax) is ax
    frozen, trainable = ax.containers[0], ax.containers[1]
    assert [bar.get_height() for bar in frozen] == pytest.approx([0.001, 0.6, 0.0])
    assert [bar.get_height() for bar in trainable] == pytest.approx([0.0, 0.4, 0.002562])
    assert [bar.get_y() for bar in trainable] == pytest.approx([0.001, 0.6, 0.0]), "trainable sits on frozen"
    assert ax.get_title() == "partial: 402,562 of 1,003,562 train (40.1%)"
    assert [t.get_text() for t in ax.texts] == ["", "400.0k", "2.6k"]
    assert ax.get_xlabel() and ax.get_ylabel() == "parameters (millions)"
    with pytest.raises(ValueError, match="counts is empty"):
        network_plots.plot_trainable_by_stage({})


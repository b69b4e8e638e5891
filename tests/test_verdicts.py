"""course_utils.transfer.verdicts: seed-averaged intervals, paired differences, verdicts, the table and the figures."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from course_utils import stats  # noqa: E402
from course_utils.transfer import scenarios, verdicts  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def fake_rows(correct_by_seed, strategy="a", per_class=5, domain="d"):
    return [scenarios.CellResult(domain, strategy, per_class, 10, seed, torch.tensor(correct), 1.0)
            for seed, correct in enumerate(correct_by_seed)]


def test_one_seed_gives_the_intervals_of_stats():
    a = [True, False, True, True, False, True, True, True]
    b = [False, False, True, True, True, False, True, False]
    rows = fake_rows([a]) + fake_rows([b], strategy="b")
    assert verdicts.cell_accuracy(rows, domain="d", strategy="a", per_class=5) == stats.accuracy_interval(a)
    assert verdicts.difference(rows, domain="d", better="a", worse="b", per_class=5) == \
        stats.difference_interval(a, b)
    with pytest.raises(ValueError, match="No results for 'd', 'c', per_class=5"):
        verdicts.cell_accuracy(rows, domain="d", strategy="c", per_class=5)


def test_seeds_are_averaged_per_image_and_verdicts_follow_the_interval():
    rows = fake_rows([[True] * 20 + [False] * 20, [True] * 30 + [False] * 10]) + fake_rows([[False] * 40], strategy="z")
    both = verdicts.cell_accuracy(rows, domain="d", strategy="a", per_class=5)
    assert both.value == pytest.approx(0.625) and both.n == 40 and both.low < 0.625 < both.high
    gap = verdicts.difference(rows, domain="d", better="a", worse="z", per_class=5)
    assert verdicts.verdict(gap) == "holds"
    assert verdicts.verdict(stats.Interval(-0.1, -0.2, -0.01, 0.95, 40)) == "reversed"
    assert verdicts.verdict(stats.Interval(0.05, -0.02, 0.1, 0.95, 40)) == "undecided"
    (cell, zero) = verdicts.summarise(rows)
    assert cell.seed_accuracies == (0.5, 0.75) and cell.seconds == 2.0 and zero.accuracy.value == 0.0
    assert (cell.domain, cell.strategy, cell.per_class, cell.n_train) == ("d", "a", 5, 10)
    table = verdicts.markdown_table(verdicts.summarise(rows + fake_rows([[True] * 40], per_class=None)))
    assert table.splitlines()[0] == "| domain | strategy | 5 per class | all per class |"
    assert "seeds 50.0%-75.0%" in table and "| d | z | 0.0% [0.0%, 0.0%] | not run |" in table


def test_plot_scenarios_draws_one_panel_per_domain_with_baselines():
    rows = fake_rows([[True] * 30 + [False] * 10]) + fake_rows([[True] * 20 + [False] * 20], per_class=None)
    rows += fake_rows([[True] * 25 + [False] * 15], strategy="z", domain="e")
    fig = verdicts.plot_scenarios(verdicts.summarise(rows), baselines={"d": {"majority": 0.5, "chance": 0.1}})
    first, second = fig.axes
    assert (first.get_title(), second.get_title()) == ("d", "e")
    assert first.get_xlabel() == "training images per class" and first.get_ylabel() == "validation accuracy"
    assert [t.get_text() for t in first.get_xticklabels()] == ["5", "all"]
    assert [t.get_text() for t in first.get_legend().get_texts()] == ["majority", "chance", "a"]
    assert fig._suptitle.get_text().startswith("Measured transfer scenarios")


def test_plot_scenarios_draws_into_given_axes_and_one_domain_alone():
    import matplotlib.pyplot as plt

    summary = verdicts.summarise(fake_rows([[True] * 30 + [False] * 10]))
    assert [ax.get_title() for ax in verdicts.plot_scenarios(summary).axes] == ["d"]
    fig, given = plt.subplots(1, 2)
    assert verdicts.plot_scenarios(summary, axes=given) is fig
    assert given[0].get_title() == "d" and not given[1].lines
    plt.close("all")


def test_plot_depth_probe_and_accuracy_vs_speed():
    interval = stats.Interval(0.8, 0.7, 0.9, 0.95, 40)
    ax = verdicts.plot_depth_probe({"near": {"s1": interval, "s2": interval}, "far": {"s1": interval, "s2": interval}})
    assert [t.get_text() for t in ax.get_xticklabels()] == ["s1", "s2"] and ax.get_title() and ax.get_ylabel()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["near", "far"]
    score = verdicts.BackboneScore(name="lite0", size=96, correct=torch.ones(40, dtype=torch.bool), accuracy=interval,
                                   parameters=4_652_008, ms_per_image=5.0)
    ax = verdicts.plot_accuracy_vs_speed([score])
    assert ax.get_xlabel() == "milliseconds per image"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["lite0 (4.7 M parameters)"]


def test_markdown_table_without_intervals_keeps_the_seed_range():
    rows = fake_rows([[True] * 20 + [False] * 20, [True] * 30 + [False] * 10])
    table = verdicts.markdown_table(verdicts.summarise(rows), intervals=False)
    assert table.splitlines()[-1] == "| d | a | 62.5%<br>seeds 50.0%-75.0% |"

"""course_utils.train.tuning: the learning-rate range test, checked on a tiny model whose loss we understand."""
import copy
import re

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from course_utils import plotting
from course_utils.train import tuning


def _loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    points = torch.randn(60, 4, generator=generator) + nn.functional.one_hot(labels, 4).float() * 3
    return DataLoader(TensorDataset(points, labels), batch_size=20)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_range_test_restores_weights_buffers_and_optimizer():
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = tuning.lr_range_test(model, nn.CrossEntropyLoss(), optimizer, _loader(), "cpu", steps=30)
    assert len(result.lr) == len(result.loss) == len(result.smoothed) >= 5
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} was not restored"
    assert optimizer.param_groups[0]["lr"] == 0.05 and not optimizer.state
    assert model.training  # mode restored too


def test_rates_grow_exponentially_and_the_test_stops_when_the_loss_explodes():
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    result = tuning.lr_range_test(model, nn.CrossEntropyLoss(), optimizer, _loader(), "cpu",
                                  start_lr=1e-4, end_lr=1e4, steps=60)
    ratios = [b / a for a, b in zip(result.lr, result.lr[1:])]
    assert ratios == pytest.approx([(1e8) ** (1 / 59)] * len(ratios))
    assert len(result.lr) < 60, "a rate of 1e4 must blow the loss up before the last step"
    assert min(result.smoothed) < result.smoothed[0]  # some rate made the loss fall
    assert 1e-4 <= result.steepest_lr <= result.lr[-1]
    assert result.min_loss_lr == result.lr[result.smoothed.index(min(result.smoothed))]


def test_group_ratios_are_kept():
    model = _model()
    optimizer = torch.optim.SGD([{"params": model[3].parameters(), "lr": 1e-2},
                                 {"params": list(model[0].parameters()) + list(model[1].parameters()), "lr": 1e-3}])
    seen = []
    original_step = optimizer.step

    def spy(*args, **kwargs):
        seen.append([group["lr"] for group in optimizer.param_groups])
        return original_step(*args, **kwargs)

    optimizer.step = spy
    tuning.lr_range_test(model, nn.CrossEntropyLoss(), optimizer, _loader(), "cpu", start_lr=1e-5, end_lr=1e-3,
                         steps=10)
    assert all(small / large == pytest.approx(0.1) for large, small in seen)
    assert seen[0][0] == pytest.approx(1e-5) and seen[-1][0] == pytest.approx(1e-3)


@pytest.mark.parametrize("kwargs, message", [
    ({"start_lr": 0}, "start_lr must be a positive number such as 1e-6, got 0. The test starts"),
    ({"end_lr": float("inf")}, "end_lr must be a positive number such as 1.0, got inf."),
    ({"start_lr": 1.0, "end_lr": 0.1}, "end_lr (0.1) must be larger than start_lr (1.0)"),
    ({"steps": 3}, "steps must be an integer of at least 5 such as 40, got 3."),
])
def test_bad_arguments(kwargs, message):
    model = _model()
    with pytest.raises(ValueError, match=re.escape(message)):
        tuning.lr_range_test(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1),
                             _loader(), "cpu", **kwargs)


def test_empty_loader_is_refused_and_nothing_changes():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="empty"):
        tuning.lr_range_test(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1), [], "cpu")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_plot_lr_range_draws_log_axis_and_suggestions():
    import matplotlib
    matplotlib.use("Agg")
    model = _model()
    result = tuning.lr_range_test(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1),
                                  _loader(), "cpu", steps=20)
    ax = plotting.plot_lr_range(result)
    assert ax.get_xscale() == "log" and ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    assert len(ax.get_legend().get_texts()) == 4
    with pytest.raises(ValueError, match="no steps"):
        plotting.plot_lr_range(tuning.RangeTest())


def test_warmup_cosine_rises_linearly_then_decays_keeping_group_ratios():
    groups = [{"params": [nn.Parameter(torch.zeros(1))], "lr": 0.5},
              {"params": [nn.Parameter(torch.zeros(1))], "lr": 0.05}]
    optimizer = torch.optim.AdamW(groups)
    scheduler = tuning.warmup_cosine(optimizer, total_steps=13, warmup_steps=5)
    rates = []
    for _ in range(13):
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    head = [r[0] for r in rates]
    assert head[:5] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert head[5] == pytest.approx(0.5) and all(a > b for a, b in zip(head[5:], head[6:]))
    assert head[-1] == pytest.approx(0.5 * 0.5 * (1 + torch.cos(torch.tensor(7 / 8 * torch.pi)).item()))
    assert all(r[1] == pytest.approx(r[0] / 10) for r in rates)


@pytest.mark.parametrize("kwargs, message", [
    ({"total_steps": 10, "warmup_steps": 0}, "warmup_steps must be from 1 to total_steps - 1 (9), got 0"),
    ({"total_steps": 10, "warmup_steps": 10}, "warmup_steps must be from 1 to total_steps - 1 (9), got 10"),
    ({"total_steps": 10.0, "warmup_steps": 2}, "total_steps must be an integer, got 10.0. It counts optimizer steps"),
    ({"total_steps": 10, "warmup_steps": True}, "warmup_steps must be an integer, got True."),
])
def test_warmup_cosine_refuses_bad_step_counts(kwargs, message):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match=re.escape(message)):
        tuning.warmup_cosine(optimizer, **kwargs)


def test_range_test_is_the_plain_pytorch_loop_with_growing_rates():
    model = _model()
    reference = copy.deepcopy(model)
    result = tuning.lr_range_test(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1),
                                  _loader(), "cpu", start_lr=1e-3, end_lr=1.0, steps=7, smoothing=0.5,
                                  diverge_factor=1e9)
    optimizer, losses, batches = torch.optim.SGD(reference.parameters(), lr=0.1), [], list(_loader())
    reference.train()
    for step in range(7):  # the loader has 3 batches: cycled
        optimizer.param_groups[0]["lr"] = 1e-3 * 1000 ** (step / 6)
        points, labels = batches[step % 3]
        loss = nn.functional.cross_entropy(reference(points), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert result.loss == pytest.approx(losses, rel=1e-5)
    assert result.lr == pytest.approx([1e-3 * 1000 ** (step / 6) for step in range(7)])
    expected = [losses[0]]
    for loss in losses[1:]:
        expected.append(0.5 * loss + 0.5 * expected[-1])
    assert result.smoothed == pytest.approx(expected, rel=1e-5)


def test_steepest_rate_ignores_the_swings_after_the_loss_diverged():
    # the loss falls to its lowest at 1e-2, then diverges and swings: the plunge from 9.0 to 3.0 is not a suggestion
    record = tuning.RangeTest(lr=[1e-4, 1e-3, 1e-2, 1e-1, 1.0], loss=[0.0] * 5, smoothed=[2.0, 1.8, 1.0, 9.0, 3.0])
    assert record.min_loss_lr == 1e-2
    assert record.steepest_lr == 1e-3


def test_suggestions_on_a_hand_made_record():
    record = tuning.RangeTest(lr=[1e-4, 1e-3, 1e-2, 1e-1], loss=[0.0] * 4, smoothed=[2.0, 1.9, 1.0, float("nan")])
    assert record.min_loss_lr == 1e-2  # the lowest finite smoothed loss
    assert record.steepest_lr == 1e-3  # 1.9 -> 1.0 is the steepest fall per decade
    assert record.diverged(4.0)  # the last loss is not finite


def test_range_test_leaves_the_global_random_state_alone():
    model = _model()
    loader = DataLoader(_loader().dataset, batch_size=20, generator=torch.Generator())  # draws from its own
    state = torch.get_rng_state()
    tuning.lr_range_test(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1), loader, "cpu",
                         steps=6)
    assert torch.equal(torch.get_rng_state(), state)

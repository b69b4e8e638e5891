"""course_utils.transfer.scenarios: the top of a network on cached maps, fixed-step fine-tuning, grid cells and verdicts."""
import copy

import pytest
import torch

from course_utils import models
from course_utils.models import surgery
from course_utils.transfer import probes, scenarios
from course_utils.transfer.domains import TensorImages


@pytest.fixture
def small_efficientnet():
    """A tiny timm EfficientNet with 3 classes: the class and structure of the Lite backbones, 4k parameters."""
    from timm.models._efficientnet_builder import decode_arch_def
    from timm.models.efficientnet import EfficientNet

    torch.manual_seed(0)
    arch = decode_arch_def([["ds_r1_k3_s1_e1_c8"], ["ir_r1_k3_s2_e2_c8"], ["ir_r2_k3_s2_e2_c16"]])
    return EfficientNet(block_args=arch, num_features=32, stem_size=8, num_classes=3).eval()


@pytest.mark.parametrize("stage", ["bn1", "blocks.0", "blocks.2", "bn2"])
def test_top_of_continues_the_forward_pass(small_efficientnet, stage):
    x = torch.randn(2, 3, 32, 32)
    images = TensorImages(x, [0, 1], ["a", "b", "c"])
    _, maps, _ = probes.stage_features(small_efficientnet, images, stages=[stage], maps=[stage])
    top = scenarios.top_of(small_efficientnet, stage)
    with torch.no_grad():
        assert torch.allclose(top(maps[stage]), small_efficientnet(x), atol=1e-5)
    own = {id(p) for p in small_efficientnet.parameters()}
    assert {id(p) for p in top.parameters()} == own, "the top shares the model's parameters, each once"


def test_top_of_rejects_other_models_and_stages(small_efficientnet, tiny_cnn):
    with pytest.raises(TypeError, match="timm EfficientNet.*Sequential"):
        scenarios.top_of(tiny_cnn, "2")
    with pytest.raises(ValueError, match="Unknown stage 'classifier'.*blocks.2, conv_head, bn2"):
        scenarios.top_of(small_efficientnet, "classifier")


def test_finetune_takes_exactly_the_steps_and_trains_only_the_unfrozen(tiny_cnn):
    surgery.unfreeze_last(tiny_cnn, 1)  # only the head ("8")
    before = copy.deepcopy(tiny_cnn.state_dict())
    batches = []
    tiny_cnn.register_forward_hook(lambda module, args, output: batches.append(len(args[0])))
    inputs, labels = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    scenarios.finetune(tiny_cnn, inputs, labels, lr=0.1, weight_decay=0.0, steps=7, batch_size=4, seed=0)
    assert batches == [4] * 7 and not tiny_cnn.training
    after = tiny_cnn.state_dict()
    assert not torch.equal(after["8.weight"], before["8.weight"])
    assert torch.equal(after["0.weight"], before["0.weight"]) and torch.equal(after["1.running_mean"],
                                                                             before["1.running_mean"])
    batches.clear()
    scenarios.finetune(tiny_cnn, inputs[:3], labels[:3], lr=0.1, weight_decay=0.0, steps=2, batch_size=4, seed=0)
    assert batches == [3, 3], "a smaller training set than the batch size trains on all of it each step"


def test_finetune_is_repeatable_and_checks_its_arguments(tiny_cnn):
    inputs, labels = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    start = copy.deepcopy(tiny_cnn)
    first = scenarios.finetune(copy.deepcopy(start), inputs, labels, lr=0.01, weight_decay=0.01, steps=3,
                               batch_size=2, seed=5)
    again = scenarios.finetune(copy.deepcopy(start), inputs, labels, lr=0.01, weight_decay=0.01, steps=3,
                               batch_size=2, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match="steps must be a positive integer such as 60, got 0"):
        scenarios.finetune(tiny_cnn, inputs, labels, lr=0.1, weight_decay=0.0, steps=0, batch_size=2, seed=0)
    surgery.freeze(tiny_cnn)
    with pytest.raises(ValueError, match="No parameter of the model requires gradients"):
        scenarios.finetune(tiny_cnn, inputs, labels, lr=0.1, weight_decay=0.0, steps=1, batch_size=2, seed=0)


def small_domain(model):
    torch.manual_seed(0)
    train_x, val_x = torch.randn(9, 3, 32, 32), torch.randn(6, 3, 32, 32)
    train_y, val_y = torch.tensor([0, 1, 2] * 3), torch.tensor([0, 1, 2] * 2)
    stages = ["blocks.1", "bn2"]
    split = surgery.stages(model)[-2 - 1]
    (tf, tm, _), (vf, vm, _) = (probes.stage_features(model, TensorImages(x, y.tolist(), "abc"), stages=stages,
                                                      maps=[split]) for x, y in ((train_x, train_y), (val_x, val_y)))
    return scenarios.Domain("toy", train_x, train_y, val_x, val_y, tf, vf, tm, vm, last_stage="bn2",
                            earlier_stage="blocks.1")


def test_grid_rows_for_every_strategy(small_efficientnet, monkeypatch):
    built = []

    def random_backbone(name, pretrained=True):
        built.append((name, pretrained))
        return copy.deepcopy(small_efficientnet), None

    monkeypatch.setattr(models, "load_backbone", random_backbone)
    domain = small_domain(small_efficientnet)
    budget = scenarios.Budget(steps=2, batch_size=4, partial_stages=2)
    before = copy.deepcopy(small_efficientnet.state_dict())
    rows = scenarios.run_grid([domain], strategies=list(scenarios.STRATEGIES), sizes=[2, None], seeds=[0, 1],
                              backbone="lite", pretrained=small_efficientnet, budget=budget, progress=False)
    assert len(rows) == 5 * 2 * 2 and built == [("lite", False)] * 4
    assert all(torch.equal(v, before[k]) for k, v in small_efficientnet.state_dict().items()), "pretrained is copied"
    assert {(r.per_class, r.n_train) for r in rows} == {(2, 6), (None, 9)}
    assert all(r.correct.shape == (6,) and r.correct.dtype == torch.bool for r in rows)
    assert [(r.strategy, r.seed) for r in rows[:4]] == [("scratch", 0), ("scratch", 1), ("head: last", 0),
                                                        ("head: last", 1)]
    with pytest.raises(ValueError, match="Unknown strategy 'linear'"):
        scenarios.run_cell(domain, "linear", per_class=2, seed=0, backbone="lite", pretrained=small_efficientnet,
                           budget=budget)


@pytest.mark.parametrize(("strategy", "trainable"), [("full", "all"), ("partial", "top"), ("scratch", "all")])
def test_trained_strategies_train_what_they_say_even_from_a_frozen_model(small_efficientnet, monkeypatch, strategy,
                                                                         trainable):
    """A frozen pretrained model (as after a feature-extraction cell) must not turn "full" into head only."""
    monkeypatch.setattr(models, "load_backbone", lambda name, pretrained=True: (copy.deepcopy(small_efficientnet),
                                                                                 None))
    domain = small_domain(small_efficientnet)
    budget = scenarios.Budget(steps=1, batch_size=4, partial_stages=2)
    surgery.freeze(small_efficientnet)
    seen = {}
    real_finetune = scenarios.finetune

    def spy(network, *args, **kwargs):
        seen["model"] = network.model if isinstance(network, scenarios._Top) else network
        return real_finetune(network, *args, **kwargs)

    monkeypatch.setattr(scenarios, "finetune", spy)
    scenarios.run_cell(domain, strategy, per_class=2, seed=0, backbone="lite", pretrained=small_efficientnet,
                       budget=budget)
    flags = {name: p.requires_grad for name, p in seen["model"].named_parameters()}
    if trainable == "all":
        assert all(flags.values())
    else:
        assert flags["classifier.weight"] and flags["bn2.weight"] and not flags["conv_stem.weight"]
    assert not any(p.requires_grad for p in small_efficientnet.parameters()), "the pretrained model is left as it was"


def test_cells_repeat_with_their_seed_and_leave_the_global_generator_alone(small_efficientnet, monkeypatch):
    """A scratch network's random weights and the batches come from the cell's seed, not from the caller's state."""
    monkeypatch.setattr(models, "load_backbone", lambda name, pretrained=True: (copy.deepcopy(small_efficientnet)
                                                                                if pretrained else
                                                                                _random_like(small_efficientnet),
                                                                                None))
    domain = small_domain(small_efficientnet)
    budget = scenarios.Budget(steps=3, batch_size=4, partial_stages=2)
    results = []
    for caller_seed in (1, 2):
        torch.manual_seed(caller_seed)
        state = torch.get_rng_state()
        results.append(scenarios.run_cell(domain, "scratch", per_class=2, seed=7, backbone="lite",
                                          pretrained=small_efficientnet, budget=budget))
        assert torch.equal(torch.get_rng_state(), state), "the caller's random state is left as it was"
    assert torch.equal(results[0].correct, results[1].correct) and results[0].n_train == 6


def _random_like(model):
    """A fresh copy of ``model`` with weights drawn from torch's global generator (as timm's initialisation)."""
    fresh = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in fresh.parameters():
            parameter.normal_(0, 0.5)
    return fresh


def test_the_top_reads_feature_maps_of_any_width_and_scale_on_the_chosen_device(small_efficientnet):
    """Cached maps are not pixels: 16 channels and values far beyond normalised images must pass the input checks."""
    top = scenarios.top_of(small_efficientnet, "blocks.2")
    maps, labels = 50 * torch.randn(6, 16, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    surgery.unfreeze(small_efficientnet)
    scenarios.finetune(top, maps, labels, lr=0.01, weight_decay=0.0, steps=2, batch_size=3, seed=0, device="cpu")
    predicted = scenarios.predict_images(top, maps, device="cpu")
    assert predicted.shape == (6,) and predicted.device.type == "cpu"
    with pytest.raises(ValueError, match="Device 'cuda:99' is not available here"):
        scenarios.predict_images(top, maps, device="cuda:99")


def test_a_seeded_head_on_a_timm_efficientnet_is_reproducible(small_efficientnet):
    """The grid's cells must repeat exactly: replace_head's seed also decides a timm head (reset_classifier)."""
    heads = [models.replace_head(copy.deepcopy(small_efficientnet), 5, seed=4) for _ in range(2)]
    assert torch.equal(heads[0].weight, heads[1].weight) and torch.equal(heads[0].bias, heads[1].bias)
    assert heads[0].weight.shape == (5, 32) and not heads[0].weight.is_meta

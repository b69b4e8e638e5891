"""Freezing, stages, BatchNorm in frozen parts, parameter counts and groups, partial state-dict loading."""
import pytest
import torch
from torch import nn

from course_utils import train
from course_utils.models import checkpoints, state_dicts, surgery


def _trainable(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


@pytest.fixture
def lite0():
    timm = pytest.importorskip("timm")
    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=5)


class _Blocks(nn.Module):
    """Eleven blocks, so that "blocks.1" and "blocks.10" share a string prefix."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(*[nn.Linear(2, 2) for _ in range(11)])
        self.head = nn.Linear(2, 3)


def test_freeze_all_and_unfreeze_all(tiny_cnn):
    surgery.freeze(tiny_cnn)
    assert _trainable(tiny_cnn) == set()
    surgery.unfreeze(tiny_cnn)
    assert _trainable(tiny_cnn) == {n for n, _ in tiny_cnn.named_parameters()}


def test_freeze_by_name_touches_only_that_module(tiny_cnn):
    surgery.freeze(tiny_cnn, ["0", "1"])
    assert _trainable(tiny_cnn) == {"3.weight", "3.bias", "4.weight", "4.bias", "8.weight", "8.bias"}
    surgery.unfreeze(tiny_cnn, "1")  # a single name works too
    assert "1.weight" in _trainable(tiny_cnn) and "0.weight" not in _trainable(tiny_cnn)


def test_prefix_matches_whole_name_parts_only():
    model = _Blocks()
    surgery.freeze(model, ["blocks.1"])
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"blocks.1.weight", "blocks.1.bias"}  # not blocks.10


def test_unknown_name_lists_valid_names(tiny_cnn):
    with pytest.raises(ValueError, match=r"'backbone'.*Valid names include 0, 1, 3, 4, 8"):
        surgery.freeze(tiny_cnn, ["backbone"])
    assert len(_trainable(tiny_cnn)) == len(list(tiny_cnn.parameters()))


def test_stages_of_known_families(tiny_cnn, lite0):
    import torchvision

    assert surgery.stages(tiny_cnn) == ["0", "1", "3", "4", "8"]
    assert surgery.stages(lite0) == ["conv_stem", "bn1"] + [f"blocks.{i}" for i in range(7)] + [
        "conv_head", "bn2", "classifier"]
    resnet = torchvision.models.resnet18(weights=None, num_classes=5)
    assert surgery.stages(resnet) == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]
    mobilenet = torchvision.models.mobilenet_v3_small(weights=None, num_classes=5)
    assert surgery.stages(mobilenet)[:2] == ["features.0", "features.1"]
    assert surgery.stages(mobilenet)[-1] == "classifier"


def test_freeze_up_to_by_name_and_index(lite0):
    frozen = surgery.freeze_up_to(lite0, "blocks.3")
    assert frozen == ["conv_stem", "bn1", "blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    trainable = _trainable(lite0)
    assert not any(n.startswith(("conv_stem.", "bn1.", "blocks.3.")) for n in trainable)
    assert any(n.startswith("blocks.4.") for n in trainable) and "classifier.weight" in trainable
    assert surgery.freeze_up_to(lite0, 1) == ["conv_stem", "bn1"]
    assert any(n.startswith("blocks.3.") for n in _trainable(lite0))  # earlier freeze undone
    assert surgery.freeze_up_to(lite0, -2)[-1] == "bn2"


def test_freeze_up_to_rejects_unknown_stage(lite0):
    with pytest.raises(ValueError, match=r"'blocks\.9'.*conv_stem, bn1, blocks\.0"):
        surgery.freeze_up_to(lite0, "blocks.9")
    with pytest.raises(ValueError, match="out of range"):
        surgery.freeze_up_to(lite0, 12)


def test_unfreeze_last(lite0):
    assert surgery.unfreeze_last(lite0, 2) == ["bn2", "classifier"]
    assert _trainable(lite0) == {"bn2.weight", "bn2.bias", "classifier.weight", "classifier.bias"}
    assert surgery.unfreeze_last(lite0, 0) == [] and _trainable(lite0) == set()
    with pytest.raises(ValueError, match=r"n must be an integer from 0 to 12 such as 2, got 13\. .*stages: conv_stem, "):
        surgery.unfreeze_last(lite0, 13)
    with pytest.raises(ValueError, match=r"got True\."):
        surgery.unfreeze_last(lite0, True)


def test_eval_frozen_batchnorm(tiny_cnn):
    for parameter in tiny_cnn[1].parameters():
        parameter.requires_grad_(False)  # frozen by hand: the next call locks it
    tiny_cnn.train()
    assert tiny_cnn[1].training
    assert surgery.eval_frozen_batchnorm(tiny_cnn) == 1
    assert not tiny_cnn[1].training and tiny_cnn[4].training and tiny_cnn[0].training
    tiny_cnn.train()
    assert not tiny_cnn[1].training, "model.train() must not undo it"
    tiny_cnn[1].weight.requires_grad_(True)  # unfrozen by hand: released by the next call
    assert surgery.eval_frozen_batchnorm(tiny_cnn) == 0 and tiny_cnn[1].training


def _own_loop_step(model, images):
    # What a student's own loop does: model.train(), then forward passes (no course_utils call).
    model.train()
    model(images)


def test_frozen_batchnorm_survives_model_train_in_a_loop_of_ones_own(tiny_cnn):
    names_before = [n for n, _ in tiny_cnn.named_parameters()]
    keys_before = list(tiny_cnn.state_dict())
    counts_before = surgery.count_parameters(tiny_cnn)["total"]
    surgery.freeze(tiny_cnn, ["0", "1"])
    frozen_stats, trained_stats = tiny_cnn[1].running_mean.clone(), tiny_cnn[4].running_mean.clone()
    _own_loop_step(tiny_cnn, torch.randn(4, 3, 8, 8) * 3 + 1)
    assert not tiny_cnn[1].training and tiny_cnn[4].training and tiny_cnn.training
    assert torch.equal(tiny_cnn[1].running_mean, frozen_stats), "a frozen BatchNorm must not drift"
    assert not torch.equal(tiny_cnn[4].running_mean, trained_stats)
    assert isinstance(tiny_cnn[1], nn.BatchNorm2d) and type(tiny_cnn[1]).__name__ == "FrozenBatchNorm2d"
    # Nothing a notebook counts or saves changes: names, parameters (still frozen Parameters), state-dict keys.
    assert [n for n, _ in tiny_cnn.named_parameters()] == names_before and list(tiny_cnn.state_dict()) == keys_before
    assert surgery.count_parameters(tiny_cnn) == {"total": counts_before, "trainable": counts_before - 8 * 3 * 9 - 8 - 16,
                                                  "frozen": 8 * 3 * 9 + 8 + 16}
    surgery.unfreeze(tiny_cnn)
    assert type(tiny_cnn[1]) is nn.BatchNorm2d and tiny_cnn[1].training
    _own_loop_step(tiny_cnn, torch.randn(4, 3, 8, 8) * 3 + 1)
    assert not torch.equal(tiny_cnn[1].running_mean, frozen_stats), "unfrozen, it learns its statistics again"


def test_frozen_batchnorm_copies_and_pickles_frozen(tiny_cnn, tmp_path):
    import copy

    surgery.freeze(tiny_cnn, ["1"])
    torch.save(tiny_cnn, tmp_path / "whole_model.pt")
    for clone in (copy.deepcopy(tiny_cnn), torch.load(tmp_path / "whole_model.pt", weights_only=False)):
        clone.train()
        assert type(clone[1]).__name__ == "FrozenBatchNorm2d" and not clone[1].training
        assert torch.equal(clone[1].running_var, tiny_cnn[1].running_var)
        surgery.unfreeze(clone)
        assert type(clone[1]) is nn.BatchNorm2d


def test_frozen_timm_batchnorm_act_keeps_its_activation(lite0):
    images = torch.randn(2, 3, 32, 32)
    bn = lite0.bn1
    lite0.eval()
    with torch.no_grad():
        expected = bn(images.new_zeros(2, 32, 4, 4) + 1.5)
    surgery.freeze_up_to(lite0, "blocks.1")
    lite0.train()
    assert type(bn).__name__ == "FrozenBatchNormAct2d" and not bn.training
    assert lite0.blocks[2][0].bn1.training, "blocks.2 trains, and so do its BatchNorms"
    with torch.no_grad():
        torch.testing.assert_close(bn(images.new_zeros(2, 32, 4, 4) + 1.5), expected)  # same BN + activation


def test_train_one_epoch_keeps_frozen_batchnorm_statistics(tiny_cnn):
    surgery.freeze(tiny_cnn, ["0", "1"])
    frozen_before, trained_before = tiny_cnn[1].running_mean.clone(), tiny_cnn[4].running_mean.clone()
    images = torch.randn(8, 3, 16, 16) * 3 + 1
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, torch.arange(8) % 5), batch_size=4)
    optimizer = torch.optim.SGD([p for p in tiny_cnn.parameters() if p.requires_grad], lr=0.1)
    train.train_one_epoch(tiny_cnn, nn.CrossEntropyLoss(), optimizer, loader, torch.device("cpu"), progress=False)
    assert torch.equal(tiny_cnn[1].running_mean, frozen_before)
    assert not torch.equal(tiny_cnn[4].running_mean, trained_before)  # the trainable BN still updates


def test_count_parameters(tiny_cnn):
    total = sum(p.numel() for p in tiny_cnn.parameters())
    assert surgery.count_parameters(tiny_cnn) == {"total": total, "trainable": total, "frozen": 0}
    surgery.freeze(tiny_cnn, ["8"])
    assert surgery.count_parameters(tiny_cnn) == {"total": total, "trainable": total - 85, "frozen": 85}


def test_parameter_groups(tiny_cnn):
    surgery.freeze(tiny_cnn, ["0"])
    groups = surgery.parameter_groups(tiny_cnn, head_lr=1e-2, backbone_lr=1e-4)
    assert [(g["name"], g["lr"]) for g in groups] == [("head", 1e-2), ("backbone", 1e-4)]
    assert {id(p) for p in groups[0]["params"]} == {id(tiny_cnn[8].weight), id(tiny_cnn[8].bias)}
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert id(tiny_cnn[0].weight) not in in_groups and id(tiny_cnn[3].weight) in in_groups
    torch.optim.AdamW(groups)  # accepted by an optimizer


def test_parameter_groups_rejects_bad_input(tiny_cnn):
    with pytest.raises(ValueError, match=r"head_lr must be a positive number such as 1e-3, got 0\. .*freeze it"):
        surgery.parameter_groups(tiny_cnn, head_lr=0, backbone_lr=1e-4)
    with pytest.raises(ValueError, match=r"backbone_lr must be a positive number such as 1e-4, got -1\."):
        surgery.parameter_groups(tiny_cnn, head_lr=1e-3, backbone_lr=-1)
    with pytest.raises(ValueError, match=r"backbone_lr must be a positive number such as 1e-4, got inf\."):
        surgery.parameter_groups(tiny_cnn, head_lr=1e-3, backbone_lr=float("inf"))
    surgery.freeze(tiny_cnn)
    with pytest.raises(ValueError, match="nothing to optimise"):
        surgery.parameter_groups(tiny_cnn, head_lr=1e-3, backbone_lr=1e-4)


def _changed_cnn():
    """tiny_cnn with a 5x5 (instead of 3x3) second conv and a 3-class head."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 5, stride=2, padding=2), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3),
    )


def test_load_matching_state_dict_stops_at_first_mismatch(tiny_cnn):
    source = dict(tiny_cnn.state_dict())
    source["extra.weight"] = torch.zeros(2)
    del source["1.num_batches_tracked"]
    target = _changed_cnn()
    untouched = target[3].bias.detach().clone()
    report = state_dicts.load_matching_state_dict(target, source)
    assert report.loaded == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"]
    assert report.mismatched == ["3.weight", "8.weight", "8.bias"]
    assert report.skipped[0] == "3.bias" and "4.running_mean" in report.skipped
    assert report.unexpected == ["extra.weight"] and report.missing == ["1.num_batches_tracked"]
    assert torch.equal(target[0].weight, tiny_cnn[0].weight)
    assert torch.equal(target[3].bias, untouched)  # skipped: not loaded
    assert "mismatched" in report.summary()


def test_load_matching_state_dict_can_load_all_matching(tiny_cnn):
    target = _changed_cnn()
    report = state_dicts.load_matching_state_dict(target, tiny_cnn.state_dict(), stop_at_first_mismatch=False)
    assert report.skipped == [] and "3.bias" in report.loaded
    assert torch.equal(target[3].bias, tiny_cnn[3].bias)


def test_load_matching_state_dict_rejects_unrelated_model(tiny_cnn):
    with pytest.raises(ValueError, match="unrelated model"):
        state_dicts.load_matching_state_dict(tiny_cnn, nn.Linear(3, 3).state_dict())


def test_load_matching_state_dict_refuses_an_unrelated_architecture_that_shares_names(lite0):
    import torchvision

    resnet = torchvision.models.resnet18(weights=None, num_classes=5)  # shares "bn1.weight" etc., other shapes
    before = lite0.bn1.weight.detach().clone()
    with pytest.raises(ValueError, match=r"'conv1\.weight'.*'conv_stem\.weight'.*unrelated model"):
        state_dicts.load_matching_state_dict(lite0, resnet.state_dict())
    assert torch.equal(lite0.bn1.weight, before)


def test_load_matching_state_dict_that_would_load_nothing(tiny_cnn):
    source = _changed_cnn()
    source[0] = nn.Conv2d(3, 8, 5, padding=2)  # the very first layer differs
    with pytest.raises(ValueError, match=r"Nothing was loaded.*'0\.weight'.*stop_at_first_mismatch=False"):
        state_dicts.load_matching_state_dict(tiny_cnn, source.state_dict())


def test_load_matching_state_dict_wants_a_state_dict(tiny_cnn, tmp_path):
    path = checkpoints.save(tiny_cnn, tmp_path / "model.pt")
    with pytest.raises(TypeError, match="torch.load\\(path, weights_only=True\\)"):
        state_dicts.load_matching_state_dict(tiny_cnn, str(path))
    with pytest.raises(TypeError, match="its .state_dict"):
        state_dicts.load_matching_state_dict(tiny_cnn, tiny_cnn)
    with pytest.raises(TypeError, match="needs that key first"):
        state_dicts.load_matching_state_dict(tiny_cnn, {"state_dict": tiny_cnn.state_dict()})


def test_stages_start_with_the_parameters_the_model_owns():
    timm = pytest.importorskip("timm")
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1, num_classes=5)
    assert surgery.stages(vit)[:4] == ["cls_token", "pos_embed", "patch_embed", "blocks.0"]
    surgery.freeze_up_to(vit, "patch_embed")
    assert not vit.pos_embed.requires_grad and not vit.cls_token.requires_grad
    assert surgery.unfreeze_last(vit, len(surgery.stages(vit))) == surgery.stages(vit)
    assert all(p.requires_grad for p in vit.parameters())


class _NamesSharingAPrefix(nn.Module):
    """The head is ``fc``; ``fc_pre`` is backbone although its name starts with "fc"."""

    def __init__(self):
        super().__init__()
        self.fc_pre = nn.Linear(4, 4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.fc_pre(x)))


def test_parameter_groups_match_whole_names():
    model = _NamesSharingAPrefix()
    head, backbone = surgery.parameter_groups(model, head_lr=1e-2, backbone_lr=1e-4)
    assert [id(p) for p in head["params"]] == [id(model.fc.weight), id(model.fc.bias)]
    assert [id(p) for p in backbone["params"]] == [id(model.fc_pre.weight), id(model.fc_pre.bias)]


def test_parameter_groups_of_a_distilled_deit_put_both_heads_in_the_head_group():
    timm = pytest.importorskip("timm")
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, depth=1, num_classes=3)
    head = surgery.parameter_groups(model, head_lr=1e-2, backbone_lr=1e-4)[0]
    expected = [model.head.weight, model.head.bias, model.head_dist.weight, model.head_dist.bias]
    assert {id(p) for p in head["params"]} == {id(p) for p in expected}

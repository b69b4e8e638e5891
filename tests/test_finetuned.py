"""course_utils.train.finetuned: where 06 saves its chosen model, and the load-or-train fallback."""
import pytest
import torch

from course_utils import models
from course_utils.models import checkpoints
from course_utils.train import finetuned


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_RUNS", str(tmp_path))
    return tmp_path


def _finetuned_model():
    model, _ = models.load_backbone("efficientnet_lite0", pretrained=False)
    models.replace_head(model, 3, seed=1)
    return model


def test_load_or_train_prefers_the_saved_file(runs, monkeypatch):
    def no_training(**kwargs):
        raise AssertionError("must not train when the file exists")

    monkeypatch.setattr(finetuned, "_train_head_only", no_training)
    model = _finetuned_model()
    pre = models.load_backbone("efficientnet_lite0", pretrained=False)[1]
    checkpoints.save(model, finetuned.default_path(), backbone="efficientnet_lite0", classes=["a", "b", "c"],
                     preprocessing=pre)
    result = finetuned.load_or_train()
    assert result.source.startswith("loaded from") and finetuned.default_path().parent.parent == runs
    assert result.classes == ["a", "b", "c"] and result.preprocessing == pre


def test_load_or_train_falls_back_and_says_so(runs, monkeypatch):
    model = _finetuned_model()
    pre = models.load_backbone("efficientnet_lite0", pretrained=False)[1]
    monkeypatch.setattr(finetuned, "_train_head_only",
                        lambda **kwargs: checkpoints.Classifier(model=model, classes=["a", "b", "c"],
                                                                preprocessing=pre))
    result = finetuned.load_or_train()
    assert "trained just now" in result.source and "does not exist" in result.source
    assert not finetuned.default_path().exists(), "the fallback must not pose as 06's model"


@pytest.mark.slow
def test_fallback_attaches_the_head_it_trained(runs, hymenoptera_folder, monkeypatch):
    from course_utils.transfer import features

    def fake_features(model, dataset, **kwargs):  # separable 1280-d features instead of a 15 s forward pass
        labels = torch.tensor(dataset.targets)
        return torch.nn.functional.one_hot(labels, 1280).float() * 5 + 0.1, labels

    monkeypatch.setattr(features, "extract_features", fake_features)
    result = finetuned.load_or_train()
    assert result.classes == ["ants", "bees"] and result.info["val_acc"] == 1.0
    assert "trained just now" in result.source
    x = torch.nn.functional.one_hot(torch.tensor([0, 1]), 1280).float() * 5 + 0.1
    with torch.no_grad():
        probabilities = result.model.classifier(x).softmax(1)
    assert probabilities.argmax(1).tolist() == [0, 1]
    assert probabilities.max(1).values.min() > 0.65  # the trained head (0.73 here); a fresh one: about 0.5

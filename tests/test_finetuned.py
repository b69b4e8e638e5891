"""course_utils.finetuned: one self-describing file per fine-tuned model, and the load-or-train fallback."""
import pytest
import torch

from course_utils import finetuned, models


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_RUNS", str(tmp_path))
    return tmp_path


def _finetuned_model():
    model, _ = models.load_backbone("efficientnet_lite0", pretrained=False)
    models.replace_head(model, 3, seed=1)
    return model


def test_save_and_load_round_trip(runs):
    model = _finetuned_model()
    pre = models.Preprocessing(resize=165, crop=144, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic")
    path = finetuned.save(model, backbone="efficientnet_lite0", classes=["a", "b", "c"], preprocessing=pre,
                          strategy="(b) head only", val_acc=0.9)
    assert path == finetuned.default_path() and path.parent.parent == runs
    payload = torch.load(path, weights_only=True)  # loadable without unpickling code
    assert payload["backbone"] == "efficientnet_lite0"
    loaded = finetuned.load()
    assert loaded.classes == ["a", "b", "c"] and loaded.preprocessing == pre
    assert loaded.info == {"strategy": "(b) head only", "val_acc": 0.9} and str(path) in loaded.source
    assert not loaded.model.training
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded.model(x))


def test_save_refuses_a_head_that_does_not_fit_the_classes(runs):
    model = _finetuned_model()
    pre = models.load_backbone("efficientnet_lite0", pretrained=False)[1]
    with pytest.raises(ValueError, match="3 outputs but 2 classes"):
        finetuned.save(model, backbone="efficientnet_lite0", classes=["a", "b"], preprocessing=pre)
    with pytest.raises(ValueError, match="tensor"):
        finetuned.save(model, backbone="efficientnet_lite0", classes=["a", "b", "c"], preprocessing=pre,
                       val_acc=torch.tensor(0.5))
    assert not finetuned.default_path().exists()


def test_load_explains_a_missing_or_foreign_file(runs, tmp_path):
    with pytest.raises(FileNotFoundError, match="notebook 06"):
        finetuned.load()
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(1)}, plain)
    with pytest.raises(ValueError, match="load_checkpoint"):
        finetuned.load(plain)


def test_load_or_train_prefers_the_saved_file(runs, monkeypatch):
    def no_training(**kwargs):
        raise AssertionError("must not train when the file exists")

    monkeypatch.setattr(finetuned, "_train_head_only", no_training)
    model = _finetuned_model()
    pre = models.load_backbone("efficientnet_lite0", pretrained=False)[1]
    finetuned.save(model, backbone="efficientnet_lite0", classes=["a", "b", "c"], preprocessing=pre)
    assert finetuned.load_or_train().source.startswith("loaded from")


def test_load_or_train_falls_back_and_says_so(runs, monkeypatch):
    model = _finetuned_model()
    pre = models.load_backbone("efficientnet_lite0", pretrained=False)[1]
    monkeypatch.setattr(finetuned, "_train_head_only",
                        lambda **kwargs: finetuned.FineTuned(model, pre, ["a", "b", "c"], {}, source=""))
    result = finetuned.load_or_train()
    assert "trained just now" in result.source and "does not exist" in result.source
    assert not finetuned.default_path().exists(), "the fallback must not pose as 06's model"


@pytest.mark.slow
def test_fallback_attaches_the_head_it_trained(runs, hymenoptera_folder, monkeypatch):
    from course_utils import features

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

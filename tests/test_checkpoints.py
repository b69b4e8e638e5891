"""course_utils.models.checkpoints: one self-describing file per model, saved atomically, rebuilt by one load."""
import copy
import json

import pytest
import torch

from course_utils import models
from course_utils.models import checkpoints, weights

CLASSES = ["cats", "dogs", "owls"]
PRE = weights.Preprocessing(resize=165, crop=144, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic")


def _lite0(num_classes: int = 3, seed: int = 1):
    model, _ = models.load_backbone("efficientnet_lite0", pretrained=False)
    models.replace_head(model, num_classes, seed=seed)
    return model


def _changed(model):
    other = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(1.0)
    return other


def test_load_rebuilds_the_saved_model_from_the_file_alone(tmp_path):
    model = _lite0()
    path = checkpoints.save(model, tmp_path / "runs" / "model.pt", backbone="efficientnet_lite0", classes=CLASSES,
                            preprocessing=PRE, strategy="(b) head only", val_acc=0.9)
    assert torch.load(path, weights_only=True)["backbone"] == "efficientnet_lite0"  # opens without running code
    loaded = checkpoints.load(path)
    assert (loaded.backbone, loaded.classes, loaded.preprocessing) == ("efficientnet_lite0", CLASSES, PRE)
    assert loaded.info == {"strategy": "(b) head only", "val_acc": 0.9} and str(path) in loaded.source
    assert not loaded.model.training
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded.model(x))


def test_save_refuses_what_it_cannot_describe_and_writes_nothing(tmp_path):
    model, path = _lite0(), tmp_path / "model.pt"
    with pytest.raises(ValueError, match="3 outputs but 2 classes"):
        checkpoints.save(model, path, backbone="efficientnet_lite0", classes=["a", "b"], preprocessing=PRE)
    with pytest.raises(ValueError, match=r"info\['val_acc'\] is a Tensor"):
        checkpoints.save(model, path, backbone="efficientnet_lite0", classes=CLASSES, val_acc=torch.tensor(0.5))
    with pytest.raises(ValueError, match="'resnet9000'.*efficientnet_lite0"):
        checkpoints.save(model, path, backbone="resnet9000")
    assert list(tmp_path.iterdir()) == []


def test_weights_of_a_model_of_your_own_load_into_it(tiny_cnn, tmp_path):
    path = checkpoints.save(tiny_cnn, tmp_path / "model.pt", epochs=3)
    other = _changed(tiny_cnn)
    loaded = checkpoints.load(path, into=other)
    assert loaded.model is other and loaded.info == {"epochs": 3} and loaded.backbone is None
    for key, tensor in tiny_cnn.state_dict().items():
        assert torch.equal(other.state_dict()[key], tensor)
    with pytest.raises(ValueError, match=rf"{path}[\s\S]*without a backbone name[\s\S]*into=model"):
        checkpoints.load(path)


def test_an_interrupted_save_leaves_the_previous_file_whole(tiny_cnn, tmp_path, monkeypatch):
    path = checkpoints.save(tiny_cnn, tmp_path / "model.pt")
    seen_during_the_write = []

    def interrupted_save(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(b"half a checkpoint")
        seen_during_the_write.append(checkpoints.load(path, into=_changed(tiny_cnn)).model)
        raise KeyboardInterrupt  # Ctrl+C, or a crash, in the middle of writing

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save(_changed(tiny_cnn), path)
    monkeypatch.undo()
    for restored in (seen_during_the_write[0], checkpoints.load(path, into=_changed(tiny_cnn)).model):
        for key, tensor in tiny_cnn.state_dict().items():
            assert torch.equal(restored.state_dict()[key], tensor), "the previous checkpoint must stay whole"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"], "no temporary file is left behind"


def test_a_save_replaces_the_file_and_is_readable_like_any_file_the_user_writes(tiny_cnn, tmp_path):
    path = checkpoints.save(tiny_cnn, tmp_path / "model.pt")
    changed = _changed(tiny_cnn)
    checkpoints.save(changed, path)
    assert torch.equal(checkpoints.load(path, into=tiny_cnn).model[0].weight, changed[0].weight)
    plain = tmp_path / "plain.txt"
    plain.write_text("made with open()")
    assert path.stat().st_mode == plain.stat().st_mode  # what others may read: as for the user's other files


def test_a_bare_state_dict_names_the_file_and_the_fix(tiny_cnn, tmp_path):
    path = tmp_path / "old.pt"
    torch.save(tiny_cnn.state_dict(), path)
    with pytest.raises(ValueError, match=rf"{path} holds a bare state dict \(\d+ tensors[\s\S]*"
                                         r"model\.load_state_dict[\s\S]*checkpoints\.save\(model, path, backbone="):
        checkpoints.load(path, into=tiny_cnn)


def test_a_file_from_another_backbone_names_the_file_and_the_fix(tmp_path):
    path = checkpoints.save(_lite0(), tmp_path / "lite0.pt", backbone="efficientnet_lite0", classes=CLASSES)
    lite1, _ = models.load_backbone("efficientnet_lite1", pretrained=False)
    with pytest.raises(ValueError, match=rf"{path} holds weights of efficientnet_lite0 with 3 classes[\s\S]*"
                                         r"checkpoints\.load\(path\) rebuild it[\s\S]*replace_head\(model, 3\)"):
        checkpoints.load(path, into=lite1)


def test_a_file_with_another_number_of_classes_names_the_head_size(tiny_cnn, tmp_path):
    path = checkpoints.save(tiny_cnn, tmp_path / "five.pt")
    models.replace_head(tiny_cnn, 3)
    with pytest.raises(ValueError, match=rf"{path}[\s\S]*5 classes[\s\S]*3[\s\S]*replace_head\(model, 5\)"):
        checkpoints.load(path, into=tiny_cnn)


def test_a_missing_file_names_the_path_and_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'missing.pt'}[\s\S]*checkpoints\.save"):
        checkpoints.load(tmp_path / "missing.pt")


@pytest.mark.parametrize(("payload", "found"), [
    ({"state_dict": {"w": torch.zeros(1)}, "epoch": 3}, r"a dict with the keys \['epoch', 'state_dict'\]"),
    ([torch.zeros(1)], "a list"),
    ({"format": 99, "state_dict": {}}, "format 99, newer"),
])
def test_other_files_say_what_they_hold(tmp_path, payload, found):
    path = tmp_path / "other.pt"
    torch.save(payload, path)
    with pytest.raises(ValueError, match=rf"{path}[\s\S]*{found}"):
        checkpoints.load(path)


def test_a_description_survives_plain_values(tmp_path):
    description = checkpoints.Description(backbone="efficientnet_lite0", classes=CLASSES, preprocessing=PRE,
                                          info={"val_acc": 0.5, "seeds": [0, 1]})
    assert checkpoints.Description.from_plain(json.loads(json.dumps(description.to_plain()))) == description
    assert checkpoints.Description.from_plain({"classes": CLASSES}).backbone is None  # older ONNX metadata

"""course_utils.transfer.probes: pooled stage outputs in one pass (cached), class-balanced subsets, linear probes."""
import pytest
import torch

from course_utils.transfer import probes
from course_utils.transfer.domains import TensorImages


@pytest.fixture(autouse=True)
def _no_export_from_another_test(monkeypatch):
    """Every test starts without ONNX Runtime sessions memoised by an earlier one (engines.frozen_forward)."""
    from course_utils.deploy import engines

    monkeypatch.setattr(engines, "_SESSIONS", engines.OrderedDict())


@pytest.fixture
def images():
    torch.manual_seed(1)
    return TensorImages(torch.randn(7, 3, 8, 8), [0, 1, 2, 0, 1, 2, 0], ["a", "b", "c"])


def reference(model, x):
    """The tiny_cnn's pooled outputs after its first and second block, computed by hand."""
    with torch.no_grad():
        first = model[2](model[1](model[0](x)))
        second = model[5](model[4](model[3](first)))
    return first.mean((2, 3)), second, second.mean((2, 3)), model(x)


def test_stage_features_match_the_layers_by_hand(tiny_cnn, images):
    tiny_cnn.train()  # must come back in train mode, but features are computed in eval mode
    pooled, maps, labels = probes.stage_features(tiny_cnn, images, stages=["2", "5", "8"], maps=["5"], batch_size=3)
    assert tiny_cnn.training, "the model's mode is restored"
    tiny_cnn.eval()
    first, second_map, second, logits = reference(tiny_cnn, images.images)
    assert torch.allclose(pooled["2"], first, atol=1e-5) and torch.allclose(pooled["5"], second, atol=1e-5)
    assert torch.allclose(pooled["8"], logits, atol=1e-5), "a 2-D output is kept as it is"
    assert list(maps) == ["5"] and torch.allclose(maps["5"], second_map, atol=1e-5)
    assert labels.tolist() == images.targets and labels.dtype == torch.int64
    assert pooled["2"].requires_grad is False and not pooled["2"].is_inference()
    assert all(not m._forward_hooks for m in tiny_cnn.modules()), "every hook is removed"


def test_stage_features_cache_is_reused_and_keyed_by_inputs_and_weights(tiny_cnn, images, tmp_path, monkeypatch):
    first, _, _ = probes.stage_features(tiny_cnn, images, stages=["5"], cache_dir=tmp_path)
    assert len(list(tmp_path.glob("stages-*.pt"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("the backbone ran although the features were cached")

    with monkeypatch.context() as patch:
        patch.setattr(probes, "_forward_all", fail)
        again, _, _ = probes.stage_features(tiny_cnn, images, stages=["5"], cache_dir=tmp_path)
    assert torch.equal(again["5"], first["5"])
    changed = TensorImages(images.images + 0.1, images.targets, images.classes)
    probes.stage_features(tiny_cnn, changed, stages=["5"], cache_dir=tmp_path)
    with torch.no_grad():
        tiny_cnn[0].weight.add_(0.1)
    moved, _, _ = probes.stage_features(tiny_cnn, images, stages=["5"], cache_dir=tmp_path)
    assert len(list(tmp_path.glob("stages-*.pt"))) == 3 and not torch.allclose(moved["5"], first["5"])


def test_stage_features_cache_is_keyed_by_labels(tiny_cnn, images, tmp_path):
    probes.stage_features(tiny_cnn, images, stages=["5"], cache_dir=tmp_path)
    relabelled = TensorImages(images.images, [2, 2, 1, 1, 0, 0, 0], images.classes)
    _, _, labels = probes.stage_features(tiny_cnn, relabelled, stages=["5"], cache_dir=tmp_path)
    assert labels.tolist() == [2, 2, 1, 1, 0, 0, 0], "the same images with other labels are not served the old labels"
    assert len(list(tmp_path.glob("stages-*.pt"))) == 2


def test_a_damaged_cache_file_is_reported_and_recomputed(tiny_cnn, images, tmp_path):
    first, _, _ = probes.stage_features(tiny_cnn, images, stages=["2"], cache_dir=tmp_path)
    (path,) = tmp_path.glob("stages-*.pt")
    path.write_bytes(b"not a torch file")
    with pytest.warns(RuntimeWarning, match="is damaged .*computing it again"):
        again, _, _ = probes.stage_features(tiny_cnn, images, stages=["2"], cache_dir=tmp_path)
    assert torch.equal(again["2"], first["2"])
    assert probes.stage_features(tiny_cnn, images, stages=["2"], cache_dir=tmp_path).engine.startswith("cache")


def test_onnx_runtime_gives_the_eager_stage_features(tiny_cnn, images):
    pytest.importorskip("onnxruntime")
    eager = probes.stage_features(tiny_cnn, images, stages=["2", "5", "8"], maps=["5"], batch_size=3, engine="torch")
    fast = probes.stage_features(tiny_cnn, images, stages=["2", "5", "8"], maps=["5"], batch_size=3,
                                 engine="onnxruntime", device="cpu")
    assert (eager.engine, fast.engine) == ("torch", "onnxruntime")
    for got, want in zip(fast[:2], eager[:2]):
        assert list(got) == list(want)
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-4)
    assert torch.equal(fast[2], eager[2])
    assert all(not m._forward_hooks for m in tiny_cnn.modules()), "every hook is removed"


def test_folder_datasets_are_keyed_by_their_files_like_extract_features(tiny_cnn, tiny_dataset, tmp_path):
    import os
    import shutil

    from torchvision.transforms import v2

    from course_utils.data import folders

    shutil.copytree(tiny_dataset / "val", tmp_path / "val")
    transform = v2.Compose([v2.Resize((12, 12)), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    folder = folders.image_folder(tmp_path / "val", transform=transform)
    cache = tmp_path / "cache"
    probes.stage_features(tiny_cnn, folder, stages=["5"], cache_dir=cache)
    assert probes.stage_features(tiny_cnn, folder, stages=["5"], cache_dir=cache).engine == "cache (computed by torch)"
    path = folder.samples[0][0]
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same pixels, but the file was replaced
    assert probes.stage_features(tiny_cnn, folder, stages=["5"], cache_dir=cache).engine == "torch"


@pytest.mark.parametrize("kwargs, message", [
    ({"stages": []}, "stages is empty"),
    ({"stages": ["9"]}, "Unknown layer name"),
    ({"stages": ["2"], "batch_size": 0}, r"batch_size must be a positive integer such as 64, got 0\. It is how"),
])
def test_stage_features_rejects_bad_arguments(tiny_cnn, images, kwargs, message):
    with pytest.raises(ValueError, match=message):
        probes.stage_features(tiny_cnn, images, **kwargs)
    assert all(not m._forward_hooks for m in tiny_cnn.modules())


def test_per_class_subset():
    labels = torch.tensor([0] * 6 + [1] * 4 + [2] * 5)
    chosen = probes.per_class_subset(labels, 3, seed=0)
    assert torch.bincount(labels[chosen]).tolist() == [3, 3, 3]
    assert chosen.tolist() == sorted(chosen.tolist())
    assert torch.equal(chosen, probes.per_class_subset(labels, 3, seed=0))
    assert any(not torch.equal(chosen, probes.per_class_subset(labels, 3, seed=s)) for s in (1, 2, 3))
    assert torch.equal(probes.per_class_subset(labels, None, seed=0), torch.arange(15))
    with pytest.raises(ValueError, match="Class 1 has only 4 items, fewer than per_class=5"):
        probes.per_class_subset(labels, 5, seed=0)
    with pytest.raises(ValueError, match=r"per_class must be a positive integer such as 20, got 0\. .*None keeps all"):
        probes.per_class_subset(labels, 0, seed=0)


def test_linear_probe_separates_separable_classes():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0]])
    labels = torch.arange(3).repeat(10)
    features = centres[labels] + torch.randn(30, 3, generator=generator)
    predicted = probes.linear_probe(features[:21], labels[:21], features[21:])
    assert predicted.dtype == torch.int64 and torch.equal(predicted, labels[21:])
    with pytest.raises(ValueError, match="same D"):
        probes.linear_probe(features, labels, features[:, :2])
    with pytest.raises(ValueError, match="30 training features but 21 labels"):
        probes.linear_probe(features, labels[:21], features)

"""Feature extraction (head bypassed and restored), the on-disk feature cache, and train_head."""
import os
import shutil

import pytest
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from course_utils import data
from course_utils.data import folders
from course_utils.transfer import features


@pytest.fixture(autouse=True)
def _no_export_from_another_test(monkeypatch):
    """Every test starts without ONNX Runtime sessions memoised by an earlier one (engines.frozen_forward)."""
    from course_utils.deploy import engines

    monkeypatch.setattr(engines, "_SESSIONS", engines.OrderedDict())


def _images(n=6, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, size, size, generator=generator), torch.arange(n) % 3)


def _folder_dataset(folder):
    from torchvision.transforms import v2

    transform = v2.Compose([v2.Resize((24, 24)), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    return folders.image_folder(folder, transform=transform)


def _raise_on_forward(model):
    def hook(module, args):
        raise RuntimeError("the model ran")
    return model.register_forward_pre_hook(hook)


def test_features_equal_forward_features_and_pool():
    timm = pytest.importorskip("timm")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=5).eval()
    dataset = _images()
    feats, labels = features.extract_features(model, dataset, batch_size=4, progress=False)
    with torch.no_grad():
        reference = model.forward_head(model.forward_features(dataset.tensors[0]), pre_logits=True)
    assert feats.shape == (6, 1280) and labels.tolist() == [0, 1, 2, 0, 1, 2]
    torch.testing.assert_close(feats, reference, rtol=1e-4, atol=1e-5)
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == 5


def test_model_mode_is_restored(tiny_cnn):
    tiny_cnn.train()
    feats, _ = features.extract_features(tiny_cnn, _images(), progress=False)
    assert tiny_cnn.training and feats.shape == (6, 16)
    torch.testing.assert_close(feats, tiny_cnn.eval()[:-1](_images().tensors[0]))


def test_head_is_restored_when_forward_raises(tiny_cnn):
    head = tiny_cnn[8]
    _raise_on_forward(tiny_cnn[0])
    with pytest.raises(RuntimeError, match="the model ran"):
        features.extract_features(tiny_cnn, _images(), progress=False)
    assert tiny_cnn[8] is head
    with pytest.raises(KeyError), features.head_removed(tiny_cnn):
        assert isinstance(tiny_cnn[8], nn.Identity)
        raise KeyError("inside the block")
    assert tiny_cnn[8] is head


def test_cache_hit_returns_identical_tensors_without_running_the_model(tiny_cnn, tiny_dataset, tmp_path):
    dataset = _folder_dataset(tiny_dataset / "train")
    first = features.extract_features(tiny_cnn, dataset, cache_dir=tmp_path, cache_key="tiny", progress=False)
    assert len(list(tmp_path.glob("*.pt"))) == 1 and not list(tmp_path.glob(".*.tmp"))
    _raise_on_forward(tiny_cnn[0])
    second = features.extract_features(tiny_cnn, dataset, cache_dir=tmp_path, cache_key="tiny", progress=False)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_changed_file_list_misses_the_cache(tiny_cnn, tiny_dataset, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_dataset / "train", folder)
    dataset = _folder_dataset(folder)
    cache = tmp_path / "cache"
    features.extract_features(tiny_cnn, dataset, cache_dir=cache, cache_key="tiny", progress=False)
    _raise_on_forward(tiny_cnn[0])
    with pytest.raises(RuntimeError, match="the model ran"):  # a subset is a different file list
        features.extract_features(tiny_cnn, Subset(dataset, [0, 1, 2]), cache_dir=cache, progress=False,
                                  cache_key="tiny")
    with pytest.raises(RuntimeError, match="the model ran"):  # another cache key (preprocessing)
        features.extract_features(tiny_cnn, dataset, cache_dir=cache, cache_key="other", progress=False)
    path = dataset.samples[0][0]
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file was replaced
    with pytest.raises(RuntimeError, match="the model ran"):
        features.extract_features(tiny_cnn, dataset, cache_dir=cache, cache_key="tiny", progress=False)


def _cached(model, dataset, cache) -> bool:
    """True if extract_features answered from the cache (the model did not run)."""
    handle = _raise_on_forward(model)
    try:
        features.extract_features(model, dataset, cache_dir=cache, progress=False)
        return True
    except RuntimeError as err:
        assert "the model ran" in str(err)
        return False
    finally:
        handle.remove()


def test_changed_weights_miss_the_cache_and_the_same_weights_hit_it(tiny_cnn, tiny_dataset, tmp_path):
    dataset = _folder_dataset(tiny_dataset / "train")
    features.extract_features(tiny_cnn, dataset, cache_dir=tmp_path, progress=False)
    assert _cached(tiny_cnn, dataset, tmp_path)  # same files, same transform, same weights
    weight, statistics = tiny_cnn[0].weight.detach().clone(), tiny_cnn[4].running_mean.clone()
    with torch.no_grad():
        tiny_cnn[0].weight.add_(1.0)  # other backbone weights, nothing else changed
    assert not _cached(tiny_cnn, dataset, tmp_path)
    with torch.no_grad():
        tiny_cnn[0].weight.copy_(weight)
        tiny_cnn[4].running_mean.add_(1.0)  # a buffer (BatchNorm statistics) changes the features too
    assert not _cached(tiny_cnn, dataset, tmp_path)
    with torch.no_grad():
        tiny_cnn[4].running_mean.copy_(statistics)
        tiny_cnn[8].weight.add_(1.0)  # the head is bypassed: it does not change the features
    assert _cached(tiny_cnn, dataset, tmp_path)


def test_changed_transform_misses_the_cache(tiny_cnn, tiny_dataset, tmp_path):
    from torchvision.transforms import v2

    from course_utils.models.weights import Preprocessing

    pre = Preprocessing(resize=20, crop=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    folder = folders.image_folder(tiny_dataset / "val")
    cached = data.CachedImages(folder, size=pre.resize, transform=data.build_transforms(pre)["val"])
    features.extract_features(tiny_cnn, cached, cache_dir=tmp_path, progress=False)
    assert _cached(tiny_cnn, cached, tmp_path)
    cached.transform = data.build_transforms(Preprocessing(20, 16, mean=(0.4,) * 3, std=(0.5,) * 3))["val"]
    assert not _cached(tiny_cnn, cached, tmp_path), "only Normalize's mean changed: new features"
    other_size = data.CachedImages(folder, size=24, transform=data.build_transforms(pre)["val"])
    assert not _cached(tiny_cnn, other_size, tmp_path), "images cached at another size"
    wrapped = data.Transformed(folder, v2.Compose([v2.Resize((16, 16)), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]))
    features.extract_features(tiny_cnn, wrapped, cache_dir=tmp_path, progress=False)
    wrapped.transform = v2.Compose([v2.Resize((16, 16)), v2.ToImage(), v2.ToDtype(torch.float32, scale=False)])
    assert not _cached(tiny_cnn, wrapped, tmp_path)


def test_cache_needs_a_file_list(tiny_cnn, tmp_path):
    with pytest.raises(TypeError, match="cache_dir=None"):
        features.extract_features(tiny_cnn, _images(), cache_dir=tmp_path, progress=False)


def test_onnx_runtime_gives_the_eager_features_and_says_so(tiny_cnn):
    pytest.importorskip("onnxruntime")
    eager = features.extract_features(tiny_cnn, _images(), progress=False, engine="torch")
    fast = features.extract_features(tiny_cnn, _images(), progress=False, engine="onnxruntime", batch_size=4)
    assert (eager.engine, fast.engine) == ("torch", "onnxruntime")
    torch.testing.assert_close(fast[0], eager[0], rtol=1e-4, atol=1e-4)
    assert torch.equal(fast[1], eager[1]) and not fast[0].is_inference()
    assert features.extract_features(tiny_cnn, _images(n=5), progress=False, batch_size=4).engine == "onnxruntime", \
        "exported before, at this batch size"
    assert features.extract_features(tiny_cnn, _images(size=24), progress=False).engine == "torch", "too few pixels"


def test_real_backbone_on_onnx_runtime_matches_eager():
    timm = pytest.importorskip("timm")
    pytest.importorskip("onnxruntime")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=3).eval()  # Conv2dSame
    dataset = _images(n=5, size=48)
    eager = features.extract_features(model, dataset, progress=False, engine="torch")
    fast = features.extract_features(model, dataset, progress=False, engine="onnxruntime")
    torch.testing.assert_close(fast[0], eager[0], rtol=1e-4, atol=1e-4)


def test_engine_falls_back_to_eager_with_a_warning(tiny_cnn, monkeypatch):
    import importlib.util

    from course_utils import deploy
    from course_utils.deploy import engines

    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(engines, "ONNX_MIN_PIXELS", 1)

    def broken(*args, **kwargs):
        raise RuntimeError("cannot export this")

    monkeypatch.setattr(deploy, "export_onnx", broken)
    with pytest.warns(RuntimeWarning, match="cannot export this"):
        result = features.extract_features(tiny_cnn, _images(), progress=False)
    assert result.engine == "torch"
    with pytest.raises(RuntimeError, match="cannot export this"):
        features.extract_features(tiny_cnn, _images(), progress=False, engine="onnxruntime")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert features.extract_features(tiny_cnn, _images(), progress=False).engine == "torch"
    with pytest.raises(ValueError, match=r"pip install \"course-utils\[deploy\]\""):
        features.extract_features(tiny_cnn, _images(), progress=False, engine="onnxruntime")
    with pytest.raises(ValueError, match="engine must be one of"):
        features.extract_features(tiny_cnn, _images(), progress=False, engine="tensorrt")


def test_onnx_runs_batches_of_the_exported_size_and_pads_the_last_one(tiny_cnn):
    from course_utils.deploy import engines

    pytest.importorskip("onnxruntime")
    engines._SESSIONS.clear()
    fast = features.extract_features(tiny_cnn, _images(n=7), batch_size=3, progress=False, engine="onnxruntime")
    eager = features.extract_features(tiny_cnn, _images(n=7), batch_size=3, progress=False, engine="torch")
    assert fast.engine == "onnxruntime" and len(fast[0]) == 7   # batches of 3, 3 and 1 (padded to 3)
    torch.testing.assert_close(fast[0], eager[0], rtol=1e-4, atol=1e-4)
    (session,) = engines._SESSIONS.values()
    assert session.get_inputs()[0].shape == [3, 3, 32, 32], "the export's batch size is fixed"
    engines._SESSIONS.clear()
    whole = features.extract_features(tiny_cnn, _images(n=2), batch_size=32, progress=False, engine="onnxruntime")
    assert next(iter(engines._SESSIONS.values())).get_inputs()[0].shape[0] == 2, "no larger than the job"
    torch.testing.assert_close(whole[0], eager[0][:2], rtol=1e-4, atol=1e-4)


def test_cache_hit_does_not_depend_on_the_engine(tiny_cnn, tiny_dataset, tmp_path):
    pytest.importorskip("onnxruntime")
    dataset = _folder_dataset(tiny_dataset / "train")
    fast = features.extract_features(tiny_cnn, dataset, cache_dir=tmp_path, progress=False, engine="onnxruntime")
    assert _cached(tiny_cnn, dataset, tmp_path), "an eager call is served the file ONNX Runtime wrote"
    hit = features.extract_features(tiny_cnn, dataset, cache_dir=tmp_path, progress=False, engine="torch")
    assert hit.engine == "cache (computed by onnxruntime)" and torch.equal(hit[0], fast[0])
    eager = features.extract_features(tiny_cnn, dataset, progress=False, engine="torch")
    torch.testing.assert_close(hit[0], eager[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("damage", [b"not a torch file", b"", "no labels"])
def test_a_damaged_cache_file_is_reported_and_rebuilt(tiny_cnn, tiny_dataset, tmp_path, damage):
    dataset = _folder_dataset(tiny_dataset / "train")
    first = features.extract_features(tiny_cnn, dataset, cache_dir=tmp_path, progress=False)
    (path,) = tmp_path.glob("features-*.pt")
    if isinstance(damage, bytes):
        path.write_bytes(damage)
    else:
        torch.save({"features": first[0]}, path)
    with pytest.warns(RuntimeWarning, match=f"cache file {path} is damaged"):
        again = features.extract_features(tiny_cnn, dataset, cache_dir=tmp_path, progress=False)
    assert torch.equal(again[0], first[0]) and again.engine == "torch"
    assert _cached(tiny_cnn, dataset, tmp_path), "the damaged file was overwritten"


def _blobs(n, seed):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    centres = torch.eye(3, 8) * 4
    return centres[labels] + torch.randn(n, 8, generator=generator), labels


def test_train_head_learns_a_separable_problem(monkeypatch):
    (xt, yt), (xv, yv) = _blobs(90, 0), _blobs(30, 1)
    state = torch.get_rng_state()
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    head, history = features.train_head(xt, yt, xv, yv, num_classes=3, epochs=20, lr=1e-2)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    assert reseeded == [], "features on the CPU must not reseed the GPUs' generators"
    assert isinstance(head, nn.Linear) and head.out_features == 3 and not head.training
    assert set(history[0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"}
    assert len(history) == 20 and history[-1]["val_acc"] >= 0.9
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    again, _ = features.train_head(xt, yt, xv, yv, num_classes=3, epochs=20, lr=1e-2)
    assert torch.equal(head.weight, again.weight)  # same seed, same head


def test_train_head_two_layer_head_has_named_layers():
    (xt, yt), (xv, yv) = _blobs(60, 0), _blobs(30, 1)
    head, history = features.train_head(xt, yt, xv, yv, num_classes=3, epochs=15, hidden=16, lr=1e-2)
    assert [name for name, _ in head.named_children()] == ["fc1", "relu", "dropout", "fc2"]
    assert head.fc1.out_features == 16 and head(xv).shape == (30, 3)
    assert history[-1]["val_acc"] >= 0.9


def test_train_head_on_extracted_features(tiny_cnn):
    feats, labels = features.extract_features(tiny_cnn, _images(), progress=False)
    head, history = features.train_head(feats, labels, feats, labels, num_classes=3, epochs=2)
    assert head(feats).shape == (6, 3) and len(history) == 2


def test_train_head_rejects_bad_input():
    (xt, yt), (xv, yv) = _blobs(30, 0), _blobs(12, 1)
    with pytest.raises(ValueError, match="num_classes=2"):
        features.train_head(xt, yt, xv, yv, num_classes=2)
    with pytest.raises(ValueError, match="train 8, val 4"):
        features.train_head(xt, yt, xv[:, :4], yv, num_classes=3)
    with pytest.raises(ValueError, match=r"\(30, 8\) and \(29,\)"):
        features.train_head(xt, yt[:-1], xv, yv, num_classes=3)
    with pytest.raises(ValueError, match=r"num_classes must be an integer of at least 2, got True\. Pass num_class"):
        features.train_head(xt, yt, xv, yv, num_classes=True)
    with pytest.raises(ValueError, match=r"lr must be a positive number such as 1e-3, got 0\. lr=0 trains nothing"):
        features.train_head(xt, yt, xv, yv, num_classes=3, lr=0)


def test_extract_features_refuses_a_bad_batch_size(tiny_cnn):
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer such as 64, got 0\. It is how"):
        features.extract_features(tiny_cnn, _images(), batch_size=0, progress=False)


def test_train_head_is_the_plain_pytorch_loop_over_a_tensor_dataset():
    from torch.utils.data import DataLoader, TensorDataset

    generator = torch.Generator().manual_seed(2)
    labels = torch.arange(50) % 5
    feats = torch.randn(50, 6, generator=generator) + nn.functional.one_hot(labels, 6).float() * 2
    head, history = features.train_head(feats, labels, feats[:20], labels[:20], num_classes=5, epochs=4,
                                        lr=1e-2, batch_size=16, seed=7)
    torch.manual_seed(7)  # the reference, written out: same seed for the weights and the shuffles
    reference = nn.Linear(6, 5)
    optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-2)
    loader = DataLoader(TensorDataset(feats, labels), batch_size=16, shuffle=True,
                        generator=torch.Generator().manual_seed(7))
    for _ in range(4):
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(reference(x), y).backward()
            optimizer.step()
    torch.testing.assert_close(head.weight, reference.weight)
    with torch.no_grad():
        val_acc = (reference(feats[:20]).argmax(1) == labels[:20]).float().mean().item()
    assert history[-1]["val_acc"] == pytest.approx(val_acc)


def test_train_head_keeps_the_last_epoch_unless_asked_for_the_best():
    (xt, _), (xv, yv) = _blobs(60, 0), _blobs(30, 1)
    yt = torch.randint(0, 3, (60,), generator=torch.Generator().manual_seed(4))  # noise: val accuracy wanders
    kwargs = dict(num_classes=3, epochs=8, lr=0.5, batch_size=8, seed=1)
    last, history = features.train_head(xt, yt, xv, yv, **kwargs)
    best, again = features.train_head(xt, yt, xv, yv, restore_best=True, **kwargs)
    accuracies = [row["val_acc"] for row in history]
    assert accuracies == [row["val_acc"] for row in again] and max(accuracies) > accuracies[-1]
    with torch.no_grad():
        assert (last(xv).argmax(1) == yv).float().mean().item() == pytest.approx(accuracies[-1])
        assert (best(xv).argmax(1) == yv).float().mean().item() == pytest.approx(max(accuracies))

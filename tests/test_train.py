"""course_utils.train: seeding, devices, the training/evaluation loops, fit and its checkpoint file."""
import copy
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from course_utils import train
from course_utils.models import checkpoints

CPU = torch.device("cpu")
HISTORY_KEYS = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"}


def _blobs(n_per_class: int = 20, seed: int = 0) -> TensorDataset:
    """Three well separated 2-D clusters: a linear model can learn them."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[4.0, 0.0], [-4.0, 4.0], [0.0, -4.0]])
    labels = torch.arange(3).repeat_interleave(n_per_class)
    points = centres[labels] + torch.randn(len(labels), 2, generator=generator)
    return TensorDataset(points, labels)


def _images(count: int, seed: int) -> TensorDataset:
    """Tiny 8x8 images of 5 classes; the class sets the brightness."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 5
    images = torch.rand(count, 3, 8, 8, generator=generator) * 0.2 + labels.view(-1, 1, 1, 1) / 5
    return TensorDataset(images, labels)


def test_seed_everything_repeats_torch_numpy_and_random():
    def draw():
        return torch.rand(3), np.random.rand(3), random.random()

    train.seed_everything(123)
    first = draw()
    train.seed_everything(123)
    second = draw()
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])
    assert first[2] == second[2]
    train.seed_everything(124)
    assert not torch.equal(draw()[0], first[0])


def test_select_device():
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert train.select_device() == torch.device(expected)  # cpu on the course's laptops and CI
    assert train.select_device("cpu") == torch.device("cpu")


def test_select_device_rejects_unknown_names():
    with pytest.raises(ValueError, match="'tpu'") as info:
        train.select_device("tpu")
    assert "cpu" in str(info.value) and "None" in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_select_device_rejects_unavailable_cuda():
    with pytest.raises(ValueError, match="'cuda' is not available"):
        train.select_device("cuda")


def test_accuracy_on_a_hand_made_example():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.5, 0.1, 0.9], [1.0, 0.0, 2.0]])
    assert train.accuracy(logits, torch.tensor([0, 1, 2, 0])) == pytest.approx(0.75)
    assert train.accuracy(logits, torch.tensor([1, 0, 0, 1])) == 0.0


def test_train_one_epoch_lowers_the_loss():
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = DataLoader(_blobs(), batch_size=10, shuffle=True)
    results = [train.train_one_epoch(model, nn.CrossEntropyLoss(), optimizer, loader, CPU, progress=False)
               for _ in range(4)]
    assert set(results[0]) == {"loss", "acc"}
    losses = [r["loss"] for r in results]
    assert losses[-1] < losses[0] * 0.5, f"loss did not fall: {losses}"
    assert results[-1]["acc"] >= 0.9
    assert model.training


def test_train_one_epoch_on_images(tiny_cnn):
    loader = DataLoader(_images(10, seed=0), batch_size=5)
    before = [p.detach().clone() for p in tiny_cnn.parameters()]
    optimizer = torch.optim.SGD(tiny_cnn.parameters(), lr=0.1)
    result = train.train_one_epoch(tiny_cnn, nn.CrossEntropyLoss(), optimizer, loader, CPU, progress=False)
    assert 0 <= result["acc"] <= 1 and result["loss"] > 0
    assert all(not torch.equal(a, b) for a, b in zip(before, tiny_cnn.parameters()))


def test_evaluate_is_in_eval_mode_and_builds_no_graph(tiny_cnn):
    seen = []

    def criterion(logits, targets):
        seen.append((tiny_cnn.training, logits.requires_grad, logits.grad_fn))
        return nn.functional.cross_entropy(logits, targets)

    tiny_cnn.train()
    stats = tiny_cnn[1].running_mean.clone()
    loader = DataLoader(_images(10, seed=1), batch_size=4)
    result = train.evaluate(tiny_cnn, criterion, loader, CPU, progress=False)
    assert len(seen) == 3 and all(s == (False, False, None) for s in seen)
    assert not any(m.training for m in tiny_cnn.modules())
    assert torch.equal(tiny_cnn[1].running_mean, stats), "BatchNorm statistics must not change"
    assert all(p.grad is None for p in tiny_cnn.parameters())
    assert set(result) == {"loss", "acc"}
    assert result["acc"] in {i / 10 for i in range(11)}


def test_fit_history_and_checkpoint(tiny_cnn, tmp_path):
    train_loader = DataLoader(_images(20, seed=0), batch_size=5, shuffle=True)
    val_loader = DataLoader(_images(10, seed=1), batch_size=5)
    optimizer = torch.optim.SGD(tiny_cnn.parameters(), lr=0.1)
    path = tmp_path / "runs" / "best.pt"
    history = train.fit(tiny_cnn, nn.CrossEntropyLoss(), optimizer, train_loader, val_loader, CPU, epochs=3,
                        checkpoint=path, progress=False)
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert all(set(row) == HISTORY_KEYS for row in history)
    assert all(0 <= row["val_acc"] <= 1 and row["seconds"] >= 0 for row in history)
    saved = checkpoints.load(path, into=copy.deepcopy(tiny_cnn)).model.state_dict()
    assert all(torch.equal(saved[key], tensor) for key, tensor in tiny_cnn.state_dict().items())
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"], "no temporary files left"


class _FlippingLabels:
    """Training batches labelled class 0 in the first epoch and class 1 afterwards."""

    def __init__(self, inputs: torch.Tensor) -> None:
        self.inputs, self.passes = inputs, 0

    def __iter__(self):
        self.passes += 1
        label = 0 if self.passes == 1 else 1
        for batch in self.inputs.split(10):
            yield batch, torch.full((len(batch),), label)


def test_fit_restores_the_best_epoch(tmp_path):
    # Validation wants class 0: epoch 1 learns it (best), epochs 2 and 3 unlearn it.
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    inputs = torch.randn(100, 2)
    val_loader = [(inputs[:20], torch.zeros(20, dtype=torch.long))]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    path = tmp_path / "best.pt"
    history = train.fit(model, nn.CrossEntropyLoss(), optimizer, _FlippingLabels(inputs), val_loader, CPU,
                        epochs=3, checkpoint=path, progress=False)
    accuracies = [row["val_acc"] for row in history]
    assert accuracies[0] == 1.0 and accuracies[-1] < 0.5, accuracies
    assert train.evaluate(model, nn.CrossEntropyLoss(), val_loader, CPU, progress=False)["acc"] == 1.0
    for key, tensor in checkpoints.load(path, into=nn.Linear(2, 3)).model.state_dict().items():
        assert torch.equal(model.state_dict()[key], tensor)


@pytest.mark.parametrize("epochs", [0, -1, 2.0, True])
def test_fit_rejects_bad_epochs(tiny_cnn, epochs):
    loader = DataLoader(_images(5, seed=0), batch_size=5)
    optimizer = torch.optim.SGD(tiny_cnn.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=rf"epochs must be a positive integer such as 5, got {epochs!r}\. .*loader"):
        train.fit(tiny_cnn, nn.CrossEntropyLoss(), optimizer, loader, loader, CPU, epochs=epochs, progress=False)


def test_predict_returns_every_logit_in_order_in_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5), nn.Dropout(0.5)).train()
    dataset = _images(23, seed=3)
    logits, labels = train.predict(model, DataLoader(dataset, batch_size=4), CPU)
    assert logits.shape == (23, 5) and labels.tolist() == dataset.tensors[1].tolist()
    assert not model.training and not logits.is_inference()  # usable in later autograd code
    with torch.no_grad():
        assert torch.allclose(logits, model(dataset.tensors[0]), atol=1e-6)  # dropout off: eval mode
    with pytest.raises(ValueError, match="no batch"):
        train.predict(model, [], CPU)


def test_select_device_accepts_indices_and_devices(monkeypatch):
    assert train.select_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert train.select_device("cuda:1") == torch.device("cuda", 1)
    assert train.select_device("cuda") == torch.device("cuda")
    with pytest.raises(ValueError, match=r"'cuda:2' is not available.*2 CUDA devices"):
        train.select_device("cuda:2")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_select_device_rejects_an_unavailable_cuda_index():
    with pytest.raises(ValueError, match="'cuda:0' is not available"):
        train.select_device("cuda:0")


def test_fit_accepts_a_device_name_and_keeps_the_best_epoch_without_a_checkpoint():
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    inputs = torch.randn(100, 2)
    val_loader = [(inputs[:20], torch.zeros(20, dtype=torch.long))]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    history = train.fit(model, nn.CrossEntropyLoss(), optimizer, _FlippingLabels(inputs), val_loader, "cpu",
                        epochs=3, progress=False)
    assert history[0]["val_acc"] == 1.0 and history[-1]["val_acc"] < 0.5
    assert train.evaluate(model, nn.CrossEntropyLoss(), val_loader, "cpu", progress=False)["acc"] == 1.0
    last = train.fit(model, nn.CrossEntropyLoss(), optimizer, _FlippingLabels(inputs), val_loader, "cpu",
                     epochs=3, progress=False, restore_best=False)
    final = train.evaluate(model, nn.CrossEntropyLoss(), val_loader, "cpu", progress=False)
    assert final["acc"] == last[-1]["val_acc"] < 1.0, "restore_best=False keeps the last epoch"


def test_fit_without_a_val_loader_trains_as_with_one_and_evaluates_nothing(monkeypatch):
    def run(val_loader):
        torch.manual_seed(0)
        model = nn.Linear(2, 3)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        history = train.fit(model, nn.CrossEntropyLoss(), optimizer, _FlippingLabels(torch.randn(100, 2)),
                            val_loader, CPU, epochs=3, progress=False, restore_best=False)
        return model, history

    inputs = torch.randn(20, 2)
    with_val, with_history = run([(inputs, torch.zeros(20, dtype=torch.long))])
    monkeypatch.setattr(train, "evaluate", lambda *args, **kwargs: pytest.fail("evaluate ran without a val_loader"))
    without, history = run(None)
    assert [set(row) for row in history] == [HISTORY_KEYS - {"val_loss", "val_acc"}] * 3
    assert [row["train_loss"] for row in history] == [row["train_loss"] for row in with_history]
    assert torch.equal(without.weight, with_val.weight), "the same training, only the evaluation skipped"


@pytest.mark.parametrize("keep", [{"restore_best": True}, {"restore_best": False, "checkpoint": "best.pt"}])
def test_fit_without_a_val_loader_refuses_to_pick_a_best_epoch(tiny_cnn, keep, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loader = DataLoader(_images(5, seed=0), batch_size=5)
    optimizer = torch.optim.SGD(tiny_cnn.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"val_loader=None, (restore_best=True|checkpoint='best.pt').*"
                                         r"restore_best=False and no checkpoint"):
        train.fit(tiny_cnn, nn.CrossEntropyLoss(), optimizer, loader, None, CPU, epochs=1, progress=False, **keep)
    assert not (tmp_path / "best.pt").exists()


def test_fit_refuses_a_head_that_does_not_fit_the_classes(tiny_dataset):
    from course_utils import data
    from course_utils.data import folders

    dataset = data.CachedImages(folders.find_splits(tiny_dataset)["train"], size=8, transform=_as_float)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1000))
    before = model[3].weight.detach().clone()
    loader = DataLoader(dataset, batch_size=4)
    with pytest.raises(ValueError, match=r"'3' of the model has 1000 outputs.*3 classes \(cats, dogs, owls\).*"
                                         r"replace_head\(model, 3\)"):
        train.fit(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1), loader, loader, CPU,
                  epochs=1, progress=False)
    assert torch.equal(model[3].weight, before), "nothing was trained"


def _as_float(image: torch.Tensor) -> torch.Tensor:
    return image.float() / 255


def test_empty_loaders_are_a_clear_error(tiny_cnn):
    empty = DataLoader(TensorDataset(torch.zeros(0, 3, 8, 8), torch.zeros(0, dtype=torch.long)), batch_size=4)
    optimizer = torch.optim.SGD(tiny_cnn.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="yielded no batch"):
        train.train_one_epoch(tiny_cnn, nn.CrossEntropyLoss(), optimizer, empty, CPU, progress=False)
    with pytest.raises(ValueError, match="yielded no batch"):
        train.evaluate(tiny_cnn, nn.CrossEntropyLoss(), empty, CPU, progress=False)


def test_evaluate_weights_each_batch_by_its_size():
    # Batches of 3 and 1 images: the mean of the two batch losses would weight the single image 3x too much.
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    dataset = _blobs(n_per_class=1, seed=2)  # 3 points
    extra = TensorDataset(torch.tensor([[9.0, -9.0]]), torch.tensor([1]))
    loader = DataLoader(torch.utils.data.ConcatDataset([dataset, extra]), batch_size=3)
    result = train.evaluate(model, nn.CrossEntropyLoss(), loader, CPU, progress=False)
    points = torch.cat([dataset.tensors[0], extra.tensors[0]])
    labels = torch.cat([dataset.tensors[1], extra.tensors[1]])
    with torch.no_grad():
        expected = nn.functional.cross_entropy(model(points), labels).item()
    assert result["loss"] == pytest.approx(expected, rel=1e-6)


class _RecordingScaler:
    """Stands in for torch.amp.GradScaler: records the calls, scales the loss by 4."""

    def __init__(self):
        self.calls = []

    def scale(self, loss):
        self.calls.append("scale")
        return loss * 4

    def step(self, optimizer):
        self.calls.append("step")
        optimizer.step()

    def update(self):
        self.calls.append("update")


def test_train_one_epoch_goes_through_the_scaler():
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    loader = DataLoader(_blobs(n_per_class=4), batch_size=6)  # 2 batches
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # weights stay, gradients are kept
    scaler = _RecordingScaler()
    train.train_one_epoch(model, nn.CrossEntropyLoss(), optimizer, loader, CPU, scaler=scaler, progress=False)
    assert scaler.calls == ["scale", "step", "update"] * 2
    last_images, last_targets = list(loader)[-1]
    model.zero_grad()
    nn.functional.cross_entropy(model(last_images), last_targets).backward()
    plain = model.weight.grad.clone()
    model.zero_grad()
    train.train_one_epoch(model, nn.CrossEntropyLoss(), optimizer, [(last_images, last_targets)], CPU,
                          scaler=_RecordingScaler(), progress=False)
    torch.testing.assert_close(model.weight.grad, 4 * plain)  # backward ran on the scaled loss


def test_a_single_image_gets_the_batch_dimension_hint(tiny_cnn):
    dataset = _images(4, seed=0)
    with pytest.raises(ValueError, match=r"shape \(3, 8, 8\).*unsqueeze\(0\)"):
        train.evaluate(tiny_cnn, nn.CrossEntropyLoss(), dataset, CPU, progress=False)  # a dataset, no DataLoader
    with pytest.raises(ValueError, match=r"unsqueeze\(0\)"):
        train.predict(tiny_cnn, [(dataset[0][0], 0)], CPU)


def test_fit_steps_a_batch_scheduler_after_every_optimizer_step():
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    loader = torch.utils.data.DataLoader(_blobs(n_per_class=10), batch_size=8)   # 30 points: 4 batches
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    train.fit(model, nn.CrossEntropyLoss(), optimizer, loader, loader, "cpu", epochs=2, progress=False,
              batch_scheduler=scheduler)
    assert scheduler.last_epoch == 2 * len(loader)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 8)


def _reference_step(model, optimizer, images, targets):
    """The plain PyTorch step that train.train_step must reproduce."""
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(images), targets)
    loss.backward()
    optimizer.step()
    return loss.item()


def test_train_step_is_the_plain_pytorch_step_and_shows_gradients_before_the_update(tiny_cnn):
    images, targets = _images(6, seed=3).tensors
    reference = copy.deepcopy(tiny_cnn)
    ours_opt = torch.optim.SGD(tiny_cnn.parameters(), lr=0.1, momentum=0.9)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    tiny_cnn.train(), reference.train()
    seen = []

    def after_backward(loss):  # gradients are there, the weights not yet changed
        seen.append((loss, tiny_cnn[8].weight.grad.clone(), tiny_cnn[8].weight.detach().clone()))

    for _ in range(2):
        before = tiny_cnn[8].weight.detach().clone()
        loss, logits = train.train_step(tiny_cnn, nn.CrossEntropyLoss(), ours_opt, images, targets,
                                        after_backward=after_backward)
        assert loss == pytest.approx(_reference_step(reference, ref_opt, images, targets), rel=1e-6)
        assert logits.shape == (6, 5) and not logits.requires_grad
        assert torch.equal(seen[-1][2], before) and seen[-1][0] == loss
        torch.testing.assert_close(seen[-1][1], reference[8].weight.grad)
    for ours, theirs in zip(tiny_cnn.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs)


def test_train_step_without_optimizer_only_computes_gradients():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    before = model.weight.detach().clone()
    inputs, targets = torch.randn(5, 4), torch.tensor([0, 1, 2, 1, 0])
    model.weight.grad = torch.ones_like(model.weight)  # stale: must not add up
    train.train_step(model, nn.CrossEntropyLoss(), None, inputs, targets)
    expected = torch.autograd.grad(nn.functional.cross_entropy(model(inputs), targets), model.weight)[0]
    assert torch.equal(model.weight, before)
    torch.testing.assert_close(model.weight.grad, expected)


def test_after_backward_can_set_each_steps_learning_rate():
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    loader = DataLoader(_blobs(), batch_size=20)
    used = []
    original_step = optimizer.step

    def spy(*args, **kwargs):
        used.append(optimizer.param_groups[0]["lr"])
        return original_step(*args, **kwargs)

    optimizer.step = spy

    def set_rate(loss):
        optimizer.param_groups[0]["lr"] = 0.01 * (len(used) + 1)

    train.train_one_epoch(model, nn.CrossEntropyLoss(), optimizer, loader, CPU, progress=False, after_backward=set_rate)
    assert used == pytest.approx([0.01, 0.02, 0.03])


def test_each_epoch_iterates_the_loader_once_as_a_plain_loop_does():
    """A plain `for x, y in loader` draws one shuffle per epoch from the loader's generator; so does fit."""
    iterations = []

    class Counted(DataLoader):
        def __iter__(self):
            iterations.append(1)
            return super().__iter__()

    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = Counted(_blobs(), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(5))
    reference_model = copy.deepcopy(model)
    reference_optimizer = torch.optim.SGD(reference_model.parameters(), lr=0.1)
    train.fit(model, nn.CrossEntropyLoss(), optimizer, loader, DataLoader(_blobs(seed=1), batch_size=30), CPU,
              epochs=2, progress=False, restore_best=False)
    assert len(iterations) == 2
    reference_loader = DataLoader(_blobs(), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(5))
    for _ in range(2):
        for points, labels in reference_loader:
            _reference_step(reference_model, reference_optimizer, points, labels)
    torch.testing.assert_close(model.weight, reference_model.weight)

"""course_utils.checks: right answers pass; plausible wrong answers fail with CheckFailed and a helpful message."""
import re

import numpy as np
import pytest
import torch
from torch import nn

from course_utils import checks
from course_utils.checks import CheckFailed

IMAGENET_MEAN = (0.485, 0.456, 0.406)


def fails(match: str):
    """``pytest.raises`` for CheckFailed (a subclass of AssertionError) with a literal message part."""
    return pytest.raises(CheckFailed, match=re.escape(match))


def _model(num_classes: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))


def test_check_failed_is_an_assertion_error():
    assert issubclass(CheckFailed, AssertionError)


def test_check_answered():
    assert checks.check_answered(0, "count") == 0
    with fails("`head` is still None: write your answer in the cell above and run it."):
        checks.check_answered(None, "head")


def test_check_implemented():
    def double(x):
        return 2 * x

    def freeze_all_but_head(model):
        raise NotImplementedError()

    assert checks.check_implemented(double, 21) == 42
    with fails("`freeze_all_but_head` is not implemented yet: replace `raise NotImplementedError()`."):
        checks.check_implemented(freeze_all_but_head, _model(3))


def test_check_implemented_lets_real_errors_through():
    def buggy(x):
        return x.nonexistent

    with pytest.raises(AttributeError):
        checks.check_implemented(buggy, 1)


def test_check_equal():
    checks.check_equal(["ants", "bees", "wasps"], ["ants", "bees", "wasps"], "classes")
    with fails("`num_classes` is 1000, expected 3. Use len(classes)."):
        checks.check_equal(1000, 3, "num_classes", hint="Use len(classes).")
    with fails("`num_classes` is still None"):
        checks.check_equal(None, 3, "num_classes")


def test_check_shape():
    checks.check_shape(torch.zeros(1, 3, 224, 224), (1, 3, 224, 224), "batch")
    with fails("`batch` has shape (3, 224, 224), expected (1, 3, 224, 224). Add a batch dimension: unsqueeze(0)."):
        checks.check_shape(torch.zeros(3, 224, 224), (1, 3, 224, 224), "batch",
                           hint="Add a batch dimension: unsqueeze(0).")
    with fails("`batch` should be a torch.Tensor, got ndarray."):
        checks.check_shape(np.zeros((1, 3, 224, 224)), (1, 3, 224, 224), "batch")
    with fails("`batch` is still None"):
        checks.check_shape(None, (1, 3), "batch")


def test_check_close():
    checks.check_close(torch.tensor(IMAGENET_MEAN), IMAGENET_MEAN, "mean")
    checks.check_close(0.30001, 0.3, "ratio")
    with fails("`mean` is off by up to 0.09") as info:
        checks.check_close((0.5, 0.5, 0.5), IMAGENET_MEAN, "mean", hint="Use the ImageNet statistics.")
    assert "(allowed 0.0001)" in str(info.value) and "Use the ImageNet statistics." in str(info.value)
    with fails("`mean` has shape (1,), expected (3,)."):
        checks.check_close([0.5], IMAGENET_MEAN, "mean")


def test_check_head():
    checks.check_head(_model(3), 3)
    with fails("The head `5` of `model` has 1000 outputs, but the dataset has 3 classes. "
               "Replace it with nn.Linear(4, 3)."):
        checks.check_head(_model(1000), 3)
    with fails("`model` is still None"):
        checks.check_head(None, 3)
    with fails("`model` should be an nn.Module, got tuple."):
        checks.check_head(("classifier", nn.Linear(4, 3)), 3)


def test_check_head_on_a_model_without_linear():
    model = _model(3)
    model[5] = nn.Identity()  # removed the head instead of replacing it
    with fails("has no nn.Linear layer"):
        checks.check_head(model, 3)


def _frozen_but_head(model: nn.Module) -> nn.Module:
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("5."))
    return model


def test_check_trainable_passes_on_a_frozen_backbone():
    checks.check_trainable(_frozen_but_head(_model(3)), ["5"])
    checks.check_trainable(_frozen_but_head(_model(3)), ["5."])
    checks.check_trainable(_frozen_but_head(_model(3)), ["5.weight", "5.bias"])


def test_check_trainable_forgot_to_freeze():
    model = _frozen_but_head(_model(3))
    model[1].weight.requires_grad_(True)  # forgot the BatchNorm
    with fails("1 parameters of `model` should be frozen but still train (first: 1.weight). "
               "Set requires_grad=False on everything outside 5."):
        checks.check_trainable(model, ["5"])
    with fails("4 parameters of `model` should be frozen but still train (first: 0.weight)"):
        checks.check_trainable(_model(3), ["5"])  # froze nothing at all


def test_check_trainable_froze_the_head_too():
    model = _model(3)
    for p in model.parameters():
        p.requires_grad_(False)
    with fails("2 parameters of `model` should train but are frozen (first: 5.weight). "
               "Keep requires_grad=True for 5."):
        checks.check_trainable(model, ["5"])


def test_check_trainable_matches_whole_module_names():
    # Sequential children 1 and 10..12: the prefix "1" means module 1, not every name starting with "1".
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(12)])
    for name, p in model.named_parameters():
        p.requires_grad_(name.split(".")[0] == "1")
    checks.check_trainable(model, ["1"])
    model[10].weight.requires_grad_(True)
    with fails("should be frozen but still train (first: 10.weight)"):
        checks.check_trainable(model, ["1"])


def test_check_at_least():
    checks.check_at_least(0.9, 0.8, "val_acc")
    checks.check_at_least(0.8, 0.8, "val_acc")
    checks.check_at_least(torch.tensor(0.9), 0.8, "val_acc")  # accuracy computed with tensor ops
    checks.check_at_least(np.float32(0.9), 0.8, "val_acc")
    with fails("`val_acc` is 0.55, expected at least 0.8. Train for more epochs."):
        checks.check_at_least(0.55, 0.8, "val_acc", hint="Train for more epochs.")
    with fails("`val_acc` is 0.5, expected at least 0.8."):
        checks.check_at_least(torch.tensor(0.5), 0.8, "val_acc")
    with fails("`val_acc` is still None"):
        checks.check_at_least(None, 0.8, "val_acc")
    with fails("`val_acc` should be a number, got str: '0.9'."):
        checks.check_at_least("0.9", 0.8, "val_acc")
    with fails("`val_acc` should be a number, got Tensor"):
        checks.check_at_least(torch.tensor([0.9, 0.7]), 0.8, "val_acc")
    with fails("`val_acc` is nan"):
        checks.check_at_least(float("nan"), 0.8, "val_acc")


def _epoch(model, criterion, optimizer, loader, accumulate=1, *, clear=True, step=True, scale=True,
           train=True, count_acc=True):
    """A correct epoch loop with gradient accumulation; each flag breaks one part of it."""
    if train:
        model.train()
    total_loss = correct = seen = 0
    for index, (inputs, targets) in enumerate(loader):
        logits = model(inputs)
        loss = criterion(logits, targets)
        (loss / accumulate if scale else loss).backward()
        if (index + 1) % accumulate == 0:
            if step:
                optimizer.step()
            if clear:
                optimizer.zero_grad()
        total_loss += loss.item() * len(targets)
        correct += (logits.argmax(1) == targets).sum().item() if count_acc else 0
        seen += len(targets)
    return {"loss": total_loss / seen, "acc": correct / seen}


def test_check_epoch_loop_passes_a_correct_loop_and_returns_its_result():
    result = checks.check_epoch_loop(_epoch, "my_epoch")
    assert set(result) == {"loss", "acc"} and 0 < result["acc"] < 1
    checks.check_epoch_loop(_epoch, "my_epoch", accumulate=2)
    checks.check_epoch_loop(_epoch, "my_epoch", accumulate=3, batch_size=2)


@pytest.mark.parametrize("broken, accumulate, message", [
    ({"clear": False}, 1, "weights differ from the reference loop's"),
    ({"scale": False}, 2, "divide each loss by accumulate"),
    ({"step": False}, 1, "did not change the weights: call loss.backward() and optimizer.step()"),
    ({"train": False}, 1, "left the model in eval mode"),
    ({"count_acc": False}, 1, "returned acc=0.0, expected"),
])
def test_check_epoch_loop_fails_each_broken_loop(broken, accumulate, message):
    def loop(model, criterion, optimizer, loader, **kwargs):
        return _epoch(model, criterion, optimizer, loader, **kwargs, **broken)

    with fails(message):
        checks.check_epoch_loop(loop, "my_epoch", accumulate=accumulate)


def test_check_epoch_loop_unfinished_or_wrong_return():
    def unfinished(model, criterion, optimizer, loader):
        raise NotImplementedError()

    with fails("`unfinished` is not implemented yet"):
        checks.check_epoch_loop(unfinished, "unfinished")
    with fails("`my_epoch` returned None; return a dict"):
        checks.check_epoch_loop(lambda *args: None, "my_epoch")

    def loss_of_last_batch(model, criterion, optimizer, loader):
        result = _epoch(model, criterion, optimizer, loader)
        return {**result, "loss": result["loss"] * 1.5}

    with fails("`my_epoch` returned loss="):
        checks.check_epoch_loop(loss_of_last_batch, "my_epoch")
def _pipeline(*steps):
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomResizedCrop(20, scale=(0.5, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                       v2.ColorJitter(brightness=0.3, contrast=0.3), *steps])


def test_check_normalizes_passes_a_random_pipeline_that_ends_right():
    from torchvision.transforms import v2

    torch.manual_seed(0)
    for _ in range(5):  # several draws of the random transforms
        checks.check_normalizes(_pipeline(v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, (0.2,) * 3)),
                                mean=IMAGENET_MEAN, std=(0.2,) * 3, name="p")


def test_check_normalizes_catches_what_a_range_check_misses():
    from torchvision.transforms import v2

    std = (0.5, 0.5, 0.5)
    with fails("turns a black image into [0.0, 0.0, 0.0] per channel, expected (0 - mean) / std = [-1.0, -1.0, -1.0]"):
        checks.check_normalizes(_pipeline(v2.ToDtype(torch.float32, scale=True)), mean=(0.5,) * 3, std=std, name="p")
    with fails("expected (0 - mean) / std = [-2.425, -2.28, -2.03]"):  # the wrong statistics
        checks.check_normalizes(_pipeline(v2.ToDtype(torch.float32, scale=True), v2.Normalize((0.5,) * 3, std)),
                                mean=IMAGENET_MEAN, std=(0.2,) * 3, name="p")
    with fails("expected at most (1 - mean) / std = [1.0, 1.0, 1.0]. Scale the pixels to [0, 1]"):
        checks.check_normalizes(_pipeline(v2.ToDtype(torch.float32), v2.Normalize((0.5,) * 3, std)),
                                mean=(0.5,) * 3, std=std, name="p")


def test_check_normalizes_reports_a_broken_or_missing_pipeline():
    from torchvision.transforms import v2

    with fails("`p` is still None"):
        checks.check_normalizes(None, mean=(0.5,) * 3, std=(0.5,) * 3, name="p")
    with fails("`p` fails on a black image: TypeError"):  # Normalize before ToDtype: uint8 input
        checks.check_normalizes(_pipeline(v2.Normalize((0.5,) * 3, (0.5,) * 3)), mean=(0.5,) * 3, std=(0.5,) * 3,
                                name="p")
    with fails("should return a float (3, H, W) tensor, got a torch.uint8 tensor"):
        checks.check_normalizes(_pipeline(), mean=(0.5,) * 3, std=(0.5,) * 3, name="p")


def _index(folder, *, hidden=False, any_case=True, sort=True, only_images=True):
    """index_folder as a student might write it; the keywords switch on one mistake each."""
    from pathlib import Path

    names = [p.name for p in Path(folder).iterdir() if p.is_dir() and (hidden or not p.name.startswith("."))]
    classes = sorted(names) if sort else sorted(names, reverse=True)
    samples = []
    for label, c in enumerate(classes):
        for f in sorted((Path(folder) / c).iterdir()):
            ext = f.suffix.lower() if any_case else f.suffix
            if not only_images or (ext in (".jpg", ".jpeg", ".png") and not f.name.startswith(".")):
                samples.append((str(f), label))
    return classes, samples


def test_check_folder_index_passes_the_course_imagefolder_and_a_correct_answer():
    from course_utils import data

    checks.check_folder_index(_index)
    checks.check_folder_index(lambda folder: (lambda d: (d.classes, d.samples))(data.image_folder(folder)))


@pytest.mark.parametrize("mistake, message", [
    ({"hidden": True}, "a hidden folder such as .ipynb_checkpoints is not a class"),
    ({"sort": False}, "The classes are the visible sub-folder names, sorted"),
    ({"any_case": False}, "missed ants/a2.JPG"),
    ({"only_images": False}, "keep image files only"),
])
def test_check_folder_index_fails_each_careless_answer(mistake, message):
    with fails(message):
        checks.check_folder_index(lambda folder: _index(folder, **mistake))


def test_check_folder_index_unfinished_or_wrong_shape():
    def unfinished(folder):
        raise NotImplementedError()

    with fails("`unfinished` is not implemented yet"):
        checks.check_folder_index(unfinished)
    with fails("return the pair (classes, samples)"):
        checks.check_folder_index(lambda folder: _index(folder)[1])
    with fails("samples from index_folder"):  # files unsorted within a class
        checks.check_folder_index(lambda folder: (_index(folder)[0], _index(folder)[1][::-1]))


class _Lazy(torch.utils.data.Dataset):
    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        from PIL import Image

        path, label = self.samples[index]
        return self.transform(Image.open(path).convert("RGB")), label


class _Eager(_Lazy):
    def __init__(self, samples, transform):
        super().__init__(samples, transform)
        self.items = [_Lazy.__getitem__(self, i) for i in range(len(samples))]

    def __getitem__(self, index):
        return self.items[index]


class _NoRGB(_Lazy):
    def __getitem__(self, index):
        from PIL import Image

        return self.transform(Image.open(self.samples[index][0])), self.samples[index][1]


class _LabelFirst(_Lazy):
    def __getitem__(self, index):
        return tuple(reversed(super().__getitem__(index)))


def test_check_lazy_dataset_passes_a_lazy_dataset():
    checks.check_lazy_dataset(_Lazy)


@pytest.mark.parametrize("cls, message", [
    (_Eager, "open the file in __getitem__, not in __init__"),
    (_NoRGB, "Convert every image to RGB"),
    (_LabelFirst, "return (transform(image), label), image first"),
])
def test_check_lazy_dataset_fails_each_careless_answer(cls, message):
    with fails(message):
        checks.check_lazy_dataset(cls)


def test_check_lazy_dataset_unfinished():
    class Unfinished(torch.utils.data.Dataset):
        def __init__(self, samples, transform):
            raise NotImplementedError()

    with fails("is not implemented yet"):
        checks.check_lazy_dataset(Unfinished)


def test_check_ig_steps_passes_the_fewest_steps_within_tolerance_and_fails_shortcuts():
    from course_utils import attribution

    def right(model, image, target, *, tolerance):
        for n_steps in attribution.IG_STEP_CANDIDATES:
            attr, delta = attribution.attribute(model, image, method="integrated_gradients", target=target,
                                                n_steps=n_steps, return_delta=True)
            miss = abs(delta) / abs(attr.sum().item() - delta)
            if miss <= tolerance:
                break
        return n_steps, miss

    checks.check_ig_steps(right)
    with fails("`choose_ig_steps(..., tolerance=0.3)[0]` is 64, expected 16"):   # always the most steps
        checks.check_ig_steps(lambda *a, tolerance: right(*a, tolerance=0.0))
    with fails("`choose_ig_steps(..., tolerance=0.05)[1]` is off"):   # miss relative to the sum, not the change
        checks.check_ig_steps(lambda *a, tolerance: (right(*a, tolerance=tolerance)[0], 0.5))
    with fails("return a pair (n_steps, miss)"):
        checks.check_ig_steps(lambda *a, tolerance: 64)


def test_check_engine_choice_wants_the_90th_percentile_within_budget():
    def right(runs_ms, budget_ms):
        p90 = {engine: float(np.percentile(runs, 90)) for engine, runs in runs_ms.items()}
        fitting = [engine for engine, value in p90.items() if value <= budget_ms]
        return min(fitting, key=p90.get) if fitting else None

    def by_median(runs_ms, budget_ms):
        medians = {engine: float(np.median(runs)) for engine, runs in runs_ms.items()}
        fitting = [engine for engine, value in medians.items() if value <= budget_ms]
        return min(fitting, key=medians.get) if fitting else None

    checks.check_engine_choice(right)
    with fails("is 'spiky', expected 'steady'. Judge by the 90th percentile"):
        checks.check_engine_choice(by_median)
    with fails("expected None. Return None when no engine fits"):
        checks.check_engine_choice(lambda runs_ms, budget_ms: right(runs_ms, float("inf")))


def _linear_onnx(path, model):
    """Hand-built ONNX file of Flatten + Linear, the exporter's job done by onnx.helper (fast, no tracing)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    linear = model[1]
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["images"], ["flat"], axis=1),
         helper.make_node("Gemm", ["flat", "weight", "bias"], ["logits"], transB=1)],
        "linear", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 2, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])],
        [numpy_helper.from_array(linear.weight.detach().numpy(), "weight"),
         numpy_helper.from_array(linear.bias.detach().numpy(), "bias")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_check_parity_check_needs_a_real_gap_and_a_tolerance_between_rounding_and_a_broken_export(tmp_path):
    from course_utils import deploy

    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5)).eval()
    path, images = _linear_onnx(tmp_path / "linear.onnx", model), 3 * torch.randn(4, 3, 2, 2)

    def gap(session, model, images):
        with torch.no_grad():
            return (deploy.run_onnx(session, images) - model(images)).abs().max().item()

    checks.check_parity_check(gap, 1e-4, path, model, images)
    with fails("accepts a broken export"):
        checks.check_parity_check(gap, 0.5, path, model, images)
    with fails("`tolerance` is still None"):
        checks.check_parity_check(gap, None, path, model, images)
    with fails("`parity_gap on a broken export (weights rounded to bfloat16)` is off"):   # measures nothing
        checks.check_parity_check(lambda session, model, images: 0.0, 1e-4, path, model, images)
    with fails("rejects the correct export"):
        checks.check_parity_check(gap, -1.0, path, model, images)


def test_check_accuracy_at_least_measures_the_model_on_the_loader():
    from torch.utils.data import DataLoader, TensorDataset

    labels = torch.arange(20) % 5
    images = nn.functional.one_hot(labels, 5).float()              # 5 classes, one feature each
    loader = DataLoader(TensorDataset(images, labels), batch_size=6)
    perfect = nn.Linear(5, 5)
    with torch.no_grad():
        perfect.weight.copy_(torch.eye(5))
        perfect.bias.zero_()
    assert checks.check_accuracy_at_least(perfect, loader, 0.99, "perfect") == 1.0
    shifted = nn.Linear(5, 5)
    with torch.no_grad():
        shifted.weight.copy_(torch.eye(5).roll(1, dims=0))         # always answers the next class: 0%
        shifted.bias.zero_()
    with pytest.raises(CheckFailed, match=r"right on 0 of 20 images \(0.0%\); the bar is 50.0%. Train longer"):
        checks.check_accuracy_at_least(shifted, loader, 0.5, "shifted", hint="Train longer.")
    with pytest.raises(CheckFailed, match="`my_model` is still None"):
        checks.check_accuracy_at_least(None, loader, 0.5, "my_model")
    with pytest.raises(CheckFailed, match="one output per class"):
        checks.check_accuracy_at_least(nn.Linear(5, 3), loader, 0.5, "small")

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


def test_used_in_lines_of_the_checks_name_exactly_the_notebooks_that_call_them():
    """Both ways: a notebook that calls a check is named in its 'Used in:' line, and a named notebook calls it."""
    import ast
    from pathlib import Path

    import nbformat

    from course_utils import exercise_checks

    notebooks = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
    code = {path.name: "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
            for path in notebooks}
    wrong = []
    for module in (checks, exercise_checks):
        name = module.__name__.rpartition(".")[2]
        for node in ast.parse(Path(module.__file__).read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                claimed = set(re.findall(r"\d\d_[a-z0-9_]+\.ipynb", ast.get_docstring(node).partition("Used in:")[2]))
                callers = {nb for nb, source in code.items() if re.search(rf"\b{name}\.{node.name}\b", source)}
                if claimed != callers:
                    wrong.append(f"{name}.{node.name}: add {sorted(callers - claimed)}, remove {sorted(claimed - callers)}")
    assert not wrong, "\n".join(wrong)

"""Checks for the exercises: each failure says what is wrong and what was expected.

Check cells in the notebooks call these (``checks.check_equal(answer, 42, "answer")``): checks of a
value (``check_equal``, ``check_shape``, ``check_close``, ``check_at_least``), of a model
(``check_head``, ``check_trainable``, ``check_accuracy_at_least``) and of a training loop
(``check_epoch_loop``). A student's unfinished answer (``None``, or a function that still raises
``NotImplementedError``) fails with a message that says so, never with a bare ``AssertionError`` or
``NameError``. The checks of single exercises, which build a case of their own for the student's
function, are in :mod:`course_utils.exercise_checks`.
"""
from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn


class CheckFailed(AssertionError):
    """An exercise answer is not right yet; the message tells the student what to fix.

    Used in: 11_your_own_images.ipynb; every ``check_*`` raises it
    """


def check_answered(value: Any, name: str) -> Any:
    """Fail if the answer variable ``name`` still holds ``None``; return the value otherwise.

    Used in: 02_data_augmentation.ipynb, 04_model_surgery.ipynb, 05_feature_extraction.ipynb,
        06_fine_tuning.ipynb, 06_fine_tuning_far_domain.ipynb, 07_gradient_flow.ipynb, 11_your_own_images.ipynb;
        most other checks call it first
    """
    if value is None:
        raise CheckFailed(f"`{name}` is still None: write your answer in the cell above and run it.")
    return value


def check_implemented(func: Callable, *args: Any, **kwargs: Any) -> Any:
    """Call the student's function; an unfinished one fails with a clear message, not a traceback.

    Used in: 03_out_of_the_box_inference.ipynb, 04_model_surgery.ipynb, 05_feature_extraction.ipynb,
        06_fine_tuning.ipynb, 06_fine_tuning_far_domain.ipynb, 07_gradient_flow.ipynb,
        08_attribution_with_captum.ipynb, 09_when_to_transfer.ipynb, 10_deployment_and_scaling.ipynb; the checks of
        :mod:`course_utils.exercise_checks` call the student's function with it
    """
    name = getattr(func, "__name__", repr(func))
    try:
        return func(*args, **kwargs)
    except NotImplementedError:
        raise CheckFailed(f"`{name}` is not implemented yet: replace `raise NotImplementedError()`.") from None


def check_equal(value: Any, expected: Any, name: str, hint: str = "") -> None:
    """Fail unless ``value == expected``, naming both.

    Used in: 01_data_loading.ipynb, 02_data_augmentation.ipynb, 03_out_of_the_box_inference.ipynb,
        04_model_surgery.ipynb, 05_feature_extraction.ipynb, 06_fine_tuning.ipynb, 06_fine_tuning_far_domain.ipynb,
        07_gradient_flow.ipynb, 09_when_to_transfer.ipynb, 10_deployment_and_scaling.ipynb; exercise_checks' checks
        compare with it
    """
    check_answered(value, name)
    if value != expected:
        raise CheckFailed(f"`{name}` is {value!r}, expected {expected!r}. {hint}".strip())


def check_shape(tensor: Any, expected: Sequence[int], name: str, hint: str = "") -> None:
    """Fail unless ``tensor`` is a tensor of shape ``expected``.

    Used in: 01_data_loading.ipynb, 02_data_augmentation.ipynb, 03_out_of_the_box_inference.ipynb,
        09_when_to_transfer.ipynb; exercise_checks.check_lazy_dataset
    """
    check_answered(tensor, name)
    if not isinstance(tensor, torch.Tensor):
        raise CheckFailed(f"`{name}` should be a torch.Tensor, got {type(tensor).__name__}.")
    if tuple(tensor.shape) != tuple(expected):
        raise CheckFailed(
            f"`{name}` has shape {tuple(tensor.shape)}, expected {tuple(expected)}. {hint}".strip()
        )


def check_close(value: Any, expected: Any, name: str, *, atol: float = 1e-4, hint: str = "") -> None:
    """Fail unless ``value`` equals ``expected`` within ``atol`` (numbers or tensors).

    Used in: 02_data_augmentation.ipynb, 03_out_of_the_box_inference.ipynb, 04_model_surgery.ipynb,
        05_feature_extraction.ipynb, 07_gradient_flow.ipynb, 08_attribution_with_captum.ipynb,
        09_when_to_transfer.ipynb, 11_your_own_images.ipynb; exercise_checks.check_ig_steps, check_parity_check and
        check_onnx_export
    """
    check_answered(value, name)
    actual, target = torch.as_tensor(value, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64)
    if actual.shape != target.shape:
        raise CheckFailed(f"`{name}` has shape {tuple(actual.shape)}, expected {tuple(target.shape)}.")
    gap = (actual - target).abs().max().item() if actual.numel() else 0.0
    if gap > atol:
        raise CheckFailed(
            f"`{name}` is off by up to {gap:.4g} (allowed {atol:g}); expected {expected!r}. {hint}".strip()
        )


def check_head(model: Any, num_classes: int, name: str = "model") -> None:
    """Fail unless the model's classification head has ``num_classes`` outputs.

    The head is what :func:`course_utils.models.get_head` finds: timm's classifier, else the
    ``nn.Linear`` whose output the model returns (not necessarily the last one registered).

    Used in: 03_out_of_the_box_inference.ipynb
    """
    from course_utils.models import get_head

    check_answered(model, name)
    if not isinstance(model, nn.Module):
        raise CheckFailed(f"`{name}` should be an nn.Module, got {type(model).__name__}.")
    try:
        head_name, head = get_head(model)
    except ValueError as err:  # e.g. the head was replaced by nn.Identity instead of a new nn.Linear
        raise CheckFailed(f"`{name}`: {err}") from None
    if head.out_features != num_classes:
        raise CheckFailed(
            f"The head `{head_name}` of `{name}` has {head.out_features} outputs, but the dataset has "
            f"{num_classes} classes. Replace it with nn.Linear({head.in_features}, {num_classes})."
        )


def check_trainable(model: Any, trainable: Sequence[str], name: str = "model") -> None:
    """Fail unless exactly the parameters under the modules ``trainable`` have ``requires_grad``.

    Names are matched whole: ``"features.1"`` covers ``features.1.weight``, not ``features.10.weight``.

    Used in: 04_model_surgery.ipynb, 06_fine_tuning_far_domain.ipynb
    """
    check_answered(model, name)
    prefixes = tuple(trainable)
    starts = tuple(p if p.endswith(".") else p + "." for p in prefixes)
    inside = [(n, p, n in prefixes or n.startswith(starts)) for n, p in model.named_parameters()]
    wrong_on = [n for n, p, under in inside if p.requires_grad and not under]
    wrong_off = [n for n, p, under in inside if not p.requires_grad and under]
    if wrong_on:
        raise CheckFailed(
            f"{len(wrong_on)} parameters of `{name}` should be frozen but still train (first: {wrong_on[0]}). "
            "Set requires_grad=False on everything outside " + ", ".join(prefixes) + "."
        )
    if wrong_off:
        raise CheckFailed(
            f"{len(wrong_off)} parameters of `{name}` should train but are frozen (first: {wrong_off[0]}). "
            "Keep requires_grad=True for " + ", ".join(prefixes) + "."
        )


def check_at_least(value: Any, minimum: float, name: str, hint: str = "") -> None:
    """Fail unless the number ``value`` is at least ``minimum`` (e.g. a validation accuracy).

    A one-element tensor counts as its number.

    Used in: 03_out_of_the_box_inference.ipynb, 09_when_to_transfer.ipynb, 11_your_own_images.ipynb
    """
    check_answered(value, name)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()  # e.g. an accuracy computed with tensor operations
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise CheckFailed(f"`{name}` should be a number, got {type(value).__name__}: {value!r}.")
    value = float(value)  # numpy scalars print as plain numbers
    if not value >= minimum:  # also fails for NaN
        raise CheckFailed(f"`{name}` is {value!r}, expected at least {minimum}. {hint}".strip())


def _tiny_problem(batch_size: int, seed: int):
    """48 random 6-feature points in 3 classes, a small MLP, and SGD with momentum (so stale gradients show)."""
    from torch.utils.data import DataLoader, TensorDataset

    generator = torch.Generator().manual_seed(seed)
    inputs, targets = torch.randn(48, 6, generator=generator), torch.randint(0, 3, (48,), generator=generator)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, optimizer, DataLoader(TensorDataset(inputs, targets), batch_size=batch_size)


def _check_trained_like(model: nn.Module, reference: nn.Module, start: dict, *, name: str, accumulate: bool) -> None:
    """Fail unless the student's loop left ``model`` in train mode with the reference loop's weights."""
    if not model.training:
        raise CheckFailed(f"`{name}` left the model in eval mode: call model.train() at the start of the epoch.")
    if all(torch.equal(value, start[key]) for key, value in model.state_dict().items()):
        raise CheckFailed(f"`{name}` did not change the weights: call loss.backward() and optimizer.step().")
    gap = max((value - reference.state_dict()[key]).abs().max().item() for key, value in model.state_dict().items())
    if gap > 1e-5:
        raise CheckFailed(
            f"After one epoch with `{name}` the weights differ from the reference loop's by up to {gap:.3g}. "
            "Clear the gradients (optimizer.zero_grad()) before each new step's backward pass"
            + (", divide each loss by accumulate and step once every accumulate batches" if accumulate else "") + "."
        )


def check_epoch_loop(func: Callable, name: str = "train_one_epoch", *, batch_size: int = 4, **kwargs: Any) -> dict:
    """Train a tiny model for one epoch with the student's loop and compare it with a plain reference loop.

    ``func(model, criterion, optimizer, loader, **kwargs)`` must put the model in train mode, run every
    batch forward, compute the loss, clear old gradients, backpropagate, step the optimizer, and return
    ``{"loss": mean loss per example, "acc": share of examples whose highest logit is the target}``.
    The reference is :func:`course_utils.train.train_one_epoch` on a copy of the same model. With
    ``accumulate=k`` in ``kwargs`` the loop may step once every ``k`` batches: the reference then uses
    batches ``k`` times larger, which must give the same weights, loss and accuracy.

    Returns:
        What ``func`` returned.

    Used in: 06_fine_tuning.ipynb
    """
    import copy

    from course_utils.train import train_one_epoch

    model, optimizer, loader = _tiny_problem(batch_size, seed=0)
    reference, reference_optimizer, big_loader = _tiny_problem(batch_size * kwargs.get("accumulate", 1), seed=0)
    start = copy.deepcopy(model.state_dict())
    model.eval()  # the loop itself must switch to train mode
    result = check_implemented(func, model, nn.CrossEntropyLoss(), optimizer, loader, **kwargs)
    expected = train_one_epoch(reference, nn.CrossEntropyLoss(), reference_optimizer, big_loader,
                               torch.device("cpu"), progress=False)
    if not isinstance(result, dict) or not {"loss", "acc"} <= set(result):
        raise CheckFailed(f"`{name}` returned {result!r}; return a dict {{'loss': ..., 'acc': ...}} with the "
                          "mean loss per example and the accuracy over the epoch.")
    _check_trained_like(model, reference, start, name=name, accumulate="accumulate" in kwargs)
    for key, hint in (("loss", "the mean of loss.item() (before any division) weighted by the batch sizes"),
                      ("acc", "correct predictions (logits.argmax(1) == targets) over all examples")):
        value = result[key].item() if isinstance(result[key], torch.Tensor) else result[key]
        if not isinstance(value, numbers.Real) or abs(value - expected[key]) > 1e-5:
            raise CheckFailed(f"`{name}` returned {key}={value!r}, expected {expected[key]:.6f}: {hint}.")
    return result


def check_accuracy_at_least(model: Any, loader: Any, minimum: float, name: str = "model", hint: str = "") -> float:
    """Measure ``model`` on every batch of ``loader`` (eval mode) and fail unless its accuracy is at least ``minimum``.

    The model is evaluated on the device its weights are on. Returns the accuracy, so the check cell can print it.

    Used in: 06_fine_tuning_far_domain.ipynb
    """
    from course_utils.train import predict

    check_answered(model, name)
    if not isinstance(model, nn.Module):
        raise CheckFailed(f"`{name}` should be a trained model (an nn.Module), got {type(model).__name__}.")
    parameter = next(model.parameters(), None)
    logits, labels = predict(model, loader, parameter.device if parameter is not None else "cpu")
    if logits.dim() != 2 or logits.shape[1] <= int(labels.max()):
        raise CheckFailed(f"`{name}` gives {tuple(logits.shape[1:])} outputs per image, but the labels go up to "
                          f"{int(labels.max())}: give it one output per class (models.replace_head).")
    right = int((logits.argmax(dim=1) == labels).sum())
    accuracy = right / len(labels)
    if not accuracy >= minimum:
        raise CheckFailed(f"`{name}` is right on {right} of {len(labels)} images ({accuracy:.1%}); the bar is "
                          f"{minimum:.1%}. {hint}".strip())
    return accuracy

"""Choosing learning rates with a measurement instead of a habit: the learning-rate range test.

The range test (L. Smith, "Cyclical Learning Rates for Training Neural Networks", 2017; fastai's
``lr_find``) trains for a few dozen mini-batches while the learning rate grows exponentially, and records
the loss. Too small a rate leaves the loss flat, a good one makes it fall fast, too large a one makes it
explode. The model and optimizer are restored afterwards, so the test costs time but changes nothing.
"""
from __future__ import annotations

import copy
import itertools
import math

import torch
from torch import nn


def _check_range(start_lr: float, end_lr: float, steps: int) -> None:
    for label, value in (("start_lr", start_lr), ("end_lr", end_lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{label} must be a positive number such as 1e-6, got {value!r}.")
    if not end_lr > start_lr:
        raise ValueError(f"end_lr ({end_lr!r}) must be larger than start_lr ({start_lr!r}); e.g. 1e-6 to 1.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 5:
        raise ValueError(f"steps must be an integer of at least 5 (e.g. 40), got {steps!r}.")


def lr_range_test(
    model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, data_loader,
    device: torch.device | str, *, start_lr: float = 1e-6, end_lr: float = 1.0, steps: int = 40,
    smoothing: float = 0.1, diverge_factor: float = 4.0,
) -> dict:
    """Loss after each mini-batch while the learning rate grows from ``start_lr`` to ``end_lr``.

    Step ``t`` uses ``start_lr * (end_lr / start_lr) ** (t / (steps - 1))``. With several parameter groups
    (discriminative rates) their ratios are kept: the largest group gets that rate and the others the same
    fraction of it they had in ``optimizer``. The test stops early once the smoothed loss exceeds
    ``diverge_factor`` times its minimum (or is not finite). Afterwards the model's weights and the
    optimizer's state and rates are restored.

    Args:
        model, criterion, optimizer, data_loader, device: As for ``train.train_one_epoch``; frozen
            BatchNorm layers stay in eval mode. ``data_loader`` is cycled if it has fewer than ``steps`` batches.
        start_lr, end_lr: The range of the largest group's learning rate.
        steps: Mini-batches (one optimizer step each).
        smoothing: Weight of the newest loss in the exponential moving average (1 = no smoothing).
        diverge_factor: Stop when the smoothed loss exceeds this multiple of its minimum.

    Returns:
        ``{"lr": [...], "loss": [...], "smoothed": [...], "min_loss_lr": float, "steepest_lr": float}``:
        the rates and losses of the steps run, the rate at the lowest smoothed loss, and the rate where the
        smoothed loss fell fastest. Two common rules of thumb pick ``min_loss_lr / 10`` or ``steepest_lr``.

    Raises:
        ValueError: Bad range, ``steps`` below 5, or an empty ``data_loader``.

    Used in: 06_fine_tuning.ipynb, 09_when_to_transfer.ipynb
    """
    from course_utils.surgery import eval_frozen_batchnorm
    from course_utils.train import _to_device

    _check_range(start_lr, end_lr, steps)
    device = torch.device(device)
    saved_model, saved_optimizer = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    top = max(group["lr"] for group in optimizer.param_groups)
    shares = [group["lr"] / top if top > 0 else 1.0 for group in optimizer.param_groups]
    record = {"lr": [], "loss": [], "smoothed": []}
    was_training = model.training
    try:
        model.train()
        eval_frozen_batchnorm(model)
        batches = itertools.cycle(data_loader)
        for step in range(steps):
            lr = start_lr * (end_lr / start_lr) ** (step / (steps - 1))
            for group, share in zip(optimizer.param_groups, shares):
                group["lr"] = lr * share
            batch = next(batches, None)
            if batch is None:
                raise ValueError("data_loader is empty: pass a DataLoader over the training set.")
            images, targets = _to_device(batch[0], device), batch[1].to(device)
            loss = criterion(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = loss.item()
            previous = record["smoothed"][-1] if record["smoothed"] else value
            smoothed = smoothing * value + (1 - smoothing) * previous
            record["lr"].append(lr)
            record["loss"].append(value)
            record["smoothed"].append(smoothed)
            if not math.isfinite(smoothed) or smoothed > diverge_factor * min(record["smoothed"]):
                break
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
        model.train(was_training)
    return {**record, **_suggestions(record)}


def _suggestions(record: dict) -> dict:
    """The rate at the lowest smoothed loss, and where the smoothed loss falls fastest per log-rate."""
    smoothed, lrs = record["smoothed"], record["lr"]
    finite = [i for i, value in enumerate(smoothed) if math.isfinite(value)]
    lowest = min(finite, key=lambda i: smoothed[i])
    slopes = [(i, (smoothed[i + 1] - smoothed[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i])))
              for i in finite if i + 1 < len(smoothed) and math.isfinite(smoothed[i + 1])]
    steepest = min(slopes, key=lambda pair: pair[1])[0] if slopes else lowest
    return {"min_loss_lr": lrs[lowest], "steepest_lr": lrs[steepest]}


def warmup_cosine(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to each group's learning rate, then cosine decay towards 0; step it after every batch.

    Step ``t`` (counting from 0) multiplies every group's rate by ``(t + 1) / warmup_steps`` during the
    warm-up and by ``0.5 * (1 + cos(pi * (t - warmup_steps) / (total_steps - warmup_steps)))`` after it, so
    the groups keep their ratios (discriminative rates stay discriminative).

    Args:
        optimizer: Its groups' ``lr`` are the peak rates.
        total_steps: Optimizer steps in the whole run (epochs x batches per epoch).
        warmup_steps: Steps of the linear warm-up, at least 1 and below ``total_steps``.

    Raises:
        ValueError: A step count that is not an integer, or ``warmup_steps`` outside 1 .. total_steps - 1.

    Used in: 06_fine_tuning_far_domain.ipynb
    """
    for label, value in (("total_steps", total_steps), ("warmup_steps", warmup_steps)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{label} must be an integer number of optimizer steps, got {value!r}.")
    if not 1 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps must be from 1 to total_steps - 1 ({total_steps - 1}), got {warmup_steps!r}; "
                         "a tenth of total_steps is common.")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

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
from dataclasses import dataclass, field

import torch
from torch import nn

from course_utils.arguments import require_int, require_number


def _check_range(start_lr: float, end_lr: float, steps: int) -> None:
    require_number("start_lr", start_lr, example="1e-6", fix="The test starts at this learning rate.")
    require_number("end_lr", end_lr, example="1.0", fix="The test stops at this learning rate.")
    if not end_lr > start_lr:
        raise ValueError(f"end_lr ({end_lr!r}) must be larger than start_lr ({start_lr!r}); e.g. 1e-6 to 1.")
    require_int("steps", steps, minimum=5, example=40, fix="Each step trains one mini-batch at a larger rate.")


@dataclass
class RangeTest:
    """What :func:`lr_range_test` recorded: one entry per step run, and the two rates the rules of thumb pick.

    Attributes:
        lr: The largest group's learning rate at each step.
        loss: The mini-batch loss of each step.
        smoothed: Its exponential moving average.

    Used in: 09_when_to_transfer.ipynb (returned by lr_range_test)
    """

    lr: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)

    def add(self, lr: float, loss: float, smoothing: float) -> None:
        """Record one step; the moving average weighs the newest loss by ``smoothing``."""
        previous = self.smoothed[-1] if self.smoothed else loss
        self.lr.append(lr)
        self.loss.append(loss)
        self.smoothed.append(smoothing * loss + (1 - smoothing) * previous)

    def diverged(self, factor: float) -> bool:
        """The last smoothed loss is not finite or exceeds ``factor`` times the lowest so far."""
        return bool(self.smoothed) and not self.smoothed[-1] <= factor * min(self.smoothed)

    @property
    def min_loss_lr(self) -> float:
        """The rate at the lowest finite smoothed loss."""
        finite = [i for i, value in enumerate(self.smoothed) if math.isfinite(value)]
        return self.lr[min(finite, key=self.smoothed.__getitem__)]

    @property
    def steepest_lr(self) -> float:
        """The rate where the smoothed loss fell fastest per unit of log-rate, looking only up to the lowest
        loss (past it the loss diverges and its swings mean nothing); else :attr:`min_loss_lr`."""
        s, lrs = self.smoothed, self.lr
        lowest = self.lr.index(self.min_loss_lr)
        slopes = [((s[i + 1] - s[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i])), i)
                  for i in range(lowest) if math.isfinite(s[i]) and math.isfinite(s[i + 1])]
        return lrs[min(slopes)[1]] if slopes else self.min_loss_lr


def lr_range_test(
    model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, data_loader,
    device: torch.device | str, *, start_lr: float = 1e-6, end_lr: float = 1.0, steps: int = 40,
    smoothing: float = 0.1, diverge_factor: float = 4.0,
) -> RangeTest:
    """Loss after each mini-batch while the learning rate grows from ``start_lr`` to ``end_lr``.

    Step ``t`` uses ``start_lr * (end_lr / start_lr) ** (t / (steps - 1))``, set between its ``backward`` and
    its optimizer step (``after_backward`` of ``train.train_step``). With several parameter groups their
    ratios are kept: the largest group gets that rate, the others the same fraction of it as in
    ``optimizer``. The test stops early once the smoothed loss exceeds ``diverge_factor`` times its minimum
    (or is not finite). Afterwards the model's weights and mode and the optimizer's state and rates are restored.

    Args:
        model, criterion, optimizer, data_loader, device: As for ``train.train_one_epoch``, which runs the
            steps; ``data_loader`` is cycled if it has fewer than ``steps`` batches.
        steps: Mini-batches (one optimizer step each).
        smoothing: Weight of the newest loss in the exponential moving average (1 = no smoothing).

    Returns:
        A :class:`RangeTest`. Two common rules of thumb pick ``min_loss_lr / 10`` or ``steepest_lr``.

    Raises:
        ValueError: Bad range, ``steps`` below 5, or an empty ``data_loader``.

    Used in: 09_when_to_transfer.ipynb
    """
    from course_utils.train import train_one_epoch

    _check_range(start_lr, end_lr, steps)
    saved_model, saved_optimizer = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    top = max(group["lr"] for group in optimizer.param_groups)
    shares = [group["lr"] / top if top > 0 else 1.0 for group in optimizer.param_groups]
    record, was_training = RangeTest(), model.training

    def set_rate(loss: float) -> None:  # this step's rate, just before its optimizer step
        lr = start_lr * (end_lr / start_lr) ** (len(record.lr) / (steps - 1))
        for group, share in zip(optimizer.param_groups, shares):
            group["lr"] = lr * share
        record.add(lr, loss, smoothing)

    batches = itertools.takewhile(lambda _: not record.diverged(diverge_factor),
                                  itertools.islice(itertools.cycle(data_loader), steps))
    try:
        train_one_epoch(model, criterion, optimizer, batches, device, progress=False, after_backward=set_rate)
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
        model.train(was_training)
    return record


def warmup_cosine(
    optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
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
        require_int(label, value, minimum=None, fix="It counts optimizer steps (epochs x batches per epoch in all).")
    if not 1 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps must be from 1 to total_steps - 1 ({total_steps - 1}), got {warmup_steps!r}; "
                         "a tenth of total_steps is common.")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

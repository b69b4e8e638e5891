"""Checks of a helper's numeric arguments, written once: "batch_size must be a positive integer such as 64, got 0."

Public helpers check their arguments before any work, so that a bad value fails with a message naming
the argument, the values it may take, an example and the value it got, instead of deep inside torch.
``True`` is never accepted as the number 1. ``require_*`` raise ``ValueError``; ``*_problem`` return the
same message (None when the value is fine) for code that collects problems instead of raising.
"""
from __future__ import annotations

import math
import numbers
from typing import Any


def _int_words(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an integer from {minimum} to {maximum}"
    if maximum is not None:
        return f"an integer of at most {maximum}"
    return {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}.get(
        minimum, f"an integer of at least {minimum}")


def _number_words(above: float | None, below: float | None) -> str:
    if above is not None and below is not None:
        return f"a number between {above} and {below} (exclusive)"
    if below is not None:
        return f"a finite number below {below}"
    return {None: "a finite number", 0: "a positive number"}.get(above, f"a finite number above {above}")


def _message(name: str, words: str, value: Any, example: Any, fix: str) -> str:
    such_as = "" if example is None else f" such as {example}"
    return f"{name} must be {words}{such_as}, got {value!r}." + (f" {fix}" if fix else "")


def int_problem(name: str, value: Any, *, minimum: int | None = 1, maximum: int | None = None,
                example: Any = None, fix: str = "") -> str | None:
    """What is wrong with ``value`` as an integer argument from ``minimum`` to ``maximum`` (None if nothing).

    Used in: audit.eurosat_capstone_folder (one message for all three counts); through :func:`require_int`,
        helpers' argument checks
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        if (minimum is None or value >= minimum) and (maximum is None or value <= maximum):
            return None
    return _message(name, _int_words(minimum, maximum), value, example, fix)


def number_problem(name: str, value: Any, *, above: float | None = 0, below: float | None = None,
                   example: Any = None, fix: str = "") -> str | None:
    """What is wrong with ``value`` as a finite real number strictly between ``above`` and ``below`` (None if
    nothing).

    Used in: course_admin.assignments (nbgrader points); through :func:`require_number`, helpers' argument checks
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        if (above is None or value > above) and (below is None or value < below):
            return None
    return _message(name, _number_words(above, below), value, example, fix)


def _checked(value: Any, problem: str | None) -> Any:
    if problem:
        raise ValueError(problem)
    return value


def require_int(name: str, value: Any, *, minimum: int | None = 1, maximum: int | None = None,
                example: Any = None, fix: str = "") -> int:
    """Return ``value`` if it is an integer (not a bool) from ``minimum`` to ``maximum``; raise otherwise.

    Raises:
        ValueError: "{name} must be a positive integer such as {example}, got {value!r}. {fix}"

    Used in: argument checks of the helpers of attribution, backbones, deploy, domains, eurosat, features,
        gradients, models, probes, scenarios, stats, surgery, train and tuning (no notebook calls it)
    """
    return _checked(value, int_problem(name, value, minimum=minimum, maximum=maximum, example=example, fix=fix))


def require_number(name: str, value: Any, *, above: float | None = 0, below: float | None = None,
                   example: Any = None, fix: str = "") -> float:
    """Return ``value`` if it is a finite real number (not a bool) strictly between ``above`` and ``below``,
    else raise ``ValueError`` worded like :func:`require_int`'s.

    Used in: argument checks of features.train_head, folders.stratified_split, stats (the intervals' level),
        surgery.parameter_groups and tuning.lr_range_test (no notebook calls it)
    """
    return _checked(value, number_problem(name, value, above=above, below=below, example=example, fix=fix))

"""course_utils.arguments: one wording for bad numeric arguments, and no bool taken for a number."""
import math

import numpy as np
import pytest

from course_utils.arguments import int_problem, number_problem, require_int, require_number


def test_require_int_returns_good_values():
    assert require_int("batch_size", 64) == 64
    assert require_int("warmup", 0, minimum=0) == 0
    assert require_int("n", 5, minimum=0, maximum=5) == 5
    assert require_int("steps", np.int64(3)) == 3  # numpy integers are integers


@pytest.mark.parametrize(("value", "kwargs", "message"), [
    (0, {"example": 64}, "batch_size must be a positive integer such as 64, got 0."),
    (True, {}, "batch_size must be a positive integer, got True."),
    (2.0, {}, "batch_size must be a positive integer, got 2.0."),
    (-1, {"minimum": 0}, "batch_size must be a non-negative integer, got -1."),
    (3, {"minimum": 5, "fix": "Use more."}, "batch_size must be an integer of at least 5, got 3. Use more."),
    (7, {"minimum": 0, "maximum": 6}, "batch_size must be an integer from 0 to 6, got 7."),
    ("8", {"minimum": None}, "batch_size must be an integer, got '8'."),
])
def test_require_int_names_the_argument_the_range_and_the_value(value, kwargs, message):
    with pytest.raises(ValueError) as error:
        require_int("batch_size", value, **kwargs)
    assert str(error.value) == message
    assert int_problem("batch_size", value, **kwargs) == message


def test_require_number_accepts_finite_numbers_in_range():
    assert require_number("lr", 1e-3) == 1e-3
    assert require_number("fraction", 0.2, above=0, below=1) == 0.2
    assert require_number("shift", -3, above=None) == -3
    assert number_problem("lr", 3) is None


@pytest.mark.parametrize(("value", "kwargs", "message"), [
    (0, {"example": "1e-3"}, "lr must be a positive number such as 1e-3, got 0."),
    (math.nan, {}, "lr must be a positive number, got nan."),
    (math.inf, {}, "lr must be a positive number, got inf."),
    (False, {"above": None}, "lr must be a finite number, got False."),
    (1.0, {"above": 0, "below": 1}, "lr must be a number between 0 and 1 (exclusive), got 1.0."),
    (0.5, {"above": 2}, "lr must be a finite number above 2, got 0.5."),
])
def test_require_number_names_the_argument_the_range_and_the_value(value, kwargs, message):
    with pytest.raises(ValueError) as error:
        require_number("lr", value, **kwargs)
    assert str(error.value) == message

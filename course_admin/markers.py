"""The exercise markers in a code cell: ``# BEGIN SOLUTION`` ... ``# END SOLUTION`` and hidden tests.

A marker is a line holding only ``# BEGIN SOLUTION`` (and so on) after optional indentation, with a single
``#`` (otter-grader's rule). nbgrader treats any line that merely *contains* ``BEGIN SOLUTION`` as a marker,
so a line that nbgrader would read as a marker but that is not one of ours is an error here, never
silently kept: a solution must not leak into the student version.
"""
from __future__ import annotations

import re
from collections import Counter

CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
REGIONS = ("SOLUTION", "HIDDEN TESTS")
_MARKER = re.compile(r"(?P<indent>[ \t]*)# (?P<kind>BEGIN|END) (?P<region>SOLUTION|HIDDEN TESTS)[ \t\r]*")
_LOOKALIKE = re.compile(r"(BEGIN|END) (SOLUTION|HIDDEN TESTS)")


def parse_marker(line: str, *, where: str, number: int) -> tuple[str, str, str] | None:
    """``(indent, "BEGIN" | "END", region)`` for a marker line, None for any other line.

    Raises:
        ValueError: A line that nbgrader would read as a marker but that is not exactly one of ours.

    Used in: every notebook's exercises (through ``release`` and the nbgrader / otter exports)
    """
    match = _MARKER.fullmatch(line)
    if match:
        return match["indent"], match["kind"], match["region"]
    if _LOOKALIKE.search(line):
        raise ValueError(
            f"{where}, line {number}: {line.strip()!r} looks like an nbgrader marker but is not one of ours. "
            "Put exactly `# BEGIN SOLUTION`, `# END SOLUTION`, `# BEGIN HIDDEN TESTS` or `# END HIDDEN TESTS` "
            "alone on its line (indentation allowed, a single '#'), or reword the line."
        )
    return None


def student_source(source: str, *, where: str) -> tuple[str, Counter]:
    """Student version of one code cell's source, and how many regions of each kind it replaced.

    Raises:
        ValueError: Unbalanced or nested markers, or a marker-like line that is not a marker.

    Used in: every notebook's exercises (through ``release`` and ``validate``)
    """
    kept: list[str] = []
    found: Counter = Counter()
    region, opened_at = None, 0
    for number, line in enumerate(source.split("\n"), start=1):
        marker = parse_marker(line, where=where, number=number)
        if marker is None:
            if region is None:
                kept.append(line)
            continue
        indent, kind, name = marker
        if kind == "BEGIN":
            if region is not None:
                raise ValueError(
                    f"{where}, line {number}: `# BEGIN {name}` inside the `# BEGIN {region}` region opened on "
                    f"line {opened_at}. Close that region with `# END {region}` first: regions cannot nest."
                )
            region, opened_at = name, number
            found[name] += 1
            if name == "SOLUTION":
                kept.extend(indent + stub for stub in CODE_STUB)
        elif region != name:
            raise ValueError(
                f"{where}, line {number}: `# END {name}` without a matching `# BEGIN {name}` before it. "
                f"Add `# BEGIN {name}` above the region, or delete this line."
            )
        else:
            region = None
    if region is not None:
        raise ValueError(
            f"{where}, line {opened_at}: `# BEGIN {region}` is never closed. Add `# END {region}` "
            "after the last line of the region, in the same cell."
        )
    return "\n".join(kept), found


def clear_source(source: str, *, where: str = "cell") -> str:
    """Replace solution regions by the stub and remove hidden-test regions in one cell's source.

    Args:
        source: The code cell's source.
        where: How to name the cell in error messages.

    Returns:
        The student version of the source (unchanged if it has no markers).

    Raises:
        ValueError: Unbalanced or nested markers, or a marker-like line that is not a marker.

    Used in: every notebook's exercises (through ``release``)
    """
    return student_source(source, where=where)[0]

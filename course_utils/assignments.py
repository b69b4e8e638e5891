"""Student versions of the notebooks, and a check of their exercise cells (nbgrader / otter-grader format).

``python -m course_utils.assignments release [--source notebooks] [--dest student]`` writes one student
version per notebook: every region between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` (markers included)
becomes ``# YOUR CODE HERE`` / ``raise NotImplementedError()`` at the indentation of the BEGIN line, every
region between ``# BEGIN HIDDEN TESTS`` and ``# END HIDDEN TESTS`` is removed, outputs are cleared, and
everything else is left byte for byte as it was. ``python -m course_utils.assignments validate`` checks the
exercise metadata that nbgrader needs. ``... nbgrader`` lays out an nbgrader course folder
(:mod:`course_utils.nbgrader_course`) and ``... otter`` writes Otter Assign master notebooks
(:mod:`course_utils.otter_export`), both generated from the same notebooks.

A marker is a line holding only ``# BEGIN SOLUTION`` (and so on) after optional indentation, with a single
``#`` (otter-grader's rule). nbgrader treats any line that merely *contains* ``BEGIN SOLUTION`` as a marker,
so a line that nbgrader would read as a marker but that is not one of ours is an error here, never
silently kept: a solution must not leak into the student version.

nbformat is imported inside the functions that read or write notebooks (JupyterLab and the instructor extras
bring it).
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
REGIONS = ("SOLUTION", "HIDDEN TESTS")
_MARKER = re.compile(r"(?P<indent>[ \t]*)# (?P<kind>BEGIN|END) (?P<region>SOLUTION|HIDDEN TESTS)[ \t\r]*")
_LOOKALIKE = re.compile(r"(BEGIN|END) (SOLUTION|HIDDEN TESTS)")
ANSWER_METADATA = {"grade": False, "locked": False, "schema_version": 3, "solution": True, "task": False}
CHECK_METADATA = {"grade": True, "locked": True, "schema_version": 3, "solution": False, "task": False}
# A written answer: a markdown cell the instructor grades by hand (nbgrader's "manually graded answer").
WRITTEN_METADATA = {"grade": True, "locked": False, "schema_version": 3, "solution": True, "task": False}
TEXT_STUB = "YOUR ANSWER HERE"  # what replaces a written answer in the student version (nbgrader's text stub)


def is_written_answer(cell: Any) -> bool:
    """True for a markdown cell marked as an nbgrader solution: a written answer, graded by hand.

    Used in: every notebook's exercises (through ``release`` and the exports)
    """
    return cell.get("cell_type") == "markdown" and bool(cell.get("metadata", {}).get("nbgrader", {}).get("solution"))


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


def _transform(source: str, *, where: str) -> tuple[str, Counter]:
    """Student version of one code cell's source, and how many regions of each kind it replaced."""
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
    return _transform(source, where=where)[0]


def cell_label(notebook: str, index: int, cell: Any) -> str:
    """``"01_x.ipynb cell 7 (grade_id 01_ex1_answer)"``: how errors and reports name a cell."""
    grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
    name = f"grade_id {grade_id}" if grade_id else f"id {cell.get('id', '?')}"
    return f"{notebook} cell {index} ({name})"


def student_notebook(nb: Any, *, name: str = "notebook") -> tuple[Any, Counter]:
    """The student version of a notebook (a copy), and the number of regions of each kind it changed.

    A written answer (:func:`is_written_answer`) becomes ``TEXT_STUB`` as a whole, as nbgrader does.

    Raises:
        ValueError: Bad markers (see :func:`clear_source`), or an nbgrader solution code cell without a
            solution region, whose answer would be published as it is.

    Used in: every notebook's exercises (through ``release``)
    """
    student, total = copy.deepcopy(nb), Counter()
    for index, cell in enumerate(student.cells):
        where = cell_label(name, index, cell)
        found: Counter = Counter()
        if cell.cell_type == "code":
            cell.source, found = _transform(cell.source, where=where)
            cell.outputs, cell.execution_count = [], None
        elif is_written_answer(cell):
            cell.source, found = TEXT_STUB, Counter(WRITTEN=1)
        if cell.get("metadata", {}).get("nbgrader", {}).get("solution") and not found["SOLUTION"] + found["WRITTEN"]:
            raise ValueError(
                f"{where} is an nbgrader solution cell without a `# BEGIN SOLUTION` / `# END SOLUTION` region, "
                "so its answer would be published. Put the answer between the markers in a code cell."
            )
        total += found
    return student, total


def read_notebook(path: str | Path) -> Any:
    """Read a notebook as it is stored (no version conversion), so that writing it back changes nothing."""
    import nbformat

    path = Path(path)
    nb = nbformat.reads(path.read_text(encoding="utf-8"), as_version=nbformat.NO_CONVERT)
    if nb.nbformat != 4:
        raise ValueError(f"{path} has nbformat {nb.nbformat}; only version 4 is supported. Re-save it in Jupyter.")
    return nb


def serialise(nb: Any) -> str:
    """The notebook as nbformat and Jupyter write it: sorted keys, indent=1, a trailing newline."""
    import nbformat

    text = nbformat.writes(nb, version=nbformat.NO_CONVERT)
    return text if text.endswith("\n") else text + "\n"


def _notebooks(source: Path) -> list[Path]:
    paths = sorted(Path(source).glob("*.ipynb"))
    if not paths:
        where = Path(source).absolute()
        raise ValueError(
            f"No *.ipynb files in {where}{'' if where.is_dir() else ' (no such folder)'}: the notebooks are looked "
            "for in --source, by default notebooks/ of the current folder. Run the command from the repository's "
            "root, or pass --source /path/to/the/repository/notebooks."
        )
    return paths


def release(*, source: str | Path = "notebooks", dest: str | Path = "student") -> list[Path]:
    """Write the student version of every notebook in ``source`` to ``dest`` (same file names).

    All notebooks are transformed before any is written, so a bad marker writes nothing.

    Returns:
        The paths written.

    Raises:
        ValueError: No notebooks in ``source``, ``dest`` is ``source``, or a notebook has bad markers.

    Used in: instructors' release of the coursework (``make student``)
    """
    source, dest = Path(source), Path(dest)
    if dest.resolve() == source.resolve():
        raise ValueError(f"--dest {str(dest)!r} is the source folder: that would overwrite the solutions. "
                         "Pick another folder, e.g. student.")
    versions = {}
    for path in _notebooks(source):
        versions[path.name] = student_notebook(read_notebook(path), name=path.name)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (nb, found) in versions.items():
        (dest / name).write_text(serialise(nb), encoding="utf-8")
        written.append(dest / name)
        print(f"{dest / name}: {found['SOLUTION']} solution(s) cleared, {found['HIDDEN TESTS']} hidden test(s) removed")
    return written


def _metadata_problems(where: str, meta: dict, expected: dict) -> list[str]:
    wrong = {key: meta.get(key) for key, value in expected.items() if meta.get(key) != value}
    return [f"{where}: nbgrader metadata {wrong} should be {({k: expected[k] for k in wrong})}"] if wrong else []


def validate(path: str | Path) -> list[str]:
    """Problems with one notebook's exercises (empty when it is fine).

    Every notebook needs at least two answer cells and two graded check cells with the metadata of
    CONTRIBUTING.md (schema_version 3), unique grade_ids, and markers that ``release`` accepts. Written
    answers (markdown, graded by hand) need ``WRITTEN_METADATA`` and positive points; they do not count
    towards the two exercises.

    Used in: instructors' release of the coursework (``python -m course_utils.assignments validate``)
    """
    path = Path(path)
    nb, problems, seen = read_notebook(path), [], Counter()
    answers = checks = 0
    for index, cell in enumerate(nb.cells):
        meta, where = cell.get("metadata", {}).get("nbgrader"), cell_label(path.name, index, cell)
        if meta is None:
            continue
        seen[meta.get("grade_id")] += 1
        if is_written_answer(cell):
            problems += _metadata_problems(where, meta, WRITTEN_METADATA)
            if not isinstance(meta.get("points"), (int, float)) or meta.get("points") <= 0:
                problems.append(f"{where}: a written answer needs positive nbgrader points, got {meta.get('points')!r}")
        elif meta.get("solution"):
            answers += 1
            problems += _metadata_problems(where, meta, ANSWER_METADATA)
        elif meta.get("grade"):
            checks += 1
            problems += _metadata_problems(where, meta, CHECK_METADATA)
            if not isinstance(meta.get("points"), (int, float)) or meta.get("points") <= 0:
                problems.append(f"{where}: a check cell needs positive nbgrader points, got {meta.get('points')!r}")
        elif meta.get("schema_version") != 3:
            problems.append(f"{where}: nbgrader schema_version is {meta.get('schema_version')!r}, should be 3")
    problems += [f"{path.name}: grade_id {gid!r} is used by {n} cells; make each unique"
                 for gid, n in seen.items() if n > 1 or not gid]
    if answers < 2 or checks < 2:
        problems.append(f"{path.name}: {answers} answer cell(s) and {checks} check cell(s); each needs at least 2")
    return problems + _marker_problems(nb, path.name)


def _marker_problems(nb: Any, name: str) -> list[str]:
    """Bad markers, solution cells without a region, and regions in cells nbgrader would reject."""
    problems = []
    for index, cell in enumerate(nb.cells):
        meta, where = cell.get("metadata", {}).get("nbgrader", {}), cell_label(name, index, cell)
        found: Counter = Counter()
        if cell.cell_type == "code":
            try:
                found = _transform(cell.source, where=where)[1]
            except ValueError as error:
                problems.append(str(error))
                continue
        if meta.get("solution") and not found["SOLUTION"] and not is_written_answer(cell):
            problems.append(f"{where}: a solution cell needs a `# BEGIN SOLUTION` / `# END SOLUTION` region")
        if found["SOLUTION"] and not meta.get("solution"):
            problems.append(f"{where}: has a solution region but is not an nbgrader solution cell")
        if found["HIDDEN TESTS"] and not meta.get("grade"):
            problems.append(f"{where}: has hidden tests but is not an nbgrader graded cell")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Command line: ``release`` (student versions), ``validate`` (exercise cells), ``nbgrader`` (a course
    folder for nbgrader) and ``otter`` (Otter Assign master notebooks)."""
    from course_utils import nbgrader_course, otter_export

    parser = argparse.ArgumentParser(prog="python -m course_utils.assignments", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    release_cmd = commands.add_parser("release", help="write student versions of all notebooks")
    release_cmd.add_argument("--dest", default="student", help="folder for the student versions")
    validate_cmd = commands.add_parser("validate", help="check the exercise cells of all notebooks")
    nbgrader_cmd = commands.add_parser("nbgrader", help="lay out an nbgrader course folder: config + source/")
    nbgrader_cmd.add_argument("--course", default="nbgrader_course", help="the nbgrader course folder")
    nbgrader_cmd.add_argument("names", nargs="*", help="notebooks to include (default: all), e.g. 01_data_loading")
    otter_cmd = commands.add_parser("otter", help="write Otter Assign master notebooks for otter-grader 7")
    otter_cmd.add_argument("--dest", default="otter", help="folder for the otter master notebooks")
    for command in (release_cmd, validate_cmd, nbgrader_cmd, otter_cmd):
        command.add_argument("--source", default="notebooks", help="folder of instructor notebooks")
    args = parser.parse_args(argv)
    try:
        if args.command == "release":
            release(source=args.source, dest=args.dest)
            return 0
        if args.command == "nbgrader":
            _notebooks(Path(args.source))  # none there: say where it looked, before matching names
            nbgrader_course.layout(course=args.course, source=args.source, names=args.names)
            return 0
        if args.command == "otter":
            otter_export.export(source=args.source, dest=args.dest)
            return 0
        problems = [problem for path in _notebooks(Path(args.source)) for problem in validate(path)]
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(problems) if problems else "All notebooks have valid exercises.")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

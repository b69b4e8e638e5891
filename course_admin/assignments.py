"""Student versions of the notebooks, and a check of their exercise cells (nbgrader / otter-grader format).

``python -m course_admin release [--source notebooks] [--dest student]`` writes one student version per
notebook: every region between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` (markers included) becomes
``# YOUR CODE HERE`` / ``raise NotImplementedError()`` at the indentation of the BEGIN line, every region
between ``# BEGIN HIDDEN TESTS`` and ``# END HIDDEN TESTS`` is removed, outputs are cleared, and everything
else is left byte for byte as it was (what counts as a marker: :mod:`course_admin.markers`).
``python -m course_admin validate`` checks the exercise metadata that nbgrader needs. The nbgrader course
folder (:mod:`course_admin.nbgrader_course`) and the Otter Assign master notebooks
(:mod:`course_admin.otter_export`) are built on this module.

nbformat is imported inside the functions that read or write notebooks (JupyterLab and the instructor extras
bring it).
"""
from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path
from typing import Any

from course_admin.markers import student_source
from course_utils.arguments import number_problem

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


def cell_label(notebook: str, index: int, cell: Any) -> str:
    """``"01_x.ipynb cell 7 (grade_id 01_ex1_answer)"``: how errors and reports name a cell."""
    grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
    name = f"grade_id {grade_id}" if grade_id else f"id {cell.get('id', '?')}"
    return f"{notebook} cell {index} ({name})"


def student_notebook(nb: Any, *, name: str = "notebook") -> tuple[Any, Counter]:
    """The student version of a notebook (a copy), and the number of regions of each kind it changed.

    A written answer (:func:`is_written_answer`) becomes ``TEXT_STUB`` as a whole, as nbgrader does.

    Raises:
        ValueError: Bad markers (see :func:`course_admin.markers.student_source`), or an nbgrader solution code cell without a
            solution region, whose answer would be published as it is.

    Used in: every notebook's exercises (through ``release``)
    """
    student, total = copy.deepcopy(nb), Counter()
    for index, cell in enumerate(student.cells):
        where = cell_label(name, index, cell)
        found: Counter = Counter()
        if cell.cell_type == "code":
            cell.source, found = student_source(cell.source, where=where)
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


def find_notebooks(source: str | Path) -> list[Path]:
    """The ``*.ipynb`` files in ``source``, sorted; a clear error where there are none.

    Used in: every command of ``python -m course_admin``
    """
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
    for path in find_notebooks(source):
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


def exercise_role(cell: Any) -> str | None:
    """``"written answer"``, ``"answer cell"`` or ``"check cell"``; None for a cell outside the exercises.

    Used in: every notebook's exercises (``validate`` and the otter export)
    """
    meta = cell.get("metadata", {}).get("nbgrader", {})
    if is_written_answer(cell):
        return "written answer"
    return "answer cell" if meta.get("solution") else "check cell" if meta.get("grade") else None


def points_problem(points: Any, *, where: str, role: str) -> str | None:
    """Why ``points`` cannot score a written answer or check cell (None for a positive number).

    Used in: every notebook's exercises (``validate`` and the otter export)
    """
    return number_problem(f"{where}: a {role}'s nbgrader points", points, above=0, example=1)


def _cell_problems(cell: Any, *, where: str) -> list[str]:
    """What is wrong with one cell's nbgrader metadata."""
    meta, role = cell.metadata["nbgrader"], exercise_role(cell)
    if role is None:
        version = meta.get("schema_version")
        return [] if version == 3 else [f"{where}: nbgrader schema_version is {version!r}, should be 3"]
    expected = {"written answer": WRITTEN_METADATA, "answer cell": ANSWER_METADATA}.get(role, CHECK_METADATA)
    problems = _metadata_problems(where, meta, expected)
    points = None if role == "answer cell" else points_problem(meta.get("points"), where=where, role=role)
    return problems + ([points] if points else [])


def validate(path: str | Path) -> list[str]:
    """Problems with one notebook's exercises (empty when it is fine).

    Every notebook needs at least two answer cells and two graded check cells with the metadata of
    CONTRIBUTING.md (schema_version 3), unique grade_ids, and markers that ``release`` accepts. Written
    answers (markdown, graded by hand) need ``WRITTEN_METADATA`` and positive points; they do not count
    towards the two exercises.

    Used in: instructors' release of the coursework (``python -m course_admin validate``)
    """
    path = Path(path)
    nb = read_notebook(path)
    graded = [(cell_label(path.name, index, cell), cell) for index, cell in enumerate(nb.cells)
              if cell.get("metadata", {}).get("nbgrader") is not None]
    problems = [problem for where, cell in graded for problem in _cell_problems(cell, where=where)]
    ids = Counter(cell.metadata["nbgrader"].get("grade_id") for _, cell in graded)
    problems += [f"{path.name}: grade_id {gid!r} is used by {n} cells; make each unique"
                 for gid, n in ids.items() if n > 1 or not gid]
    roles = Counter(exercise_role(cell) for _, cell in graded)
    if roles["answer cell"] < 2 or roles["check cell"] < 2:
        problems.append(f"{path.name}: {roles['answer cell']} answer cell(s) and {roles['check cell']} check "
                        "cell(s); each needs at least 2")
    return problems + _marker_problems(nb, path.name)


def _marker_problems(nb: Any, name: str) -> list[str]:
    """Bad markers, solution cells without a region, and regions in cells nbgrader would reject."""
    problems = []
    for index, cell in enumerate(nb.cells):
        meta, where = cell.get("metadata", {}).get("nbgrader", {}), cell_label(name, index, cell)
        found: Counter = Counter()
        if cell.cell_type == "code":
            try:
                found = student_source(cell.source, where=where)[1]
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

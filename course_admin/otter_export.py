"""otter-grader versions of the notebooks, generated from the nbgrader-style exercises (otter-grader 7).

``python -m course_admin otter --dest otter`` writes, for every notebook, a master notebook in
Otter Assign's notebook format (v1, the format of otter-grader 5 to 7: raw cells ``# ASSIGNMENT CONFIG``,
``# BEGIN QUESTION`` ... ``# END QUESTION`` with ``SOLUTION`` and ``TESTS`` blocks inside). Then
``otter assign otter/NN_x.ipynb dist/NN_x`` builds the student notebook and the autograder zip.

Each exercise becomes one question, derived from the exercise convention (CONTRIBUTING.md):

- name: the check cell's nbgrader ``grade_id`` without ``_check``; points: its nbgrader ``points``,
  all or nothing (like nbgrader, which scores a check cell as one unit);
- prompt: the markdown cell just before the answer cell;
- solution: the answer cell; its ``# BEGIN SOLUTION`` region becomes ``# BEGIN SOLUTION NO PROMPT`` plus
  an otter prompt block holding the same stub as our student version (``raise NotImplementedError()``);
- a written answer (a markdown solution cell that nbgrader grades by hand) becomes a manually graded
  question (``manual: true``) whose solution is that cell;
- tests: otter's exception-based tests (``tests: ok_format: false``), because check cells pass by not
  raising and may print anything. The check cell's code becomes the body of a test function whose
  parameters are the notebook variables it reads; without its hidden region it is the public test, with
  it (if it has one) a hidden test.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from course_admin import assignments
from course_admin.markers import CODE_STUB, clear_source, parse_marker
from course_admin.otter_tests import names_bound, notebook_names, otter_test_source

PROMPT = ('""" # BEGIN PROMPT', *CODE_STUB, '"""; # END PROMPT')
ASSIGNMENT_CONFIG = """\
# ASSIGNMENT CONFIG
name: {name}
init_cell: true
check_all_cell: false
export_cell:
  pdf: false
  run_tests: false
generate: true
tests:
  ok_format: false"""
QUESTION_CONFIG = "# BEGIN QUESTION\nname: {name}\npoints: {points}\nall_or_nothing: true"
MANUAL_CONFIG = "# BEGIN QUESTION\nname: {name}\npoints: {points}\nmanual: true"  # a written answer, graded by hand
# Lines that otter-assign treats specially, which our notebooks must not contain by accident.
_OTTER_SYNTAX = re.compile(r".*#\s*(SEED|IGNORE|END IGNORE|BEGIN PROMPT|END PROMPT)\s*$|\s*#\s*BEGIN\s*IGNORE")
_OTTER_SOLUTION = re.compile(r".* ?# ?SOLUTION")  # otter rewrites such lines in answer cells


def _raw(source: str) -> Any:
    from nbformat.v4 import new_raw_cell

    return new_raw_cell(source)


def _code(source: str) -> Any:
    from nbformat.v4 import new_code_cell

    return new_code_cell(source)


def _nbgrader(cell: Any) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def answer_source(source: str, *, where: str) -> str:
    """Answer cell source in otter's solution syntax (same student stub as ``assignments.release``).

    Raises:
        ValueError: A line otter would strip although it is not a solution marker.

    Used in: every notebook's exercises (otter export)
    """
    lines = []
    for number, line in enumerate(source.split("\n"), start=1):
        marker = parse_marker(line, where=where, number=number)
        if marker is None:
            if _OTTER_SOLUTION.match(line):
                raise ValueError(f"{where}, line {number}: {line.strip()!r} contains '# SOLUTION', which "
                                 "otter-assign would replace by '...'. Reword the comment.")
            lines.append(line)
        elif marker[1] == "BEGIN":
            lines.append(f"{marker[0]}# BEGIN SOLUTION NO PROMPT")
        else:
            lines += [f"{marker[0]}# END SOLUTION", *(marker[0] + prompt for prompt in PROMPT)]
    return "\n".join(lines)


def _without_markers(source: str, *, where: str) -> str:
    """The check cell with its hidden tests in place (marker lines dropped)."""
    lines = source.split("\n")
    return "\n".join(line for number, line in enumerate(lines, start=1)
                     if parse_marker(line, where=where, number=number) is None)


def _questions(nb: Any, *, name: str) -> list[tuple[int, list[int], int]]:
    """``(first cell, answer cells, check cell)`` of every exercise."""
    questions, answers, after_check = [], [], 0
    for index, cell in enumerate(nb.cells):
        role = assignments.exercise_role(cell)
        if role == "written answer" and not answers:   # its own manually graded question
            prompt = index - 1 >= after_check and nb.cells[index - 1].cell_type == "markdown"
            questions.append((index - 1 if prompt else index, [index], index))
            after_check = index + 1
        elif role in ("written answer", "answer cell"):
            answers.append(index)
        elif role == "check cell":
            first = answers[0] if answers else index
            if first - 1 >= after_check and nb.cells[first - 1].cell_type == "markdown":
                first -= 1  # the exercise's prompt
            questions.append((first, answers, index))
            answers, after_check = [], index + 1
    if answers:
        label = assignments.cell_label(name, answers[0], nb.cells[answers[0]])
        raise ValueError(f"{label} is an answer cell with no check cell after it, so otter could not grade "
                         "it. Add its graded check cell below it.")
    return questions


def _test_cells(check: Any, *, question: str, where: str) -> list[Any]:
    public = clear_source(check.source, where=where)
    cells = [_code(otter_test_source(public, name=question, where=where))]
    full = _without_markers(check.source, where=where)
    if full != public:
        cells.append(_code("# HIDDEN\n" + otter_test_source(full, name=f"{question}_hidden", where=where)))
    return cells


def _question_cells(nb: Any, question: tuple[int, list[int], int], *, name: str) -> list[Any]:
    """The cells of one exercise wrapped in otter's question, solution and test blocks."""
    first, answers, check_index = question
    check = nb.cells[check_index]
    qname, points = str(_nbgrader(check).get("grade_id")).removesuffix("_check"), _nbgrader(check).get("points")
    where, role = assignments.cell_label(name, check_index, check), assignments.exercise_role(check)
    problem = assignments.points_problem(points, where=where, role=role)
    if problem:
        raise ValueError(f"{problem} Run `python -m course_admin validate`.")
    if role == "written answer":
        return [_raw(MANUAL_CONFIG.format(name=qname, points=points)),
                *(copy.deepcopy(nb.cells[index]) for index in range(first, check_index)),
                _raw("# BEGIN SOLUTION"), copy.deepcopy(check), _raw("# END SOLUTION"), _raw("# END QUESTION")]
    cells = [_raw(QUESTION_CONFIG.format(name=qname, points=points))]
    for index in range(first, check_index):
        cell = copy.deepcopy(nb.cells[index])
        if index in answers:
            cell.source = answer_source(cell.source, where=assignments.cell_label(name, index, cell))
            cells += [_raw("# BEGIN SOLUTION"), cell, _raw("# END SOLUTION")]
        else:
            cells.append(cell)
    return [*cells, _raw("# BEGIN TESTS"), *_test_cells(check, question=qname, where=where),
            _raw("# END TESTS"), _raw("# END QUESTION")]


def otter_problems(nb: Any, *, name: str) -> list[str]:
    """What in a notebook would break under otter (empty when it is fine).

    Otter replaces each check cell by ``grader.check(...)``, so a later cell must not read a variable
    that only a check cell defines; and lines that otter-assign treats specially must not occur.

    Used in: every notebook's exercises (otter export)
    """
    problems, from_checks = [], {}
    for index, cell in enumerate(nb.cells):
        where = assignments.cell_label(name, index, cell)
        lines = cell.source.split("\n")
        problems += [f"{where}: {line.strip()!r} is otter-assign syntax; reword it" for line in lines
                     if _OTTER_SYNTAX.match(line) or (cell.cell_type != "code" and line.strip() == "```otter")]
        if cell.cell_type == "raw" and re.match(r"#\s*(BEGIN|END|ASSIGNMENT)\b", cell.source, re.IGNORECASE):
            problems.append(f"{where}: a raw cell starting like an otter block boundary; remove it")
        if cell.cell_type != "code" or _nbgrader(cell).get("solution"):
            continue
        try:
            bound = names_bound(cell.source)
            read = set(notebook_names(cell.source, where=where))
        except (SyntaxError, ValueError):
            continue  # magics: not a check; otter_test_source reports checks that do not parse
        if _nbgrader(cell).get("grade"):
            from_checks.update(dict.fromkeys(bound - set(from_checks), where))
            continue
        problems += [f"{where} reads `{var}`, which only {from_checks[var]} (a check cell) defines; otter "
                     "removes check cells from the notebook. Define it in an ordinary cell."
                     for var in sorted((read - bound) & set(from_checks))]
        for var in bound:
            from_checks.pop(var, None)
    return problems


def otter_notebook(nb: Any, *, name: str) -> Any:
    """The Otter Assign master notebook of one course notebook (a new notebook; ``nb`` is unchanged).

    Raises:
        ValueError: Bad exercise markers or metadata, or anything :func:`otter_problems` reports.

    Used in: every notebook's exercises (``python -m course_admin otter``)
    """
    assignments.student_notebook(nb, name=name)  # raises on bad markers
    problems = otter_problems(nb, name=name)
    if problems:
        raise ValueError("\n".join(problems))
    master = copy.deepcopy(nb)
    questions = _questions(nb, name=name)
    cells, done = [_raw(ASSIGNMENT_CONFIG.format(name=Path(name).stem))], 0
    for question in questions:
        cells += [copy.deepcopy(cell) for cell in nb.cells[done:question[0]]]
        cells += _question_cells(nb, question, name=name)
        done = question[2] + 1
    master.cells = cells + [copy.deepcopy(cell) for cell in nb.cells[done:]]
    for cell in master.cells:
        cell.metadata.pop("nbgrader", None)
    return master


def export(*, source: str | Path = "notebooks", dest: str | Path = "otter") -> list[Path]:
    """Write the otter master notebook of every notebook in ``source`` to ``dest`` (same file names).

    All notebooks are converted before any is written, so one bad notebook writes nothing.

    Used in: instructors' otter-grader workflow (README, "Guide for instructors")
    """
    source, dest = Path(source), Path(dest)
    if dest.resolve() == source.resolve():
        raise ValueError(f"--dest {str(dest)!r} is the source folder; pick another folder, e.g. otter.")
    masters = {path.name: otter_notebook(assignments.read_notebook(path), name=path.name)
               for path in assignments.find_notebooks(source)}
    dest.mkdir(parents=True, exist_ok=True)
    for file_name, master in masters.items():
        (dest / file_name).write_text(assignments.serialise(master), encoding="utf-8")
        print(f"{dest / file_name}: otter master notebook; next: otter assign {dest / file_name} dist/{Path(file_name).stem}")
    return [dest / file_name for file_name in masters]

"""Student versions of the notebooks: the transformation, agreement with nbgrader, and checks that fail
the right way (with CheckFailed) when the student has not answered yet."""
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from course_admin import assignments, cli, markers

NOTEBOOK_DIR = Path(__file__).parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
STUB = "# YOUR CODE HERE\nraise NotImplementedError()"


def answer_cell(source, grade_id):
    meta = dict(assignments.ANSWER_METADATA, grade_id=grade_id)
    return new_code_cell(source, metadata={"nbgrader": meta})


def check_cell(source, grade_id):
    meta = dict(assignments.CHECK_METADATA, grade_id=grade_id, points=1)
    return new_code_cell(source, metadata={"nbgrader": meta})


def with_output(cell, text="42\n"):
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
    cell.execution_count = 3
    return cell


def exercise_notebook():
    """Two exercises (a variable and an indented function body), a hidden test, outputs, plain cells."""
    nb = new_notebook(cells=[
        new_markdown_cell("# Title\n\nPlain markdown that mentions solutions."),
        with_output(new_code_cell("import math\nprint(42)")),
        new_markdown_cell("### Exercise 1: the answer"),
        with_output(answer_cell("answer = None\n# BEGIN SOLUTION\nanswer = 6 * 7\n# END SOLUTION\nprint(answer)",
                                "t_ex1_answer")),
        check_cell("from course_utils.checks import check_equal\ncheck_equal(answer, 42, 'answer')\n"
                   "# BEGIN HIDDEN TESTS\ncheck_equal(answer + 1, 43, 'answer + 1')\n# END HIDDEN TESTS",
                   "t_ex1_check"),
        new_markdown_cell("### Exercise 2: a function"),
        answer_cell("def double(x):\n    \"\"\"Twice x.\"\"\"\n    # BEGIN SOLUTION\n    y = 2 * x\n    return y\n"
                    "    # END SOLUTION", "t_ex2_answer"),
        check_cell("from course_utils.checks import check_equal, check_implemented\n"
                   "check_equal(check_implemented(double, 4), 8, 'double(4)')", "t_ex2_check"),
        with_output(new_code_cell("print(math.pi)"), text="3.14\n"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def code_of(nb):
    return [cell.source for cell in nb.cells]


# 1. The transformation --------------------------------------------------------------------------------

def test_solution_at_top_level_becomes_the_stub():
    source = "answer = None\n# BEGIN SOLUTION\nanswer = 6 * 7\n# END SOLUTION\nprint(answer)"
    assert markers.clear_source(source) == f"answer = None\n{STUB}\nprint(answer)"


def test_indentation_of_the_marker_line_is_kept():
    source = "def f(x):\n    if x:\n        # BEGIN SOLUTION\n        return 1\n        # END SOLUTION\n    return 0"
    expected = "def f(x):\n    if x:\n        # YOUR CODE HERE\n        raise NotImplementedError()\n    return 0"
    assert markers.clear_source(source) == expected


def test_hidden_tests_are_removed_with_their_markers():
    source = "check(a)\n# BEGIN HIDDEN TESTS\ncheck(b)\ncheck(c)\n# END HIDDEN TESTS\ncheck(d)"
    assert markers.clear_source(source) == "check(a)\ncheck(d)"


def test_two_regions_and_trailing_whitespace_on_markers():
    source = "# BEGIN SOLUTION  \na = 1\n# END SOLUTION\nb = 2\n\t# BEGIN SOLUTION\n\tc = 3\n\t# END SOLUTION"
    assert markers.clear_source(source) == f"{STUB}\nb = 2\n\t# YOUR CODE HERE\n\traise NotImplementedError()"


def test_source_without_markers_is_unchanged():
    source = "x = 1  # a solution, as a comment\nprint('BEGIN')\n"
    assert markers.clear_source(source) == source


def test_student_notebook_clears_outputs_and_keeps_other_cells_identical():
    nb = exercise_notebook()
    before = nbformat.writes(nb)
    student, found = assignments.student_notebook(nb, name="t.ipynb")
    assert nbformat.writes(nb) == before, "the instructor notebook must not be modified"
    assert found == {"SOLUTION": 2, "HIDDEN TESTS": 1}
    assert all(c.outputs == [] and c.execution_count is None for c in student.cells if c.cell_type == "code")
    changed = {3, 4, 6}
    for index, (old, new) in enumerate(zip(nb.cells, student.cells)):
        assert new.metadata == old.metadata and new.get("id") == old.get("id")
        if index not in changed:
            assert new.source == old.source, f"cell {index} changed"
    assert student.cells[3].source == f"answer = None\n{STUB}\nprint(answer)"
    assert "HIDDEN" not in student.cells[4].source and "answer + 1" not in student.cells[4].source
    assert student.cells[6].source == (
        'def double(x):\n    """Twice x."""\n    # YOUR CODE HERE\n    raise NotImplementedError()')
    assert student.metadata == nb.metadata


@pytest.mark.parametrize("source, message", [
    ("a = None\n# BEGIN SOLUTION\na = 1", "line 2: `# BEGIN SOLUTION` is never closed"),
    ("a = 1\n# END SOLUTION", "line 2: `# END SOLUTION` without a matching `# BEGIN SOLUTION`"),
    ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION\n# END SOLUTION", "line 2: `# BEGIN SOLUTION` inside"),
    ("# BEGIN SOLUTION\na = 1\n# END HIDDEN TESTS", "line 3: `# END HIDDEN TESTS` without a matching"),
    ("### BEGIN SOLUTION\na = 1\n### END SOLUTION", "line 1: '### BEGIN SOLUTION' looks like an nbgrader marker"),
    ("a = 1  # BEGIN SOLUTION", "looks like an nbgrader marker"),
    ("#BEGIN SOLUTION\na = 1\n#END SOLUTION", "looks like an nbgrader marker"),
])
def test_bad_markers_raise_naming_the_cell_and_line(source, message):
    nb = new_notebook(cells=[new_markdown_cell("# T"), answer_cell(source, "t_ex9_answer")])
    with pytest.raises(ValueError, match="t.ipynb cell 1 \\(grade_id t_ex9_answer\\)") as error:
        assignments.student_notebook(nb, name="t.ipynb")
    assert message in str(error.value)


def test_solution_cell_without_region_would_leak_and_raises():
    nb = new_notebook(cells=[answer_cell("answer = 42", "t_ex1_answer")])
    with pytest.raises(ValueError, match="cell 0 \\(grade_id t_ex1_answer\\).*would be published"):
        assignments.student_notebook(nb, name="t.ipynb")


def test_markdown_is_never_touched():
    nb = new_notebook(cells=[new_markdown_cell("Write it like this:\n\n# BEGIN SOLUTION\nx = 1\n# END SOLUTION")])
    assert assignments.student_notebook(nb)[0].cells[0].source == nb.cells[0].source


# Files: formatting, release and the command line ------------------------------------------------------

def write_source_folder(folder, notebooks):
    folder.mkdir()
    for name, nb in notebooks.items():
        nbformat.write(nb, folder / name)
    return {name: (folder / name).read_bytes() for name in notebooks}


def test_release_writes_byte_identical_files_except_exercises(tmp_path):
    plain = new_notebook(cells=[new_markdown_cell("# Plain\n\nÄ non-ASCII ✓"), new_code_cell("x = 1\n\nprint(x)\n")])
    plain.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    originals = write_source_folder(tmp_path / "src", {"01_plain.ipynb": plain, "02_ex.ipynb": exercise_notebook()})
    written = assignments.release(source=tmp_path / "src", dest=tmp_path / "out")
    assert [p.name for p in written] == ["01_plain.ipynb", "02_ex.ipynb"]
    assert (tmp_path / "out" / "01_plain.ipynb").read_bytes() == originals["01_plain.ipynb"]
    assert {n: (tmp_path / "src" / n).read_bytes() for n in originals} == originals, "sources must not change"
    student = (tmp_path / "out" / "02_ex.ipynb").read_text(encoding="utf-8")
    assert student.endswith("}\n") and student.startswith('{\n "cells": [\n  {\n')  # indent=1, newline
    expected = assignments.student_notebook(nbformat.reads(originals["02_ex.ipynb"].decode(), as_version=4))[0]
    assert student == nbformat.writes(expected) + "\n"
    assert "6 * 7" not in student and "answer + 1" not in student and "3.14" not in student


def test_release_refuses_to_overwrite_the_source_and_needs_notebooks(tmp_path):
    write_source_folder(tmp_path / "src", {"01_ex.ipynb": exercise_notebook()})
    with pytest.raises(ValueError, match="overwrite the solutions"):
        assignments.release(source=tmp_path / "src", dest=tmp_path / "src" / ".")
    with pytest.raises(ValueError, match="No \\*.ipynb files in .*empty"):
        assignments.release(source=tmp_path / "empty", dest=tmp_path / "out")


def test_release_writes_nothing_when_one_notebook_is_bad(tmp_path):
    bad = new_notebook(cells=[answer_cell("# BEGIN SOLUTION\nx = 1", "t_ex1_answer")])
    write_source_folder(tmp_path / "src", {"01_ex.ipynb": exercise_notebook(), "02_bad.ipynb": bad})
    with pytest.raises(ValueError, match="02_bad.ipynb cell 0"):
        assignments.release(source=tmp_path / "src", dest=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_command_line_release_and_validate(tmp_path, capsys):
    one_exercise = exercise_notebook()
    del one_exercise.cells[5:8]
    write_source_folder(tmp_path / "src", {"01_ex.ipynb": exercise_notebook()})
    assert cli.main(["release", "--source", str(tmp_path / "src"), "--dest", str(tmp_path / "out")]) == 0
    assert "2 solution(s) cleared, 1 hidden test(s) removed" in capsys.readouterr().out
    assert cli.main(["validate", "--source", str(tmp_path / "src")]) == 0
    write_source_folder(tmp_path / "more", {"01_one.ipynb": one_exercise,
                                            "02_bad.ipynb": new_notebook(cells=[new_code_cell("# END SOLUTION")])})
    assert cli.main(["validate", "--source", str(tmp_path / "more")]) == 1
    out = capsys.readouterr().out
    assert "01_one.ipynb: 1 answer cell(s) and 1 check cell(s)" in out and "02_bad.ipynb cell 0 (id" in out
    assert cli.main(["release", "--source", str(tmp_path / "more"), "--dest", str(tmp_path / "o2")]) == 2
    assert "error: 02_bad.ipynb cell 0" in capsys.readouterr().err


def test_validate_reports_metadata_problems(tmp_path):
    nb = exercise_notebook()
    nb.cells[4].metadata["nbgrader"]["grade_id"] = "t_ex1_answer"  # duplicate of the answer cell
    nb.cells[7].metadata["nbgrader"]["schema_version"] = 2
    nb.cells[7].metadata["nbgrader"]["points"] = 0
    nb.cells[1].metadata["nbgrader"] = dict(assignments.CHECK_METADATA, grade_id="t_x", points=1)
    nb.cells[1].source = "# BEGIN HIDDEN TESTS\n# END HIDDEN TESTS"  # fine: it is a graded cell now
    nb.cells[8].source = "# BEGIN SOLUTION\n# END SOLUTION"  # a region outside a solution cell
    nbformat.write(nb, tmp_path / "t.ipynb")
    problems = assignments.validate(tmp_path / "t.ipynb")
    assert problems == [
        "t.ipynb cell 7 (grade_id t_ex2_check): nbgrader metadata {'schema_version': 2} should be "
        "{'schema_version': 3}",
        "t.ipynb cell 7 (grade_id t_ex2_check): a check cell's nbgrader points must be a positive number such as 1, "
        "got 0.",
        "t.ipynb: grade_id 't_ex1_answer' is used by 2 cells; make each unique",
        "t.ipynb cell 8 (id " + nb.cells[8].id + "): has a solution region but is not an nbgrader solution cell",
    ]


# 2. Agreement with nbgrader's own preprocessors --------------------------------------------------------

def nbgrader_student_version(nb):
    """nbgrader's ClearSolutions and ClearHiddenTests (the order of `nbgrader generate_assignment`)."""
    from nbgrader.preprocessors import ClearHiddenTests, ClearSolutions

    clear = ClearSolutions(begin_solution_delimeter="BEGIN SOLUTION", end_solution_delimeter="END SOLUTION",
                           code_stub={"python": STUB}, enforce_metadata=True)
    nb, resources = clear.preprocess(nbformat.from_dict(nb), {})
    return ClearHiddenTests(enforce_metadata=True).preprocess(nb, resources)[0]


@pytest.mark.parametrize("path", [None, *NOTEBOOKS], ids=lambda p: p.name if p else "synthetic")
def test_same_regions_as_nbgrader(path):
    pytest.importorskip("nbgrader")
    nb = exercise_notebook() if path is None else assignments.read_notebook(path)
    ours = assignments.student_notebook(nb, name=path.name if path else "synthetic")[0]
    theirs = nbgrader_student_version(nb)
    assert code_of(ours) != code_of(nb), "nothing was removed: the comparison would be vacuous"
    assert code_of(ours) == code_of(theirs)


# The real notebooks: formatting and exercise metadata ---------------------------------------------------

@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_real_notebook_round_trips_byte_identical(path):
    assert assignments.serialise(assignments.read_notebook(path)) == path.read_text(encoding="utf-8"), (
        f"{path.name} is not saved in nbformat's format (indent=1, sorted keys, trailing newline): "
        "write it with nbformat.write or save it in Jupyter"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_real_notebook_exercises_are_valid(path):
    assert assignments.validate(path) == []


# 3. The checks are not vacuous: run the student versions -------------------------------------------------

def execute(nb, cwd):
    """Run a notebook top to bottom like a student would, errors allowed; returns the executed copy."""
    from nbclient import NotebookClient

    client = NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(cwd)}})
    return client.execute()


def errors(cell):
    return [out for out in cell.get("outputs", []) if out.output_type == "error"]


def wrong_failures(executed, name):
    """Lines for cells that failed the wrong way: before the first answer, or a check not failing with CheckFailed."""
    wrong, answered = [], False
    for index, cell in enumerate(executed.cells):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        answered = answered or bool(meta.get("solution"))
        if cell.cell_type != "code":
            continue
        label, errs = assignments.cell_label(name, index, cell), errors(cell)
        got = f"{errs[0].ename}: {errs[0].evalue}" if errs else "no error"
        if meta.get("grade") and not meta.get("solution"):
            if not errs or errs[0].ename != "CheckFailed":
                wrong.append(f"{label}: check should raise CheckFailed, got {got}")
        elif not answered and errs:
            wrong.append(f"{label}: error before the first exercise: {got}")
    return wrong


def other_errors(executed, name):
    """Ordinary cells after the first exercise that fail when exercises are unanswered (informative)."""
    return [f"{assignments.cell_label(name, i, c)}: {errors(c)[0].ename}" for i, c in enumerate(executed.cells)
            if c.cell_type == "code" and errors(c) and not c.metadata.get("nbgrader")]


def skipped_in_student_run(cell) -> bool:
    """A long demonstration that no check needs, marked so in the cell's metadata (see CONTRIBUTING.md)."""
    return cell.get("metadata", {}).get("course_utils", {}).get("student_run") == "skip"


def cells_the_checks_need(nb):
    """The notebook up to its last graded check cell, without the cells marked as skipped in student runs.

    Cells after the last check cannot change whether a check fails; a skipped cell that a check needs shows
    up as that check failing with NameError instead of CheckFailed, which ``wrong_failures`` reports.
    """
    graded = [i for i, cell in enumerate(nb.cells) if cell.get("metadata", {}).get("nbgrader", {}).get("grade")]
    if graded:
        nb.cells = [cell for cell in nb.cells[:graded[-1] + 1] if not skipped_in_student_run(cell)]
    return nb


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_cells_skipped_in_student_runs_are_plain_code_cells(path):
    for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
        if skipped_in_student_run(cell):
            assert cell.cell_type == "code" and not cell.metadata.get("nbgrader"), (
                f"{path.name} cell {index}: only ordinary code cells may be skipped in student runs")


def test_student_run_drops_cells_after_the_last_check_and_skipped_cells():
    nb = nbformat.from_dict(exercise_notebook())
    last = max(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade"))
    nb.cells.append(nbformat.v4.new_code_cell("after_the_last_check = 1"))
    nb.cells.insert(1, nbformat.v4.new_code_cell("expensive = 1", metadata={"course_utils": {"student_run": "skip"}}))
    kept = cells_the_checks_need(nb).cells
    assert len(kept) == last + 1 and all(c.source not in ("expensive = 1", "after_the_last_check = 1") for c in kept)


@pytest.mark.student_notebooks
def test_student_version_of_a_tiny_notebook_fails_its_checks_with_checkfailed(tmp_path):
    nb = exercise_notebook()
    instructor = execute(nbformat.from_dict(nb), tmp_path)
    assert [c for c in instructor.cells if errors(c)] == [], "the instructor version must pass its checks"
    student = execute(assignments.student_notebook(nb)[0], tmp_path)
    assert wrong_failures(student, "t.ipynb") == []
    assert [errors(c)[0].ename for c in student.cells if errors(c)] == [
        "NotImplementedError", "CheckFailed", "CheckFailed"]
    assert "`answer` is still None" in errors(student.cells[4])[0].evalue
    broken = nbformat.from_dict(nb)
    # a typo in the check: NameError, not CheckFailed
    broken.cells[4].source = "from course_utils.checks import check_equal\ncheck_equal(answre, 42, 'answer')"
    assert wrong_failures(execute(assignments.student_notebook(broken)[0], tmp_path), "t.ipynb") == [
        "t.ipynb cell 4 (grade_id t_ex1_check): check should raise CheckFailed, got "
        "NameError: name 'answre' is not defined"]


@pytest.mark.slow
@pytest.mark.student_notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_student_version_checks_fail_with_checkfailed(path, tmp_path, hymenoptera_folder):
    student = tmp_path / path.name
    student.write_text(assignments.serialise(assignments.student_notebook(
        assignments.read_notebook(path), name=path.name)[0]), encoding="utf-8")
    executed = execute(cells_the_checks_need(nbformat.read(student, as_version=4)), cwd=path.parent)
    graded = [c for c in executed.cells if c.metadata.get("nbgrader", {}).get("grade")]
    assert graded, f"{path.name} has no graded check cells: nothing to test"
    wrong = wrong_failures(executed, path.name)
    print("\n".join(["cells that failed the wrong way:", *wrong] if wrong else [f"{path.name}: all checks OK"]))
    others = other_errors(executed, path.name)
    if others:
        print("ordinary cells failing after unanswered exercises:", *others, sep="\n  ")
    assert wrong == [], "\n".join(wrong)

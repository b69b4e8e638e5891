"""Written answers: a markdown cell that the instructor grades by hand (nbgrader's manually graded answer),
in the student version, the exercise check, and the nbgrader and otter exports."""
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_markdown_cell
from test_assignments import code_of, exercise_notebook, nbgrader_student_version

from course_admin import assignments, otter_export

SAMPLE = "Because the validation interval says so: 42."


def with_written_answer(points=2, **changes):
    nb = exercise_notebook()
    meta = dict(assignments.WRITTEN_METADATA, grade_id="t_ex3_written", points=points, **changes)
    nb.cells.insert(8, new_markdown_cell("### Exercise 3: why?\n\nSay why, in words."))
    nb.cells.insert(9, new_markdown_cell(SAMPLE, metadata={"nbgrader": meta}))
    return nb


def test_the_student_version_replaces_it_as_nbgrader_does():
    pytest.importorskip("nbgrader")
    nb = with_written_answer()
    ours, found = assignments.student_notebook(nb, name="t.ipynb")
    assert ours.cells[9].source == assignments.TEXT_STUB and found["WRITTEN"] == 1
    assert ours.cells[8].source == nb.cells[8].source, "the prompt stays"
    assert code_of(ours) == code_of(nbgrader_student_version(nb))


def test_validate_accepts_it_and_names_bad_metadata(tmp_path):
    nbformat.write(with_written_answer(), tmp_path / "good.ipynb")
    assert assignments.validate(tmp_path / "good.ipynb") == []
    nbformat.write(with_written_answer(points=0, locked=True), tmp_path / "bad.ipynb")
    problems = assignments.validate(tmp_path / "bad.ipynb")
    assert any("'locked': True} should be {'locked': False}" in p for p in problems)
    assert any("a written answer's nbgrader points must be a positive number such as 1, got 0." in p for p in problems)


def test_otter_makes_it_a_manually_graded_question():
    master = otter_export.otter_notebook(with_written_answer(), name="t.ipynb")
    raw = [c.source for c in master.cells if c.cell_type == "raw"]
    assert "# BEGIN QUESTION\nname: t_ex3_written\npoints: 2\nmanual: true" in raw
    start = [c.source for c in master.cells].index("# BEGIN QUESTION\nname: t_ex3_written\npoints: 2\nmanual: true")
    assert [c.source for c in master.cells[start + 1:start + 5]] == [
        "### Exercise 3: why?\n\nSay why, in words.", "# BEGIN SOLUTION", SAMPLE, "# END SOLUTION"]


def test_otter_assign_hides_the_sample_answer(tmp_path):
    pytest.importorskip("otter")
    nbformat.write(otter_export.otter_notebook(with_written_answer(), name="t.ipynb"), tmp_path / "t.ipynb")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    done = subprocess.run(["otter", "assign", "--no-run-tests", "t.ipynb", "dist"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    student = nbformat.read(tmp_path / "dist" / "student" / "t.ipynb", as_version=4)
    text = "\n".join(c.source for c in student.cells)
    assert SAMPLE not in text and "Say why, in words." in text
    assert any("otter_answer_cell" in c.metadata.get("tags", []) and c.cell_type == "markdown" for c in student.cells)

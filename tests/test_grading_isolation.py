"""Grading does not mix students: each submission graded by the real nbgrader sees only the files it wrote.

Notebook 06 saves its model under ``data.runs_root()`` and 08 loads it from there. If every graded run
shared one runs folder, the second submission would be graded with the first one's model. The tiny
notebook below reads a file under ``runs_root()`` (it must not exist yet), then writes its own; two
submissions graded in a row must both find nothing and both get full points.
"""
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from test_assignments import answer_cell, check_cell

from course_admin import nbgrader_course
from course_utils import data

NAME = "01_runs"


def runs_notebook():
    """Two exercises around a file under runs_root(): nothing there before, our own file there after."""
    nb = new_notebook(cells=[
        new_markdown_cell("# Runs folder\n\n## Learning objectives\n- none"),
        new_code_cell("from course_utils import checks, data\n"
                      "marker = data.runs_root() / 'finetuned' / 'model.txt'\n"
                      "found = marker.read_text() if marker.exists() else None"),
        new_markdown_cell("### Exercise 1: your name"),
        answer_cell("student = None\n# BEGIN SOLUTION\nstudent = 'SOMEONE'\n# END SOLUTION", f"{NAME}_ex1_answer"),
        check_cell("checks.check_answered(student, 'student')\n"
                   "if found is not None:\n"
                   "    raise checks.CheckFailed(f'the runs folder already holds the model of {found}')",
                   f"{NAME}_ex1_check"),
        new_code_cell("if student is not None:\n"
                      "    marker.parent.mkdir(parents=True, exist_ok=True)\n"
                      "    marker.write_text(student)"),
        new_markdown_cell("### Exercise 2: your file"),
        answer_cell("saved = None\n# BEGIN SOLUTION\nsaved = marker.read_text()\n# END SOLUTION", f"{NAME}_ex2_answer"),
        check_cell("checks.check_equal(saved, student, 'the saved name')", f"{NAME}_ex2_check"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def test_runs_root_is_the_submission_folder_under_nbgrader_autograde(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_RUNS", str(tmp_path / "shared"))
    monkeypatch.chdir(tmp_path)
    assert data.runs_root() == (tmp_path / "shared").resolve()
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    assert data.runs_root() == tmp_path.resolve() / "runs"


@pytest.mark.student_notebooks
def test_two_submissions_graded_in_a_row_see_only_their_own_runs_folder(tmp_path, monkeypatch):
    pytest.importorskip("nbgrader")
    from nbgrader.api import Gradebook
    from test_graders import run_steps

    (tmp_path / "src").mkdir()
    nbformat.write(runs_notebook(), tmp_path / "src" / f"{NAME}.ipynb")
    course = tmp_path / "course"
    nbgrader_course.layout(course=course, source=tmp_path / "src", names=[NAME])
    run_steps([f"nbgrader generate_assignment {NAME}"], course)
    release = nbformat.read(course / "release" / NAME / f"{NAME}.ipynb", as_version=4)
    students = ("alice", "bob")
    for student in students:
        nb = nbformat.from_dict(release)
        answers = [cell for cell in nb.cells if cell.metadata.get("nbgrader", {}).get("solution")]
        answers[0].source = f"student = {student!r}"
        answers[1].source = "saved = marker.read_text()"
        (course / "submitted" / student / NAME).mkdir(parents=True)
        nbformat.write(nb, course / "submitted" / student / NAME / f"{NAME}.ipynb")
    shared = tmp_path / "shared_runs"   # an instructor's COURSE_RUNS: grading must not use it
    monkeypatch.setenv("COURSE_RUNS", str(shared))
    run_steps([f"nbgrader autograde {NAME}"], course)
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        scores = {s: (gradebook.find_submission(NAME, s).score, gradebook.find_submission(NAME, s).max_score)
                  for s in students}
    assert scores == {"alice": (2.0, 2.0), "bob": (2.0, 2.0)}, "the second submission saw the first one's file"
    for student in students:
        marker = course / "autograded" / student / NAME / "runs" / "finetuned" / "model.txt"
        assert marker.read_text() == student
    assert not shared.exists()


@pytest.mark.student_notebooks
def test_two_submissions_run_by_otter_in_a_row_see_only_their_own_runs_folder(tmp_path, monkeypatch):
    pytest.importorskip("otter")
    import json

    from test_graders import run_steps

    from course_admin import otter_export

    nbformat.write(otter_export.otter_notebook(runs_notebook(), name=f"{NAME}.ipynb"), tmp_path / f"{NAME}.ipynb")
    run_steps([f"otter assign --no-run-tests {NAME}.ipynb dist"], tmp_path)
    student = nbformat.read(tmp_path / "dist" / "student" / f"{NAME}.ipynb", as_version=4)
    shared = tmp_path / "shared_runs"   # an instructor's COURSE_RUNS: grading must not use it
    monkeypatch.setenv("COURSE_RUNS", str(shared))
    scores = {}
    for name in ("alice", "bob"):
        nb = nbformat.from_dict(student)
        answers = [cell for cell in nb.cells if "otter_answer_cell" in cell.metadata.get("tags", [])]
        answers[0].source, answers[1].source = f"student = {name!r}", "saved = marker.read_text()"
        (tmp_path / name).mkdir()
        nbformat.write(nb, tmp_path / name / f"{NAME}.ipynb")
        run_steps([f"otter run -a dist/autograder/*.zip -o {name} {name}/{NAME}.ipynb"], tmp_path)
        results = json.loads((tmp_path / name / "results.json").read_text())
        scores[name] = sum(test.get("score", 0) for test in results["tests"])
    assert scores == {"alice": 2.0, "bob": 2.0}, "the second submission saw the first one's file"
    assert not shared.exists()

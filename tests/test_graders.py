"""The nbgrader and otter-grader exports: their logic on small notebooks, then the real tools on notebook 01.

The real-tool tests run, word for word, the instructor steps of README.md ("Guide for instructors") in a
temporary folder with the real ``nbgrader`` and ``otter`` commands, and grade two submissions each: the
generated student notebook as it is (zero points) and the same notebook with the solutions filled in
(full points). Notebook 01 is used because it is the quickest to execute.
"""
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_raw_cell
from test_assignments import answer_cell, check_cell, exercise_notebook

from course_admin import assignments, cli, markers, nbgrader_course, otter_export, otter_tests

ROOT = Path(__file__).parent.parent
NOTEBOOK = "01_data_loading"
NBGRADER_STEPS = [
    f"python -m course_admin nbgrader --course nbgrader_course {NOTEBOOK}",
    f"cd nbgrader_course && nbgrader generate_assignment {NOTEBOOK}",
    f"cd nbgrader_course && nbgrader autograde {NOTEBOOK}",
    "cd nbgrader_course && nbgrader export",
]
OTTER_STEPS = [
    "python -m course_admin otter --dest otter",
    f"otter assign --no-run-tests otter/{NOTEBOOK}.ipynb dist/{NOTEBOOK}",
    f"for s in submissions/*; do otter run -a dist/{NOTEBOOK}/autograder/*.zip -o $s $s/{NOTEBOOK}.ipynb; done",
]


def readme_lines():
    return [line.strip() for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()]


# The otter export ----------------------------------------------------------------------------------------

def test_otter_master_has_one_question_per_exercise():
    master = otter_export.otter_notebook(exercise_notebook(), name="t.ipynb")
    kinds = [c.source.split("\n")[0] if c.cell_type == "raw" else c.cell_type for c in master.cells]
    question = ["# BEGIN QUESTION", "markdown", "# BEGIN SOLUTION", "code", "# END SOLUTION", "# BEGIN TESTS"]
    assert kinds == ["# ASSIGNMENT CONFIG", "markdown", "code", *question, "code", "code", "# END TESTS",
                     "# END QUESTION", *question, "code", "# END TESTS", "# END QUESTION", "code"]
    assert master.cells[3].source == "# BEGIN QUESTION\nname: t_ex1\npoints: 1\nall_or_nothing: true"
    assert "name: t\n" in master.cells[0].source and "ok_format: false" in master.cells[0].source
    assert master.cells[6].source == ("answer = None\n# BEGIN SOLUTION NO PROMPT\nanswer = 6 * 7\n# END SOLUTION\n"
                                      '""" # BEGIN PROMPT\n# YOUR CODE HERE\nraise NotImplementedError()\n'
                                      '"""; # END PROMPT\nprint(answer)')
    public, hidden = master.cells[9].source, master.cells[10].source
    assert public.startswith("def test_t_ex1(answer):\n    from course_utils.checks import check_equal") \
        and "answer + 1" not in public
    assert hidden.startswith("# HIDDEN\ndef test_t_ex1_hidden(answer):") and "answer + 1" in hidden
    assert all("nbgrader" not in c.metadata for c in master.cells)


def test_otter_prompt_keeps_the_indentation_of_a_function_body():
    source = exercise_notebook().cells[6].source
    assert otter_export.answer_source(source, where="cell").endswith(
        '    # BEGIN SOLUTION NO PROMPT\n    y = 2 * x\n    return y\n    # END SOLUTION\n'
        '    """ # BEGIN PROMPT\n    # YOUR CODE HERE\n    raise NotImplementedError()\n    """; # END PROMPT')


@pytest.mark.parametrize("check, parameters", [
    ("check_equal(answer, 42, 'answer')", "answer, check_equal"),
    ("print(len(items))", "items"),  # builtins come from Python, not the notebook
    ("x = 1\nprint(x)", ""),  # set by the check before it reads it: a local
    ("x = x + 1", "x"),  # read before it is set: the notebook's x
    ("n = 3\nn += 1\nprint(n)", ""),
    ("total = 0\ntotal += value", "value"),
    ("def f():\n    return model(batch)\nf()", "batch, model"),
    ("[check(v) for v in values]", "check, values"),
    ("import torch\ntorch.manual_seed(0)", ""),
    ("sum = 5\nprint(sum)", ""),
])
def test_otter_test_functions_receive_the_notebook_variables_they_read(check, parameters):
    text = otter_tests.otter_test_source(check, name="q1", where="cell")
    assert text.split("\n")[0] == f"def test_q1({parameters}):"


@pytest.mark.parametrize("check, message", [
    ("from math import *\nprint(pi)", "import \\* only allowed"),
    ("global x\nx = 1", "`global x` cannot become"),
    ("%time check(a)", "invalid syntax"),
    ("await check(a)", "outside"),
])
def test_otter_refuses_checks_that_cannot_become_test_functions(check, message):
    with pytest.raises(ValueError, match=message):
        otter_tests.otter_test_source(check, name="q1", where="01.ipynb cell 4")


def test_otter_refuses_what_would_break_or_leak():
    nb = exercise_notebook()
    nb.cells[4].source += "\nleftover = answer"
    nb.cells.append(new_code_cell("print(leftover)"))
    nb.cells.append(new_code_cell("torch.manual_seed(0)  # SEED"))
    nb.cells.append(new_raw_cell("# BEGIN TESTS"))
    with pytest.raises(ValueError) as error:
        otter_export.otter_notebook(nb, name="t.ipynb")
    assert str(error.value).split("\n") == [
        "t.ipynb cell 9 (id " + nb.cells[9].id + ") reads `leftover`, which only t.ipynb cell 4 (grade_id "
        "t_ex1_check) (a check cell) defines; otter removes check cells from the notebook. Define it in an "
        "ordinary cell.",
        "t.ipynb cell 10 (id " + nb.cells[10].id + "): 'torch.manual_seed(0)  # SEED' is otter-assign syntax; "
        "reword it",
        "t.ipynb cell 11 (id " + nb.cells[11].id + "): a raw cell starting like an otter block boundary; remove it",
    ]
    with pytest.raises(ValueError, match="line 2: 'x = 1  # SOLUTION here' contains '# SOLUTION'"):
        otter_export.answer_source("# BEGIN SOLUTION\nx = 1  # SOLUTION here\n# END SOLUTION", where="cell")
    unchecked = exercise_notebook()
    unchecked.cells.append(answer_cell("a = None\n# BEGIN SOLUTION\na = 1\n# END SOLUTION", "t_ex3_answer"))
    with pytest.raises(ValueError, match="grade_id t_ex3_answer\\) is an answer cell with no check cell after it"):
        otter_export.otter_notebook(unchecked, name="t.ipynb")


def test_otter_export_writes_every_notebook_or_none(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    nbformat.write(exercise_notebook(), tmp_path / "src" / "01_ex.ipynb")
    assert cli.main(["otter", "--source", str(tmp_path / "src"), "--dest", str(tmp_path / "out")]) == 0
    expected = otter_export.otter_notebook(assignments.read_notebook(tmp_path / "src" / "01_ex.ipynb"), name="01_ex.ipynb")
    written = assignments.read_notebook(tmp_path / "out" / "01_ex.ipynb")
    assert [c.source for c in written.cells] == [c.source for c in expected.cells]
    assert "otter assign" in capsys.readouterr().out
    nbformat.write(new_notebook(cells=[answer_cell("x = 1", "t_ex1_answer")]), tmp_path / "src" / "02_bad.ipynb")
    assert cli.main(["otter", "--source", str(tmp_path / "src"), "--dest", str(tmp_path / "o2")]) == 2
    assert not (tmp_path / "o2").exists()


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_every_course_notebook_exports_to_otter(path):
    nb = assignments.read_notebook(path)
    master = otter_export.otter_notebook(nb, name=path.name)
    checks = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    configs = [c.source for c in master.cells if c.cell_type == "raw" and c.source.startswith("# BEGIN QUESTION")]
    assert [line.split("\n")[1] for line in configs] == [
        "name: " + c.metadata["nbgrader"]["grade_id"].removesuffix("_check") for c in checks]


# The nbgrader course folder ------------------------------------------------------------------------------

def test_nbgrader_layout_copies_notebooks_and_writes_a_config_nbgrader_reads(tmp_path, capsys):
    from traitlets.config.loader import PyFileConfigLoader

    (tmp_path / "src").mkdir()
    nbformat.write(exercise_notebook(), tmp_path / "src" / "01_ex.ipynb")
    nbformat.write(exercise_notebook(), tmp_path / "src" / "02_ex.ipynb")
    course = tmp_path / "course"
    written = nbgrader_course.layout(course=course, source=tmp_path / "src", names=["02_ex"])
    assert written == [course / "source" / "02_ex" / "02_ex.ipynb"]
    assert written[0].read_bytes() == (tmp_path / "src" / "02_ex.ipynb").read_bytes()
    config = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    assert config.Execute.timeout == nbgrader_course.CELL_TIMEOUT >= 300
    assert config.ClearSolutions.code_stub == {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
    (course / "nbgrader_config.py").write_text("c = get_config()\n")
    nbgrader_course.layout(course=course, source=tmp_path / "src")
    assert (course / "nbgrader_config.py").read_text() == "c = get_config()\n", "the instructor's config is kept"
    assert "make sure it sets c.Execute.timeout = 600" in capsys.readouterr().out
    with pytest.raises(ValueError, match="No notebook named '03_x'. Choose from: 01_ex, 02_ex."):
        nbgrader_course.layout(course=course, source=tmp_path / "src", names=["03_x"])


def test_nbgrader_layout_refuses_notebooks_with_exercise_problems(tmp_path):
    (tmp_path / "src").mkdir()
    nbformat.write(new_notebook(cells=[new_markdown_cell("# T"), check_cell("x", "t_ex1_check")]),
                   tmp_path / "src" / "01_bad.ipynb")
    with pytest.raises(ValueError, match="fix these exercise problems first:\n01_bad.ipynb: 0 answer cell"):
        nbgrader_course.layout(course=tmp_path / "course", source=tmp_path / "src")
    assert not (tmp_path / "course").exists()


def test_readme_shows_the_steps_the_grader_tests_run():
    lines = readme_lines()
    missing = [step.removeprefix("cd nbgrader_course && ") for step in NBGRADER_STEPS + OTTER_STEPS
               if step.removeprefix("cd nbgrader_course && ") not in lines]
    assert missing == [], "README.md's instructor guide must show these commands exactly"
    assert "cd nbgrader_course" in lines


# The real tools on a real notebook -----------------------------------------------------------------------

def run_steps(steps, cwd):
    """Run README steps in bash with this interpreter's bin folder first on PATH (like an activated venv)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for step in steps:
        done = subprocess.run(["bash", "-c", step], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{step!r} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def course_folder(tmp_path):
    """A folder like a checkout: ``notebooks/`` (a link to the real one), nothing else."""
    (tmp_path / "notebooks").symlink_to(ROOT / "notebooks", target_is_directory=True)
    return tmp_path


def solutions_filled_in(student, is_answer):
    """The student notebook with each answer cell replaced by the instructor's answer (markers included)."""
    answers = [c.source for c in assignments.read_notebook(ROOT / "notebooks" / f"{NOTEBOOK}.ipynb").cells
               if c.metadata.get("nbgrader", {}).get("solution")]
    solved = nbformat.from_dict(student)
    cells = [cell for cell in solved.cells if is_answer(cell)]
    assert len(cells) == len(answers) >= 2
    for cell, answer in zip(cells, answers):
        cell.source = answer
    return solved


def write_submissions(student, is_answer, path_of):
    """Two students' notebooks: 'unsolved' (the student notebook as it is) and 'solved'."""
    for name, nb in {"unsolved": student, "solved": solutions_filled_in(student, is_answer)}.items():
        path_of(name).parent.mkdir(parents=True)
        nbformat.write(nb, path_of(name))


def points_of(notebook):
    """Each exercise's points (question name -> nbgrader points of its check cell)."""
    nb = assignments.read_notebook(ROOT / "notebooks" / f"{notebook}.ipynb")
    return {c.metadata["nbgrader"]["grade_id"].removesuffix("_check"): float(c.metadata["nbgrader"]["points"])
            for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")}


def nbgrader_answer(cell):
    return cell.metadata.get("nbgrader", {}).get("solution", False)


def otter_answer(cell):
    return "otter_answer_cell" in cell.metadata.get("tags", [])


@pytest.mark.slow
@pytest.mark.student_notebooks
def test_nbgrader_autograde_scores_zero_and_full_points(tmp_path, hymenoptera_folder):
    pytest.importorskip("nbgrader")
    from nbgrader.api import Gradebook

    folder = course_folder(tmp_path)
    run_steps(NBGRADER_STEPS[:2], folder)
    course = folder / "nbgrader_course"
    student = nbformat.read(course / "release" / NOTEBOOK / f"{NOTEBOOK}.ipynb", as_version=4)
    write_submissions(student, nbgrader_answer, lambda name: course / "submitted" / name / NOTEBOOK / f"{NOTEBOOK}.ipynb")
    run_steps(NBGRADER_STEPS[2:], folder)
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        submissions = {name: gradebook.find_submission(NOTEBOOK, name) for name in ("unsolved", "solved")}
        scores = {name: (sub.score, sub.max_score) for name, sub in submissions.items()}
    total = float(sum(points_of(NOTEBOOK).values()))
    assert scores == {"unsolved": (0.0, total), "solved": (total, total)}
    grades = (course / "grades.csv").read_text().splitlines()
    assert sorted(line.split(",")[3] + ":" + line.split(",")[-2] for line in grades[1:]) == [
        f"solved:{total}", "unsolved:0.0"]


def secret_lines(nb):
    """Lines inside solution and hidden-test regions (stripped, non-empty)."""
    secret, inside = set(), False
    for cell in nb.cells:
        for line in cell.source.split("\n"):
            marker = markers.parse_marker(line, where="cell", number=0) if cell.cell_type == "code" else None
            if marker:
                inside = marker[1] == "BEGIN"
            elif inside and line.strip():
                secret.add(line.strip())
    return secret


def assert_otter_outputs_match(folder, source, checks):
    """Otter's student notebook: our stubs, no secret line, public tests only; its zip: one test per check."""
    from otter.test_files import ExceptionTestFile

    ours = assignments.student_notebook(source, name=NOTEBOOK)[0]
    student = nbformat.read(folder / "dist" / NOTEBOOK / "student" / f"{NOTEBOOK}.ipynb", as_version=4)
    assert [c.source for c in student.cells if otter_answer(c)] == [
        c.source for c in ours.cells if nbgrader_answer(c)], "otter's stubs should be the ones of student/"
    secret = secret_lines(source) - {line.strip() for cell in ours.cells for line in cell.source.split("\n")}
    leaked = secret & {line.strip() for cell in student.cells for line in cell.source.split("\n")}
    assert secret and leaked == set(), "solution or hidden-test lines in otter's student notebook"
    public = student.metadata["otter"]["tests"]
    assert sorted(public) == sorted(checks)
    assert all(not tc.hidden for text in public.values() for tc in ExceptionTestFile.from_string(text).test_cases)
    zip_path, = (folder / "dist" / NOTEBOOK / "autograder").glob("*.zip")
    with zipfile.ZipFile(zip_path) as archive:
        tests = {Path(n).stem: ExceptionTestFile.from_string(archive.read(n).decode())
                 for n in archive.namelist() if n.startswith("tests/")}
    assert sorted(tests) == sorted(checks), "every check cell is an otter test"
    for name, check in checks.items():
        hidden = "# BEGIN HIDDEN TESTS" in check.source
        assert [tc.hidden for tc in tests[name].test_cases] == ([False, True] if hidden else [False])
    return student


@pytest.mark.slow
@pytest.mark.student_notebooks
def test_otter_assign_and_run_score_zero_and_full_points(tmp_path, hymenoptera_folder):
    pytest.importorskip("otter")
    folder = course_folder(tmp_path)
    run_steps(OTTER_STEPS[:2], folder)
    source = assignments.read_notebook(ROOT / "notebooks" / f"{NOTEBOOK}.ipynb")
    checks = {c.metadata["nbgrader"]["grade_id"].removesuffix("_check"): c for c in source.cells
              if c.metadata.get("nbgrader", {}).get("grade")}
    student = assert_otter_outputs_match(folder, source, checks)
    write_submissions(student, otter_answer, lambda name: folder / "submissions" / name / f"{NOTEBOOK}.ipynb")
    run_steps(OTTER_STEPS[2:], folder)
    scores = {}
    for name in ("unsolved", "solved"):
        results = json.loads((folder / "submissions" / name / "results.json").read_text())
        scores[name] = {t["name"]: (t["score"], t["max_score"]) for t in results["tests"] if t["name"] in checks}
    points = points_of(NOTEBOOK)
    assert scores == {"unsolved": {name: (0.0, points[name]) for name in checks},
                      "solved": {name: (points[name], points[name]) for name in checks}}

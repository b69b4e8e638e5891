"""An nbgrader course folder laid out from the course notebooks (nbgrader 0.9).

``python -m course_admin nbgrader --course nbgrader_course`` writes
``nbgrader_course/nbgrader_config.py`` and copies every notebook, unchanged, to
``nbgrader_course/source/<notebook name>/<notebook>.ipynb``: one nbgrader assignment per notebook. The
notebooks already carry nbgrader's cell metadata and markers, so nothing else is generated.

The config states the course's markers and stub (nbgrader's defaults, written out so that a changed
default cannot silently publish a solution) and raises the cell timeout: nbgrader's default of 30 s is
shorter than some cells of the course on 2 CPU cores (model loading, training), and a timed-out cell
scores the whole notebook as failing.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from course_admin import assignments
from course_admin.markers import CODE_STUB

CELL_TIMEOUT = 600  # seconds; the same per-cell limit as `make test` (nbmake --nbmake-timeout=600)
_STUB = "\n".join(CODE_STUB)
CONFIG = f'''\
# nbgrader configuration for the course notebooks, written by `python -m course_admin nbgrader`.
c = get_config()  # noqa: F821 (nbgrader defines get_config)

# The markers of the course's exercises and the stub that replaces each solution (see CONTRIBUTING.md).
c.ClearSolutions.begin_solution_delimeter = "BEGIN SOLUTION"
c.ClearSolutions.end_solution_delimeter = "END SOLUTION"
c.ClearSolutions.code_stub = {{"python": {_STUB!r}}}
c.ClearSolutions.text_stub = {assignments.TEXT_STUB!r}  # replaces a written answer (a markdown solution cell)
c.ClearHiddenTests.begin_test_delimeter = "BEGIN HIDDEN TESTS"
c.ClearHiddenTests.end_test_delimeter = "END HIDDEN TESTS"

# Seconds each cell may run during `nbgrader autograde`. nbgrader's default (30) fails correct submissions:
# loading a model or training takes longer on a 2-core CPU, and the timed-out cell scores as an error.
c.Execute.timeout = {CELL_TIMEOUT}
'''


def _select(paths: list[Path], names: list[str] | None) -> list[Path]:
    """The notebooks named in ``names`` (file names or stems), all of them when ``names`` is empty."""
    if not names:
        return paths
    by_name = {**{p.stem: p for p in paths}, **{p.name: p for p in paths}}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ValueError(f"No notebook named {', '.join(map(repr, unknown))}. "
                         f"Choose from: {', '.join(p.stem for p in paths)}.")
    return [by_name[name] for name in names]


def layout(*, course: str | Path, source: str | Path = "notebooks", names: list[str] | None = None) -> list[Path]:
    """Write ``course/nbgrader_config.py`` (if absent) and ``course/source/<stem>/<notebook>`` per notebook.

    Notebooks are checked first (``assignments.validate``); one with problems writes nothing. An existing
    ``nbgrader_config.py`` is kept (it is the instructor's); a warning says so when it differs from ours.

    Returns:
        The source notebooks written.

    Raises:
        ValueError: No notebooks in ``source``, an unknown name, or exercise problems.

    Used in: instructors' nbgrader workflow (README, "Guide for instructors")
    """
    course, source = Path(course), Path(source)
    paths = _select(assignments.find_notebooks(source), names)
    problems = [problem for path in paths for problem in assignments.validate(path)]
    if problems:
        raise ValueError("fix these exercise problems first:\n" + "\n".join(problems))
    course.mkdir(parents=True, exist_ok=True)
    config = course / "nbgrader_config.py"
    if not config.exists():
        config.write_text(CONFIG, encoding="utf-8")
    elif config.read_text(encoding="utf-8") != CONFIG:
        print(f"kept your {config}; make sure it sets c.Execute.timeout = {CELL_TIMEOUT} "
              f"(compare with `python -c 'from course_admin.nbgrader_course import CONFIG; print(CONFIG)'`)")
    written = []
    for path in paths:
        target = course / "source" / path.stem / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        written.append(target)
        print(f"{target}: next, in {course}: nbgrader generate_assignment {path.stem}")
    return written

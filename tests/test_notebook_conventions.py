"""Every notebook follows the course conventions: title, objectives and Colab badge first, then the
setup cell, no committed outputs, and graded exercises in nbgrader's format."""
import functools
import re
from pathlib import Path

import nbformat
import pytest

from course_admin import colab

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_numbered_name(path):
    assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name), f"{path.name}: use NN_lower_case.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_cell_has_title_objectives_and_badge(path):
    first = nbformat.read(path, as_version=4).cells[0]
    assert first.cell_type == "markdown"
    assert first.source.startswith("# "), "first cell starts with the title"
    assert "learning objectives" in first.source.lower()
    assert colab.colab_badge(path.name) in first.source, "badge must link to this notebook on Colab"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_second_cell_is_the_setup_cell(path):
    second = nbformat.read(path, as_version=4).cells[1]
    assert second.cell_type == "code"
    assert second.source == colab.setup_cell_source()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_outputs_committed(path):
    for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"cell {i} has outputs: strip them"


def _public_definitions():
    """``(module, name, docstring)`` of every public function and class of course_utils."""
    import ast

    for path in sorted((Path(__file__).parent.parent / "course_utils").rglob("*.py")):
        module = path.parent.name if path.name == "__init__.py" else path.stem
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                yield module, node.name, ast.get_docstring(node) or ""


def _direct_callers(module: str, name: str) -> set[str]:
    """Notebooks whose code cells name ``module.name`` or import ``name`` from ``module``."""
    call = re.compile(rf"\b{module}\.{name}\b|from course_utils\.(\w+\.)?{module} import[^\n]*\b{name}\b")
    return {notebook for notebook, source in _notebook_code().items() if call.search(source)}


@functools.cache
def _notebook_code() -> dict[str, str]:
    return {path.name: "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
            for path in NOTEBOOKS}


def test_used_in_lists_every_notebook_that_calls_the_helper():
    wrong = []
    for module, name, doc in _public_definitions():
        claimed = doc.partition("Used in:")[2]
        missing = [n for n in sorted(_direct_callers(module, name)) if n not in claimed and "every notebook" not in claimed]
        if missing:
            wrong.append(f"{module}.{name}: add {', '.join(missing)} to its 'Used in:' line")
    assert not wrong, "\n".join(wrong)


def _claims(used_in: str) -> tuple[set[str], set[str]]:
    """The notebooks a 'Used in:' text names, and those of them it says use the helper indirectly.

    An indirect use is written as a parenthesis starting "(through ..." or "(returned by ..." right after the
    notebook(s) it qualifies: it covers every notebook named since the previous parenthesis or semicolon,
    so "04_a.ipynb; 06_b.ipynb, 08_c.ipynb (through train.fit)" says 06 and 08 reach it through train.fit
    and 04 calls it itself. Any other parenthesis, such as "(its DDP script)", qualifies nothing.
    """
    named, indirect, pending = set(), set(), []
    for token in re.findall(r"\d\d_\w+\.ipynb|\([^()]*\)|;", " ".join(used_in.split())):
        if token.endswith(".ipynb"):
            named.add(token)
            pending.append(token)
            continue
        if re.match(r"\((through|returned by)\b", token):
            indirect.update(pending)
        pending = []
    return named, indirect


def test_claims_parse_the_indirect_use_convention():
    named, indirect = _claims("01_a.ipynb, 02_b.ipynb (its script); 03_c.ipynb,\n 04_d.ipynb (through x.y), 05_e.ipynb"
                              " (returned by z), 06_f.ipynb")
    assert named == {"01_a.ipynb", "02_b.ipynb", "03_c.ipynb", "04_d.ipynb", "05_e.ipynb", "06_f.ipynb"}
    assert indirect == {"03_c.ipynb", "04_d.ipynb", "05_e.ipynb"}


def test_every_notebook_in_used_in_calls_the_helper_or_says_how_it_is_reached():
    wrong = []
    for module, name, doc in _public_definitions():
        named, indirect = _claims(doc.partition("Used in:")[2])
        stale = sorted(named - indirect - _direct_callers(module, name))
        if stale:
            wrong.append(f"{module}.{name}: {', '.join(stale)} never names it in a code cell; remove the notebook from "
                         "its 'Used in:' line, or say how it gets there, e.g. '(through train.fit)' or "
                         "'(returned by checkpoints.load)' right after the notebook")
    assert not wrong, "\n".join(wrong)


def _installed_closure(requirements: list[str]) -> set[str]:
    """Normalised names of the distributions these requirements install, with their dependencies."""
    from importlib import metadata

    from packaging.requirements import Requirement

    def norm(name):
        return re.sub(r"[-_.]+", "-", name).lower()

    import tomllib

    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]

    def requires(name, extra):
        if norm(name) == norm(project["name"]):  # this checkout's pyproject, not an older installed copy
            return project["dependencies"] if not extra else project["optional-dependencies"][extra]
        texts = [Requirement(t) for t in metadata.requires(name) or []]
        return [str(r) for r in texts if r.marker is None or r.marker.evaluate({"extra": extra})]

    seen, todo = set(), [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        for extra in ["", *req.extras]:
            key = (norm(req.name), extra)
            if key not in seen:
                seen.add(key)
                todo += [Requirement(text) for text in requires(req.name, extra)]
    return {name for name, _ in seen}


def test_a_make_lab_install_has_every_package_a_notebook_imports():
    """What `make lab` installs (the base dependencies and the `lab` extra) covers every notebook's imports,
    so a student who installed once can run every notebook offline."""
    import sys
    from importlib import metadata

    available = _installed_closure(["course-utils[lab]"])
    modules = metadata.packages_distributions()
    missing = set()
    for path in NOTEBOOKS:
        code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        for top in re.findall(r"^\s*(?:from|import)\s+([A-Za-z_]\w*)", code, flags=re.M):
            if top in sys.stdlib_module_names or top == "course_utils":
                continue
            dists = {re.sub(r"[-_.]+", "-", d).lower() for d in modules.get(top, [top])}
            if not dists & available:
                missing.add(f"{path.name}: {top}")
    assert not missing, f"not installed by `make lab` (pyproject's lab extra): {sorted(missing)}"


def test_make_lab_installs_the_extras_of_notebooks_09_and_10():
    """Notebook 10 runs ONNX Runtime through course_utils.deploy and 09 imports Optuna: students get both."""
    import tomllib

    from packaging.requirements import Requirement

    extras = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    available = _installed_closure(["course-utils[lab]"])
    for extra in ("deploy", "tuning"):
        names = {re.sub(r"[-_.]+", "-", Requirement(r).name).lower() for r in extras[extra]}
        assert names <= available, f"the lab extra lacks {sorted(names - available)} of the {extra!r} extra"

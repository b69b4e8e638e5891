"""Every notebook follows the course conventions: title, objectives and Colab badge first, then the
setup cell, no committed outputs, and graded exercises in nbgrader's format."""
import re
from pathlib import Path

import nbformat
import pytest

from course_utils import colab

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

"""course_admin.colab: links and the setup cell, all built from pyproject's one Repository URL."""
import re
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest

from course_admin import colab

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
REPOSITORY = tomllib.loads(PYPROJECT.read_text())["project"]["urls"]["Repository"]


def test_repository_url_comes_from_pyproject():
    assert colab.repository_url() == REPOSITORY
    assert re.fullmatch(r"https://github\.com/[^/]+/[^/]+", REPOSITORY)


def test_colab_url_and_badge():
    owner_repo = REPOSITORY.removeprefix("https://github.com/")
    url = colab.colab_url("01_data_loading.ipynb")
    expected = f"https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/01_data_loading.ipynb"
    assert url == expected
    assert colab.colab_badge("01_data_loading.ipynb") == f"[![Open In Colab]({colab.BADGE_IMAGE})]({url})"


def test_colab_url_rejects_a_non_github_repository(monkeypatch):
    monkeypatch.setattr(colab, "repository_url", lambda: "https://gitlab.com/someone/course")
    with pytest.raises(ValueError, match="gitlab.com/someone/course"):
        colab.colab_url("01_data_loading.ipynb")


@pytest.fixture
def recorded_runs(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: calls.append((args, kwargs)))
    return calls


def test_setup_cell_installs_on_colab(monkeypatch, recorded_runs):
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    exec(colab.setup_cell_source(), {})
    command = [sys.executable, "-m", "pip", "install", "-q", f"course-utils @ git+{REPOSITORY}"]
    assert recorded_runs == [((command,), {"check": True})]


def test_setup_cell_does_nothing_elsewhere(monkeypatch, recorded_runs):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(colab.setup_cell_source(), {})
    assert recorded_runs == []


def test_setup_cell_does_not_need_course_utils():
    source = colab.setup_cell_source()
    assert not re.search(r"^\s*(import|from)\s+course_utils", source, re.MULTILINE)
    compile(source, "<setup cell>", "exec")


def test_readme_course_map_links_every_notebook_to_colab():
    root = PYPROJECT.parent
    readme = (root / "README.md").read_text()
    linked = re.findall(r"^\| \[([\w.]+\.ipynb)\]\(([^)]+)\)", readme, re.MULTILINE)
    assert [name for name, _ in linked] == sorted(p.name for p in (root / "notebooks").glob("*.ipynb"))
    for name, url in linked:
        assert url == colab.colab_url(name), name

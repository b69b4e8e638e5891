"""The repository URL (kept once, in pyproject's ``[project.urls]``), Colab links and the setup cell.

Every notebook's first cell holds a Colab badge and its second cell the setup cell; both are built
here from the one URL, and ``tests/test_notebook_conventions.py`` checks every notebook against them.
"""
from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "course-utils"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"


def repository_url() -> str:
    """The course repository's URL from ``pyproject.toml`` (checkout) or the installed metadata.

    Used in: every notebook's setup cell (through the tests that write and check it)
    """
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if pyproject.is_file():
        match = re.search(r'^Repository\s*=\s*"([^"]+)"', pyproject.read_text(), re.MULTILINE)
        if match:
            return match.group(1)
    for entry in metadata.metadata(DISTRIBUTION).get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        if label.strip().lower() == "repository":
            return url.strip()
    raise RuntimeError(f"No Repository URL in the metadata of {DISTRIBUTION}; reinstall the package.")


def colab_url(notebook: str) -> str:
    """Colab link that opens ``notebooks/<notebook>`` from the repository's main branch."""
    match = re.fullmatch(r"https://github\.com/([^/]+)/([^/]+?)(?:\.git)?/?", repository_url())
    if match is None:
        raise ValueError(f"Repository URL {repository_url()!r} is not a github.com/<owner>/<repo> URL.")
    owner, repo = match.groups()
    return f"https://colab.research.google.com/github/{owner}/{repo}/blob/main/notebooks/{notebook}"


def colab_badge(notebook: str) -> str:
    """Markdown for the 'Open in Colab' badge of one notebook."""
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(notebook)})"


def setup_cell_source() -> str:
    """Source of every notebook's second cell: on Colab only, pip-install course_utils from the repo.

    It imports nothing from course_utils (not installed yet on Colab) and does nothing elsewhere.
    """
    return (
        "# Setup: on Google Colab, install course_utils from the course repository. Elsewhere: nothing to do.\n"
        "import subprocess\n"
        "import sys\n"
        "\n"
        f'REPOSITORY = "{repository_url()}"\n'
        'if "google.colab" in sys.modules:\n'
        '    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"course-utils @ git+{REPOSITORY}"],\n'
        "                   check=True)"
    )

"""benchmarks/readme_section.py: a benchmark's table replaces exactly the text between its README markers."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def readme_section():
    # benchmarks/ is a folder of scripts, not a package: load the module from its path
    spec = importlib.util.spec_from_file_location("readme_section", ROOT / "benchmarks" / "readme_section.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_replaces_only_the_marked_text(readme_section, tmp_path):
    readme = tmp_path / "README.md"
    before = "# Title\n\nprose | with a pipe\n\n"
    other = "<!-- benchmark:other -->\n| a |\n| --- |\n| 1 |\n<!-- /benchmark:other -->\n"
    readme.write_text(before + "<!-- benchmark:speed -->\nold table\nold line\n<!-- /benchmark:speed -->\n\nafter\n"
                      + other, encoding="utf-8")
    readme_section.write_section("speed", "\n| x | y |\n| --- | --- |\n| 2 | 3 |\n\n", readme=readme)
    expected = (before + "<!-- benchmark:speed -->\n| x | y |\n| --- | --- |\n| 2 | 3 |\n<!-- /benchmark:speed -->"
                "\n\nafter\n" + other)
    assert readme.read_text(encoding="utf-8") == expected
    readme_section.write_section("speed", "| x | y |\n| --- | --- |\n| 2 | 3 |", readme=readme)
    assert readme.read_text(encoding="utf-8") == expected  # rewriting the same table changes nothing


def test_indented_markers_keep_the_section_in_its_list_item(readme_section, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("- item:\n\n  <!-- benchmark:t -->\n  old\n  <!-- /benchmark:t -->\n\n  more of the item\n",
                      encoding="utf-8")
    readme_section.write_section("t", "line one\n\n| a |\n| --- |", readme=readme)
    assert readme.read_text(encoding="utf-8") == (
        "- item:\n\n  <!-- benchmark:t -->\n  line one\n\n  | a |\n  | --- |\n  <!-- /benchmark:t -->\n\n"
        "  more of the item\n")


@pytest.mark.parametrize("text", [
    "no markers at all\n",
    "<!-- benchmark:speed -->\nonly the opening one\n",
    "<!-- /benchmark:speed -->\nclosing first\n<!-- benchmark:speed -->\n",
    "<!-- benchmark:speed -->\n<!-- /benchmark:speed -->\n<!-- benchmark:speed -->\n<!-- /benchmark:speed -->\n",
])
def test_missing_or_broken_markers_are_an_error_that_names_them(readme_section, tmp_path, text):
    readme = tmp_path / "README.md"
    readme.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=r"<!-- benchmark:speed -->.*<!-- /benchmark:speed -->"):
        readme_section.write_section("speed", "| new |", readme=readme)
    assert readme.read_text(encoding="utf-8") == text  # nothing written


def test_the_real_readme_has_one_pair_for_every_benchmark_that_writes(readme_section):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        for name in _written_sections(script.read_text(encoding="utf-8")):
            assert text.count(f"<!-- benchmark:{name} -->") == 1, f"{script.name} writes '{name}'"
            assert text.count(f"<!-- /benchmark:{name} -->") == 1, f"{script.name} writes '{name}'"


def _written_sections(source: str) -> list[str]:
    return re.findall(r"write_section\(\s*\"([\w-]+)\"", source)

"""The package's shape: no import circles, modules readable in one sitting, no reaching into private names."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("course_utils", "course_admin")
MAX_MODULE_LINES = 320    # "about 300": one sitting
MAX_FUNCTION_LINES = 45   # "under about 40" lines of code, docstring not counted


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> list[tuple[str, str]]:
    """``(module, name)`` of every ``from course_utils... import name`` in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names if alias.name.split(".")[0] in PACKAGES]
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        targets = {f"{m}.{n}" if f"{m}.{n}" in MODULES else m for m, n in _imports(path)}
        graph[module] = {t for t in targets if t in MODULES and t != module and t not in PACKAGES}
    return graph


def _cycle_from(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in graph[node]:
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def test_the_layout_finds_every_module():
    assert "course_utils.stats" in MODULES and len(MODULES) > 20


def test_no_import_circles():
    graph = _graph()
    circles = {" -> ".join(c) for m in graph if (c := _cycle_from(m, graph))}
    assert not circles, "import circles (move the shared piece into a module both can import):\n" + "\n".join(
        sorted(circles))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_readable_in_one_sitting(module):
    lines = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{module} has {lines} lines; split it by concept (CONTRIBUTING.md)"


def test_no_module_imports_another_modules_private_names():
    wrong = [f"{module} imports {source}.{name}" for module, path in MODULES.items()
             for source, name in _imports(path) if name.startswith("_") and source != module]
    assert not wrong, "\n".join(wrong)


def _code_lines(node: ast.FunctionDef) -> int:
    body = node.body[1:] if ast.get_docstring(node) else node.body
    return (body[-1].end_lineno - body[0].lineno + 1) if body else 0


def test_functions_are_short():
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _code_lines(node) > MAX_FUNCTION_LINES:
                long.append(f"{module}.{node.name}: {_code_lines(node)} lines of code")
    assert not long, "split these into named steps:\n" + "\n".join(long)

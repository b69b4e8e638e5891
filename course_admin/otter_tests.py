"""A check cell as an otter-grader test function: ``def test_<name>(<notebook variables>): <check code>``.

otter-grader's exception-based tests (``tests: ok_format: false`` in the master notebook) are functions
that pass by not raising. A check cell reads notebook variables (the student's answer, the model, the
``checks`` module); they become the test function's parameters, which otter fills from the notebook's
globals by name. The names are found with :mod:`symtable` and :mod:`ast`: every name the cell reads that
no earlier line of the cell binds and that is not a builtin.
"""
from __future__ import annotations

import ast
import builtins
import re
import symtable


def names_bound(source: str) -> set[str]:
    """Names a cell assigns or imports at its top level.

    Used in: every notebook's exercises (otter export)
    """
    table = symtable.symtable(source, "cell", "exec")
    return {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported()}


def notebook_names(source: str, *, where: str) -> list[str]:
    """Names the code reads from the notebook's globals: what a test function must receive.

    Raises:
        ValueError: The code declares ``global``, which a test function cannot keep.

    Used in: every notebook's exercises (otter export)
    """
    table = symtable.symtable(source, where, "exec")
    own = names_bound(source)
    names, tables = set(), [table]
    while tables:
        current = tables.pop()
        tables.extend(current.get_children())
        for symbol in current.get_symbols():
            if symbol.is_declared_global():
                raise ValueError(f"{where}: `global {symbol.get_name()}` cannot become an otter test function. "
                                 "Assign the variable in an ordinary cell instead.")
            if symbol.is_referenced() and (current is table or symbol.is_global()):
                names.add(symbol.get_name())
    stored, loaded = _first_lines(ast.parse(source))
    local = {name for name in own if stored.get(name, 0) < loaded.get(name, 0)}  # set on an earlier line
    return sorted(name for name in names - local if name in own or not hasattr(builtins, name))


def _first_lines(tree: ast.AST) -> tuple[dict[str, int], dict[str, int]]:
    """First line on which the cell itself binds each name, and first line on which any code reads it."""
    stored: dict[str, int] = {}
    loaded: dict[str, int] = {}
    scopes = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.ListComp, ast.SetComp,
              ast.DictComp, ast.GeneratorExp)
    todo: list[tuple[ast.AST, bool]] = [(tree, False)]
    while todo:
        node, nested = todo.pop()
        line, names, table = getattr(node, "lineno", 0), [], stored
        if isinstance(node, ast.Name):
            names, table = [node.id], loaded if isinstance(node.ctx, ast.Load) else stored
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            names, table = [node.target.id], loaded  # `x += 1` reads x
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.asname or alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names = [node.name]
        if table is loaded or not nested:
            for name in names:
                table[name] = min(table.get(name, line), line)
        inner = nested or isinstance(node, scopes)
        todo.extend((child, inner) for child in ast.iter_child_nodes(node))
    return stored, loaded


def otter_test_source(source: str, *, name: str, where: str) -> str:
    """``def test_<name>(<notebook variables>): <check code>``, the exception-based otter test of a check.

    Raises:
        ValueError: The check is not plain Python that can run inside a function (IPython magics,
            ``global``, ``from x import *``, top-level ``await``).

    Used in: every notebook's exercises (otter export)
    """
    try:
        compile(source, where, "exec")
        parameters, identifier = notebook_names(source, where=where), re.sub(r"\W", "_", name)
        function = ast.parse(f"def test_{identifier}({', '.join(parameters)}):\n    pass").body[0]
        function.body = ast.parse(source).body or [ast.Pass()]
        text = ast.unparse(function)
        compile(text, where, "exec")
    except SyntaxError as error:
        raise ValueError(f"{where}: the check cannot become an otter test function ({error.msg}, line "
                         f"{error.lineno}). Keep check cells plain Python: no magics, no star imports.") from None
    return text

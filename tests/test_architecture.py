"""The code's shape, checked like behaviour: small functions, one direction of imports."""

from __future__ import annotations

import ast
from pathlib import Path

PRODUCT = Path(__file__).resolve().parents[1] / "backend" / "jobs"
MAX_BODY_LINES = 60


def function_bodies() -> list[tuple[str, int]]:
    """(file:function, lines of its body after the docstring) for every function of the product."""
    found = []
    for path in sorted(PRODUCT.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            body = node.body
            if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:] or body  # the docstring is not code
            lines = (body[-1].end_lineno or body[-1].lineno) - body[0].lineno + 1
            found.append((f"{path.relative_to(PRODUCT)}:{node.name}", lines))
    return found


def test_function_bodies_fit_on_a_screen():
    """A function longer than a screen hides more than one idea: split it."""
    long = [
        f"{where} ({lines} lines)" for where, lines in function_bodies() if lines > MAX_BODY_LINES
    ]
    assert not long, f"function bodies over {MAX_BODY_LINES} lines: {', '.join(long)}"


def test_function_bodies_are_measured():
    """The check above sees the product's functions (an empty table would pass vacuously)."""
    assert len(function_bodies()) > 200

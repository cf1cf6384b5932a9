"""tests/waiting.py: the one polling helper, and no second one growing elsewhere in tests/."""

from __future__ import annotations

import ast
import itertools
import time
from pathlib import Path

from tests.waiting import wait_until

TESTS = Path(__file__).resolve().parents[1]


def test_it_returns_as_soon_as_the_condition_holds() -> None:
    calls = itertools.count(1)
    started = time.monotonic()

    assert wait_until(lambda: next(calls) >= 3, timeout=30, interval=0.01)
    assert time.monotonic() - started < 5


def test_it_says_false_when_the_deadline_passes() -> None:
    started = time.monotonic()

    assert wait_until(lambda: False, timeout=0.2, interval=0.05) is False
    assert time.monotonic() - started >= 0.2


def test_no_other_test_module_defines_its_own_wait_until() -> None:
    defined = [
        f"{path.relative_to(TESTS)}:{node.lineno}"
        for path in sorted(TESTS.rglob("*.py"))
        if path.name != "waiting.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "wait_until"
    ]
    assert defined == [], "import wait_until from tests/waiting.py instead"

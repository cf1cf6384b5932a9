"""Every integration and end-to-end test module carries its folder's mark, so `-m` selects it.

`pytest -m "not integration and not e2e"` must leave only what needs no broker, database or
subprocess; a module without the mark would slip through. Read from the syntax tree: a module-level
`pytestmark` that is, or lists, `pytest.mark.<folder's mark>`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
#: Folder -> the mark its modules carry (registered in pyproject.toml).
FOLDER_MARKS = {"integration": "integration", "e2e": "e2e"}


def module_marks(source: str) -> set[str]:
    """Names of `pytest.mark.X` in the module-level `pytestmark` assignment."""
    marks: set[str] = set()
    for node in ast.parse(source).body:
        if not (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets)
        ):
            continue
        values = node.value.elts if isinstance(node.value, ast.List | ast.Tuple) else [node.value]
        for value in values:
            if (
                isinstance(value, ast.Attribute)
                and isinstance(value.value, ast.Attribute)
                and value.value.attr == "mark"
            ):
                marks.add(value.attr)
    return marks


def modules(folder: str) -> list[Path]:
    return sorted((TESTS / folder).rglob("test_*.py"))


@pytest.mark.parametrize("folder", sorted(FOLDER_MARKS))
def test_every_module_in_the_folder_carries_its_mark(folder: str) -> None:
    assert modules(folder), f"no test modules under tests/{folder}"
    unmarked = [
        str(path.relative_to(TESTS))
        for path in modules(folder)
        if FOLDER_MARKS[folder] not in module_marks(path.read_text(encoding="utf-8"))
    ]
    assert unmarked == [], f"add `pytestmark = pytest.mark.{FOLDER_MARKS[folder]}` to them"


def test_marks_are_read_from_a_single_mark_or_a_list() -> None:
    assert module_marks("import pytest\npytestmark = pytest.mark.e2e\n") == {"e2e"}
    assert module_marks(
        "pytestmark = [pytest.mark.integration, pytest.mark.usefixtures('x'), pytest.mark.slow]"
    ) == {"integration", "slow"}
    assert module_marks("class T:\n    pytestmark = pytest.mark.e2e\n") == set()

"""The decision core stays pure: no I/O modules, no third-party I/O, no reading the clock."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "referral_bridge" / "core"
CORE_FILES = sorted(CORE.glob("*.py"))

#: Standard-library modules that do I/O, touch the process or its clock, or run concurrently.
IMPURE_STDLIB = frozenset(
    {
        "socket", "subprocess", "os", "pathlib", "io", "time", "sqlite3", "logging",
        "threading", "asyncio", "urllib", "http", "shutil",
    }
)  # fmt: skip
#: Small pure libraries the core may use besides the standard library.
ALLOWED_THIRD_PARTY = frozenset({"pydantic", "pydantic_core", "holidays", "zoneinfo"})
CLOCK_READS = frozenset({"now", "utcnow", "today"})
#: Modules outside the core it may import: the wire names, string constants that import nothing
#: (checked below), so that a header's name is written once for the core and the adapters alike.
ALLOWED_OUTSIDE = frozenset({"referral_bridge.wire"})
WIRE = CORE.parent / "wire.py"


def imported_modules(tree: ast.AST) -> list[str]:
    modules: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            # A relative import stays inside referral_bridge.core.
            modules.append(
                "referral_bridge.core" if node.level else node.module or "referral_bridge.core"
            )
    return modules


def allowed(module: str) -> bool:
    top = module.partition(".")[0]
    if top == "referral_bridge":
        return (
            module == "referral_bridge.core"
            or module.startswith("referral_bridge.core.")
            or module in ALLOWED_OUTSIDE
        )
    if top in IMPURE_STDLIB:
        return False
    return top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY


def clock_reads(tree: ast.AST) -> list[int]:
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in CLOCK_READS
    ]


def test_the_core_package_has_modules_to_check() -> None:
    assert {"calendar.py", "policy.py", "decide.py"} <= {path.name for path in CORE_FILES}


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda path: path.name)
def test_imports_only_the_standard_library_and_pure_libraries(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    assert [module for module in imported_modules(tree) if not allowed(module)] == []


def test_the_wire_names_the_core_may_import_import_nothing() -> None:
    tree = ast.parse(WIRE.read_text(encoding="utf-8"), filename=str(WIRE))
    assert imported_modules(tree) == []


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda path: path.name)
def test_never_reads_the_clock(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    assert clock_reads(tree) == [], "take `now` as an argument instead"


class TestTheCheckersThemselves:
    def test_an_io_import_is_caught(self) -> None:
        tree = ast.parse("import os\nfrom pathlib import Path\nimport kombu\n")
        assert [m for m in imported_modules(tree) if not allowed(m)] == ["os", "pathlib", "kombu"]

    def test_an_import_from_outside_the_core_is_caught(self) -> None:
        assert not allowed("referral_bridge.ledger")

    def test_a_clock_read_is_caught(self) -> None:
        tree = ast.parse(
            "from datetime import datetime, date\nx = datetime.now()\ny = date.today()\n"
        )
        assert clock_reads(tree) == [2, 3]

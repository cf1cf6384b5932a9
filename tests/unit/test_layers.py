"""The layout is the architecture: which package may import which, checked on the source.

The daemon's path (service, delivery, transport, ledger, sealing and the pure core) never
reaches for the tools people use around it (the CLI, operator tools, the provider's side, the
demo), only the CLI starts the development tools, and a long module says why at its top.
`test_core_is_pure.py` holds the core to stricter rules of its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "referral_bridge"

#: The packages a running worker is made of, below the runtime that drives them.
DAEMON = ("core", "service", "delivery", "transport", "ledger", "sealing")
#: What people run around the daemon.
TOOLS = ("cli", "operator", "provider", "intake", "devtools", "report", "runtime", "bootstrap")


def imported_packages(path: Path) -> set[str]:
    """The top-level parts of referral_bridge a module imports (at any depth in the file)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "referral_bridge" and len(parts) > 1:
                found.add(parts[1])
    return found


def modules_of(package: str) -> list[Path]:
    folder = PACKAGE / package
    return sorted(folder.rglob("*.py")) if folder.is_dir() else [PACKAGE / f"{package}.py"]


@pytest.mark.parametrize("package", DAEMON)
def test_the_daemon_s_packages_never_import_the_tools_around_it(package: str) -> None:
    reaching = {
        f"{path.relative_to(PACKAGE)} -> {target}"
        for path in modules_of(package)
        for target in imported_packages(path) & set(TOOLS)
    }
    assert reaching == set()


def test_only_the_cli_starts_the_development_tools() -> None:
    importers = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.relative_to(PACKAGE).parts[0] not in ("cli", "devtools")
        and "devtools" in imported_packages(path)
    }
    assert importers == set()


def test_the_checks_see_imports() -> None:
    """Guard against a vacuous pass: the service is known to import the ledger and the core."""
    imported = set().union(*(imported_packages(p) for p in modules_of("service")))
    assert {"ledger", "core", "delivery"} <= imported


#: Past this a module outside the core says why it is one piece (issue 12: "about 400 lines").
LONGEST_WITHOUT_A_REASON = 420


def test_a_long_module_says_why_at_its_top() -> None:
    """The core is exempt: its modules are the rules, and the rules are long."""
    unexplained = {
        f"{path.relative_to(PACKAGE)} ({lines} lines)"
        for path in PACKAGE.rglob("*.py")
        if path.relative_to(PACKAGE).parts[0] != "core"
        and (lines := len(path.read_text(encoding="utf-8").splitlines())) > LONGEST_WITHOUT_A_REASON
        and "Long on purpose:" not in (ast.get_docstring(ast.parse(path.read_text())) or "")
    }
    assert unexplained == set()

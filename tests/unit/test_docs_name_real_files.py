"""The README and the design notes name files a newcomer will look for: each must exist.

A restructuring moves files; this keeps the notes from pointing at where things used to be.
The changelog is history and may name what has since moved, so it is not checked.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "referral_bridge"
NOTES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: A Python file named in backticks: `worker.py`, `ledger/chain.py`, `tests/waiting.py`.
NAMED_FILE = re.compile(r"`((?:[\w.-]+/)*[\w-]+\.py)(?:::[\w:]+)?`")
#: Every Python file name in the repository, for names given without a folder.
KNOWN_NAMES = {path.name for path in ROOT.rglob("*.py") if ".venv" not in path.parts}


def exists(name: str) -> bool:
    if "/" not in name:
        return name in KNOWN_NAMES
    return any((base / name).is_file() for base in (ROOT, PACKAGE))


@pytest.mark.parametrize("note", NOTES, ids=lambda path: path.name)
def test_every_file_a_note_names_exists(note: Path) -> None:
    named = set(NAMED_FILE.findall(note.read_text(encoding="utf-8")))
    assert {name for name in named if not exists(name)} == set()

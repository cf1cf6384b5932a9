"""Folders and files that hold personal data are the owner's alone, whatever the umask.

The ledger holds full victim snapshots, the embedded broker's message files hold whole events,
and a provider inbox holds sealed (or plain) referrals. Under a usual umask (022) they would be
created world-readable, so every command runs under umask 077 (cli.main), the folders are made
0700 and the SQLite files 0600 where they are created, and ones left looser by an older version
(or created by hand) are tightened at start-up. systemd's unit sets the same (UMask=0077,
StateDirectoryMode=0700); this covers the bridge run any other way.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

import structlog

__all__ = [
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "PRIVATE_UMASK",
    "private_dir",
    "private_sqlite",
    "private_tree",
    "private_umask",
    "tighten",
    "write_private",
]

log = structlog.get_logger(__name__)

PRIVATE_UMASK = 0o077
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
#: The files SQLite keeps beside a database; they hold the same data.
_SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Run the block under umask 077, so that whatever it creates is owner-only."""
    previous = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(previous)


def tighten(path: Path, mode: int) -> None:
    """Take group and other access away from `path` (to `mode`); a missing path is skipped.

    A path the bridge cannot chmod (another user's) is left as it is, with a warning that says
    what to run: refusing to start over it would help nobody.
    """
    try:
        current = stat.S_IMODE(path.lstat().st_mode)
    except FileNotFoundError:
        return
    if path.is_symlink() or not current & 0o077:
        return
    try:
        path.chmod(mode)
    except PermissionError:
        log.warning(
            "files.cannot_tighten",
            path=str(path),
            detail=f"readable by others (mode {current:04o}) and not ours to change; "
            f"run: chmod {mode:o} {path}",
        )


def private_dir(path: Path, *, tighten_existing: bool = True) -> Path:
    """Create `path` (and missing parents) 0700; tighten it if it exists with more."""
    with private_umask():
        path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    if tighten_existing:
        tighten(path, PRIVATE_DIR_MODE)
    return path


def private_tree(path: Path) -> Path:
    """`private_dir`, and every folder and file below it tightened too (start-up only)."""
    private_dir(path)
    for folder, folders, files in os.walk(path):
        base = Path(folder)
        for name in folders:
            tighten(base / name, PRIVATE_DIR_MODE)
        for name in files:
            tighten(base / name, PRIVATE_FILE_MODE)
    return path


def private_sqlite(database: Path) -> None:
    """Prepare a SQLite database's files: a missing folder made 0700, the database created 0600
    if missing (SQLite then creates its -wal and -shm files with the database's mode), and
    existing files tightened."""
    private_dir(database.parent, tighten_existing=False)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    tighten_all(Path(f"{database}{suffix}") for suffix in _SQLITE_SUFFIXES)


def tighten_all(paths: Iterable[Path]) -> None:
    for path in paths:
        tighten(path, PRIVATE_FILE_MODE)


def write_private(path: Path, data: bytes) -> None:
    """Create `path` (it must not exist) mode 0600 and write `data`: for exports of personal
    data, which must never be readable by others, even for a moment."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)

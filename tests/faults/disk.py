"""A small filesystem that can be filled up and given back, for a worker's SQLite ledger.

A tmpfs of a few megabytes mounted on a folder of the test's own (the fault runs are root, as
on the CI machines). A full tmpfs fails writes with ENOSPC, so SQLite answers SQLITE_FULL
("database or disk is full") exactly as on a real full disk. RLIMIT_FSIZE would give EFBIG
instead, which SQLite reports as a disk I/O error, and would cap the worker's log file too.

Why not a mount namespace of the test's own, which nothing could leave behind: the test must
read the ledger too, and SQLite resolves symbolic links in a database's path, so
/proc/<pid>/root/... names the folder as seen outside the namespace, not the tmpfs.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

_CHUNK = 1024 * 1024
_SMALLEST_CHUNK = 512


class SmallDisk:
    """A tmpfs of `size_bytes` on `mount_point`; `unmount` in a `finally`."""

    def __init__(self, mount_point: Path, *, size_bytes: int) -> None:
        self.mount_point = mount_point.resolve()
        self.size_bytes = size_bytes
        self.mounted = False

    def mount(self) -> SmallDisk:
        self.mount_point.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [
                "mount",
                "-t",
                "tmpfs",
                "-o",
                f"size={self.size_bytes},mode=0700",
                "tmpfs",
                str(self.mount_point),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                "cannot mount a tmpfs (the full-disk fault run needs root with CAP_SYS_ADMIN, "
                f"as on the CI machines): {done.stderr.strip()}"
            )
        self.mounted = True
        return self

    def unmount(self) -> None:
        """Unmount; lazily if a process still has files open there (it goes when they close)."""
        if not self.mounted:
            return
        for command in (
            ["umount", str(self.mount_point)],
            ["umount", "--lazy", str(self.mount_point)],
        ):
            if subprocess.run(command, capture_output=True, check=False).returncode == 0:
                self.mounted = False
                return
        raise RuntimeError(
            f"could not unmount {self.mount_point}: see `findmnt {self.mount_point}`"
        )

    @property
    def _ballast(self) -> Path:
        return self.mount_point / "ballast"

    def fill(self) -> int:
        """Take every free byte with a ballast file; return how many that was."""
        written = 0
        chunk = _CHUNK
        fd = os.open(self._ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while chunk >= _SMALLEST_CHUNK:
                try:
                    written += os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    chunk //= 2  # the last few pages, in smaller pieces
        finally:
            os.close(fd)
        return written

    def make_room(self) -> None:
        """Delete the ballast: the space is back at once."""
        self._ballast.unlink(missing_ok=True)

    def free_bytes(self) -> int:
        stats = os.statvfs(self.mount_point)
        return stats.f_bavail * stats.f_frsize

"""How operator commands print: aligned tables, times in UTC, a dash for nothing, progress.

Shared by `dlq` and `audit`, so that their tables read alike and escape control characters
alike: a cell must not be able to rewrite the operator's terminal.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import IO, TextIO

#: What a cell shows when there is no value.
EMPTY = "-"


def render_table(headings: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """Columns padded to their widest cell; the last column is not padded. Control characters
    in a cell are shown escaped: a cell must not be able to rewrite the operator's terminal."""
    from referral_bridge.display import escape_controls

    rows = [[escape_controls(cell) for cell in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headings)]
    for cells in (headings, *rows):
        padded = [c.ljust(w) for c, w in zip(cells[:-1], widths[:-1], strict=True)]
        print("  ".join([*padded, cells[-1]]).rstrip(), file=out)


def format_time(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else EMPTY


class ProgressBar:
    """`[#####-----] 12/40` on stderr, redrawn in place on a terminal, every 10% otherwise."""

    def __init__(self, label: str, *, stream: IO[str] | None = None, width: int = 30) -> None:
        self._label = label
        self._stream = stream if stream is not None else sys.stderr
        self._width = width
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._last_tenth = -1

    def __call__(self, done: int, total: int) -> None:
        filled = self._width * done // max(total, 1)
        line = f"{self._label} [{'#' * filled}{'-' * (self._width - filled)}] {done}/{total}"
        if self._tty:
            end = "\n" if done >= total else ""
            self._stream.write(f"\r{line}{end}")
        else:
            tenth = 10 * done // max(total, 1)
            if tenth == self._last_tenth and done < total:
                return
            self._last_tenth = tenth
            self._stream.write(f"{line}\n")
        self._stream.flush()

"""The one way tests wait: poll a condition until it holds or a generous deadline passes.

Never a fixed sleep: a test waits exactly as long as the condition takes, and a slow machine
gets the whole deadline before the test fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["wait_until"]


def wait_until(
    condition: Callable[[], object], *, timeout: float = 30.0, interval: float = 0.1
) -> bool:
    """Poll `condition` every `interval` seconds until it is truthy or `timeout` seconds pass;
    return whether it held (checked once more at the deadline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())

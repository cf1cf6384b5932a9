"""Grouping for `make test`'s parallel run (pytest-xdist, `--dist loadgroup`).

A module's tests share module-scoped fixtures (a whole fault run feeds several assertions), so
they run in one process: each module is one group. A module marked `spread` holds tests that
each set up their own world; each of its tests is a group of its own, so a long module does not
keep one process busy while the others are idle.
"""

from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        spread = item.get_closest_marker("spread") is not None
        group = item.nodeid if spread else item.nodeid.split("::", 1)[0]
        item.add_marker(pytest.mark.xdist_group(group))

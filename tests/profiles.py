"""Hypothesis profiles for a shared, possibly loaded CI machine.

Both profiles drop Hypothesis's wall-clock checks (the per-example deadline and the "input
generation is slow" health check): on a busy 2-core machine they fail by the clock, not by the
code. `make test` runs each property with its full number of examples ("shared-machine");
`make unit`, the fast loop, with a fifth of them ("quick"). A test that asks for more or fewer
examples than the default says so through `examples(n)`, so the quick profile scales it too.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

#: Hypothesis's own default number of examples, which `make test` keeps.
DEFAULT_EXAMPLES = settings().max_examples

settings.register_profile(
    "shared-machine", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "quick", parent=settings.get_profile("shared-machine"), max_examples=DEFAULT_EXAMPLES // 5
)
settings.load_profile("shared-machine")


def examples(wanted: int) -> int:
    """`wanted` examples under the default profile, scaled down with the loaded profile."""
    return max(10, wanted * settings().max_examples // DEFAULT_EXAMPLES)

"""Registers the Hypothesis profiles before pytest loads one (`--hypothesis-profile`)."""

from tests import profiles as _profiles  # noqa: F401  (registration is the import's effect)

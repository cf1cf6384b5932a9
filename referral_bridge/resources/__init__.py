"""Files the product ships inside the package, so an installed wheel works without a checkout.

`policy.toml` is the default consent and routing policy (docs/spec/rules.md); `samples/` holds the
contract's sample events, which the demo, `rules explain` examples and the tests use.
"""

from __future__ import annotations

from pathlib import Path

RESOURCES = Path(__file__).resolve().parent
DEFAULT_POLICY = RESOURCES / "policy.toml"
SAMPLES = RESOURCES / "samples"

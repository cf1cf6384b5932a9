"""`python -m referral_bridge` is the same as the `referral-bridge` command."""

import sys

from referral_bridge.cli.main import main

sys.exit(main())

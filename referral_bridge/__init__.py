"""referral-bridge: no victim of crime left without support."""

__version__ = "0.1.0"

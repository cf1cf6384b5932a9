"""`referral-bridge check-config`: validate configuration, policy and keys, then exit."""

from __future__ import annotations

import argparse

from referral_bridge.commands import SubParsers, settings_from, with_config
from referral_bridge.exit_codes import RET_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    from referral_bridge import bootstrap

    settings = settings_from(args)
    policy, keys = bootstrap.validate(settings)
    print(f"configuration ok: {settings.config_path}")
    print(f"  policy: {settings.bridge.policy_file} ({len(policy.rules)} rules)")
    print(f"  signing key: kid {keys.signing_key.kid}")
    for provider, key_set in keys.provider_keys.items():
        print(f"  provider {provider}: encrypts to kid {key_set.current.kid}")
    print(f"  broker: {'embedded (trying only)' if settings.embedded_broker else 'amqp'}")
    return RET_OK


def register(commands: SubParsers) -> None:
    parser = commands.add_parser("check-config", help="validate configuration, policy and keys")
    with_config(parser).set_defaults(func=cmd_check_config)

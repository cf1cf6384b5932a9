"""`referral-bridge keys …`: key pairs for the bridge and for providers."""

from __future__ import annotations

import argparse
from pathlib import Path

from referral_bridge.commands import SubParsers
from referral_bridge.exit_codes import RET_OK


def cmd_generate(args: argparse.Namespace) -> int:
    from referral_bridge.sealing import generate_key_pair

    files = generate_key_pair(args.kid, Path(args.out))
    print(f"private key: {files.private_path} (mode 0600: keep it secret)")
    print(f"public key:  {files.public_path}")
    return RET_OK


def register(commands: SubParsers) -> None:
    keys = commands.add_parser("keys", help="key files").add_subparsers(
        dest="keys_command", required=True
    )
    generate = keys.add_parser("generate", help="write a P-256 key pair (private file mode 0600)")
    generate.add_argument("--kid", required=True, help="key id, e.g. bridge-2026-11")
    generate.add_argument(
        "--out", required=True, help="folder to write KID.private.jwk and KID.public.jwk"
    )
    generate.set_defaults(func=cmd_generate)

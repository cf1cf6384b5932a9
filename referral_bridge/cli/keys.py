"""`referral-bridge keys …`: key pairs for the bridge and for providers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from referral_bridge.cli.common import SubParsers
from referral_bridge.cli.exit_codes import RET_OK, RET_USAGE


def cmd_generate(args: argparse.Namespace) -> int:
    from referral_bridge.sealing import generate_key_pair

    files = generate_key_pair(args.kid, Path(args.out), name=args.name)
    print(f"private key: {files.private_path} (mode 0600: keep it secret)")
    print(f"public key:  {files.public_path}")
    return RET_OK


def cmd_rotate(args: argparse.Namespace) -> int:
    from referral_bridge.sealing.rotation import add_public_key, promote_key, rotate_key_set

    if args.stage and not args.kid:
        print("referral-bridge: --stage goes with --kid", file=sys.stderr)
        return RET_USAGE
    if args.add:
        rotated = add_public_key(Path(args.set), Path(args.add))
    elif args.promote:
        rotated = promote_key(Path(args.set), args.promote)
    else:
        rotated = rotate_key_set(
            Path(args.set),
            args.kid,
            public_out=Path(args.public_out) if args.public_out else None,
            stage=args.stage,
        )
    print(f"key set:  {rotated.path} (kids: {', '.join(rotated.kids)})")
    print(f"current:  {rotated.current}")
    if args.stage:
        print(
            f"staged:   {args.kid} (not current: give its public key to the other side, then "
            f"`keys rotate --set {rotated.path} --promote {args.kid}`)"
        )
    if rotated.public_path is not None:
        print(f"public:   {rotated.public_path} (give this to the other side)")
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
    generate.add_argument(
        "--name",
        help="write NAME.private.jwk and NAME.public.jwk instead (e.g. bridge: the file the "
        "default configuration names)",
    )
    generate.set_defaults(func=cmd_generate)

    rotate = keys.add_parser(
        "rotate",
        help="add a key to a key set and mark it current, keeping the old keys for opening",
    )
    rotate.add_argument("--set", required=True, help="the JWKS file (a single JWK is converted)")
    which = rotate.add_mutually_exclusive_group(required=True)
    which.add_argument("--kid", help="generate a new P-256 key with this kid (private sets)")
    which.add_argument(
        "--add", metavar="KEYFILE", help="add the public key(s) another party sent (public sets)"
    )
    which.add_argument("--promote", metavar="KID", help="mark a key already in the set current")
    rotate.add_argument(
        "--stage",
        action="store_true",
        help="with --kid: add the key without making it current (promote it later)",
    )
    rotate.add_argument(
        "--public-out", help="with --kid: also write the set's public JWKS to this file"
    )
    rotate.set_defaults(func=cmd_rotate)

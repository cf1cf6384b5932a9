"""`referral-bridge migrate`: create or upgrade the ledger's schema, as the owner role.

On PostgreSQL `run` never changes the schema: the owner role runs this once per install and
upgrade (with REFERRAL_BRIDGE_LEDGER_URL naming the owner), and `--grant ROLE` gives the
bridge's own role exactly what it needs, with only SELECT and INSERT on the audit trail.
"""

from __future__ import annotations

import argparse
import sys

from referral_bridge.cli.common import SubParsers, operator_session, with_config
from referral_bridge.cli.exit_codes import RET_OK, RET_USAGE


def cmd_migrate(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import DBAPIError

    from referral_bridge.display import mask_url
    from referral_bridge.ledger import Ledger
    from referral_bridge.ledger.migrations import current_version
    from referral_bridge.ledger.roles import grant

    # The settings as every operator command reads them (no keys); but this command alone
    # migrates, so it opens the ledger itself rather than through the session.
    with operator_session(args) as session:
        url = session.settings.ledger_url
    if args.grant and url.startswith("sqlite"):
        print("referral-bridge: --grant is for PostgreSQL; SQLite has no roles", file=sys.stderr)
        return RET_USAGE
    # SQLite: the file and its folder are created owner-only (Ledger.open).
    ledger = Ledger.open(url, migrate=True)
    try:
        with ledger.engine.connect() as connection:
            version = current_version(connection)
        print(f"ledger {mask_url(url)}: schema version {version}")
        for role in args.grant or ():
            try:
                with ledger.engine.begin() as connection:
                    grant(connection, role)
            except DBAPIError as exc:
                first = str(exc.orig).splitlines()[0] if exc.orig else type(exc).__name__
                print(
                    f"referral-bridge: cannot grant to role {role} ({first}): create it first "
                    f"(CREATE ROLE {role} LOGIN), as a role allowed to grant on the ledger",
                    file=sys.stderr,
                )
                return RET_USAGE
            print(
                f"granted role {role}: read and write on the working tables, only SELECT and "
                "INSERT on rb_audit, only SELECT on rb_schema_info"
            )
    finally:
        ledger.dispose()
    return RET_OK


def register(commands: SubParsers) -> None:
    parser = with_config(
        commands.add_parser(
            "migrate",
            help="create or upgrade the ledger's schema (PostgreSQL: as the owner role)",
        )
    )
    parser.add_argument(
        "--grant",
        action="append",
        metavar="ROLE",
        help="PostgreSQL: grant this role what `run` needs (append-only on rb_audit); repeat "
        "for several",
    )
    parser.set_defaults(func=cmd_migrate)

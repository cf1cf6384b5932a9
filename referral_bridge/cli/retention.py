"""`referral-bridge retention`: erase personal data the retention policy no longer allows.

`--dry-run` prints counts only (matters, snapshots, message bodies, consent recorders), never
refs or data. Without it, each due matter is erased in its own transaction and recorded in the
audit trail; the workers' scheduler does the same once a day ([retention] in the config).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

from referral_bridge.cli.common import SubParsers, operator_session, with_config
from referral_bridge.cli.exit_codes import RET_OK


def cmd_retention(args: argparse.Namespace) -> int:
    from referral_bridge.ledger.retention import sweep

    with operator_session(args) as session:
        days = session.settings.retention.erase_after_days
        report = sweep(
            session.ledger,
            now=datetime.now(UTC),
            erase_after=timedelta(days=days),
            actor=session.actor,
            dry_run=args.dry_run,
        )
    if args.json:
        json.dump({"dry_run": args.dry_run, "erase_after_days": days, **asdict(report)}, sys.stdout)
        print()
        return RET_OK
    verb = "would erase" if args.dry_run else "erased"
    print(
        f"{verb} the personal data of {report.matters} matters idle for {days} days or more: "
        f"{report.records} snapshots, {report.bodies} delivered message bodies, "
        f"{report.consents} consent recorders"
        + ("" if args.dry_run else "; each erasure is in the audit trail")
    )
    return RET_OK


def register(commands: SubParsers) -> None:
    parser = with_config(
        commands.add_parser(
            "retention", help="erase personal data past the retention policy ([retention])"
        )
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="count what would be erased; change nothing"
    )
    parser.add_argument("--json", action="store_true", help="JSON instead of text")
    parser.set_defaults(func=cmd_retention)

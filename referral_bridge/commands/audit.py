"""`referral-bridge audit`: who was told what about a case or victim, when, and on what basis.

For a data protection officer: it lists the append-only audit trail (referrals and withdrawals
handed over, dead letters revealed or purged) by case, victim, provider, action or time. Records
hold ids, provider names and consent facts, never names or contact details.
"""

from __future__ import annotations

import argparse
import json
import sys

from referral_bridge.commands import SubParsers, operator_settings_from, with_config
from referral_bridge.commands.dlq import EMPTY, format_time, parse_when, render_table
from referral_bridge.exit_codes import RET_OK

_HEADINGS = (
    "AT",
    "ACTION",
    "ACTOR",
    "PROVIDER",
    "CASE",
    "VICTIM",
    "MESSAGE ID",
    "LAWFUL BASIS",
    "CONSENT",
    "CONSENT RECORDED AT",
    "RECORDED BY",
    "DETAIL",
)


def cmd_audit(args: argparse.Namespace) -> int:
    from referral_bridge.audit import AuditQuery, AuditTrail
    from referral_bridge.ledger import Ledger

    query = AuditQuery(
        case_ref=args.case,
        victim_id=args.victim,
        provider=args.provider,
        action=args.action,
        message_id=args.message_id,
        since=args.since,
        until=args.until,
        limit=args.limit,
    )
    # A query must never migrate the ledger under running workers.
    ledger = Ledger.open(operator_settings_from(args).ledger_url, migrate=False)
    try:
        records = AuditTrail(ledger.engine).query(query)
    finally:
        ledger.dispose()
    if args.json:
        json.dump({"records": [r.as_json() for r in records]}, sys.stdout, indent=2)
        print()
        return RET_OK
    rows = [
        [
            format_time(r.at),
            r.action,
            r.actor,
            r.provider or EMPTY,
            r.case_ref or EMPTY,
            r.victim_id or EMPTY,
            r.message_id or EMPTY,
            r.lawful_basis or EMPTY,
            r.consent_state or EMPTY,
            format_time(r.consent_recorded_at),
            r.consent_recorded_by or EMPTY,
            r.detail or EMPTY,
        ]
        for r in records
    ]
    if rows:
        render_table(_HEADINGS, rows, sys.stdout)
    shown = f"{len(records)} audit records"
    if args.limit is not None and len(records) == args.limit:
        shown += f" (the first {args.limit}; narrow the query or raise --limit)"
    print(shown)
    return RET_OK


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def register(commands: SubParsers) -> None:
    parser = with_config(
        commands.add_parser(
            "audit", help="the audit trail: who was told what about a case or victim, and why"
        )
    )
    parser.add_argument("--case", help="a crime or incident ref")
    parser.add_argument("--victim", help="a victim id")
    parser.add_argument("--provider", help="a provider id")
    parser.add_argument(
        "--action",
        help="referral_sent, withdrawal_sent, dead_letter_revealed, dead_letter_purged or "
        "dead_letter_purge_failed",
    )
    parser.add_argument("--message-id", help="a referral id, task id or dead-letter id")
    parser.add_argument(
        "--since", type=parse_when, help="at or after: 2026-11-23, RFC 3339 or 7d (ago)"
    )
    parser.add_argument("--until", type=parse_when, help="before this time")
    parser.add_argument(
        "--limit", type=_positive, default=1000, help="at most this many records (default 1000)"
    )
    parser.add_argument("--json", action="store_true", help="JSON instead of a table")
    parser.set_defaults(func=cmd_audit)

"""`referral-bridge audit`: who was told what about a case or victim, when, and on what basis.

For a data protection officer: it lists the append-only audit trail (referrals and withdrawals
handed over, dead letters revealed or purged) by case, victim, provider, action or time. Records
hold ids, provider names and consent facts, never names or contact details.

`audit verify` checks the trail's hash chain (exit 7 names the first broken record), and
`audit --victim ID --export FILE --reason TEXT` writes what the bridge holds about one person
for a subject access request: personal data, so it is audited first and written owner-only.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from referral_bridge.cli.common import SubParsers, operator_session, parse_when, with_config
from referral_bridge.cli.exit_codes import RET_OK, RET_TAMPERED, RET_USAGE
from referral_bridge.cli.render import EMPTY, format_time, render_table

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
    from referral_bridge.operator.audit import AuditQuery

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
    if args.export is not None:
        return _export(args)
    if args.reason is not None:
        print("referral-bridge: --reason is given with --export only", file=sys.stderr)
        return RET_USAGE
    with operator_session(args) as session:
        records = session.audit_trail.query(query)
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


def _export(args: argparse.Namespace) -> int:
    """A subject access export: audited (and committed) before a byte is written, 0600."""
    from referral_bridge.files import write_private
    from referral_bridge.ledger.subject import SUBJECT_ACCESS_EXPORT, subject_access
    from referral_bridge.operator.audit import OperatorAction

    if not args.victim:
        print("referral-bridge: --export needs --victim ID (the data subject)", file=sys.stderr)
        return RET_USAGE
    if not (args.reason or "").strip():
        print(
            "referral-bridge: --export writes a person's data and needs --reason TEXT saying why "
            "(e.g. the request's reference; it goes into the audit trail); nothing was written",
            file=sys.stderr,
        )
        return RET_USAGE
    target = Path(args.export)
    if target.exists():
        print(f"referral-bridge: {target} exists; choose a new file", file=sys.stderr)
        return RET_USAGE
    with operator_session(args) as session:
        now = datetime.now(UTC)
        document = subject_access(session.ledger, args.victim, now=now)
        session.record(
            [
                OperatorAction(
                    action=SUBJECT_ACCESS_EXPORT,
                    victim_id=args.victim,
                    detail=f"subject access export: {args.reason.strip()}",
                )
            ],
            at=now,
        )
    write_private(target, (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode())
    print(
        f"wrote {target} (mode 0600): personal data of victim {args.victim} for a subject access "
        "request; the export is recorded in the audit trail. Hand it over securely, then delete it"
    )
    return RET_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from referral_bridge.core.audit_chain import verify_chain
    from referral_bridge.ledger.chain import chain_rows

    with operator_session(args) as session, session.ledger.engine.connect() as connection:
        report = verify_chain(
            chain_rows(connection),
            max_skew=timedelta(seconds=args.max_skew),
            anchor=args.anchor,
        )
    if args.json:
        json.dump(
            {
                "intact": report.intact,
                "checked": report.checked,
                "head": {"id": report.head_id, "hash": report.head_hash},
                "broken": (
                    {"id": report.broken.id, "reason": report.broken.reason}
                    if report.broken
                    else None
                ),
                "skewed": list(report.skewed),
            },
            sys.stdout,
            indent=2,
        )
        print()
    else:
        if report.broken is not None:
            print(f"BROKEN at audit record {report.broken.id}: it {report.broken.reason}")
            print(f"{report.checked} records before it follow each other")
        if report.skewed:
            shown = ", ".join(str(i) for i in report.skewed[:20])
            more = f" and {len(report.skewed) - 20} more" if len(report.skewed) > 20 else ""
            print(
                f"records whose time is more than {args.max_skew:g} s from the database "
                f"server's when it wrote them (backdated or postdated): {shown}{more}"
            )
        if report.intact:
            print(f"audit trail intact: {report.checked} records")
        if report.intact and report.head_id is not None:
            print(
                f"head: {report.head_id}:{report.head_hash} (keep it elsewhere; "
                "`audit verify --anchor` checks it later)"
            )
    return RET_OK if report.intact else RET_TAMPERED


def _anchor(text: str) -> tuple[int, str]:
    record_id, _, digest = text.partition(":")
    if not (
        record_id.isdecimal() and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)
    ):
        raise argparse.ArgumentTypeError(f"{text!r} is not ID:HASH as `audit verify` prints it")
    return int(record_id), digest


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
    parser.add_argument(
        "--export",
        metavar="FILE",
        help="with --victim and --reason: write everything the bridge holds about that person "
        "(a subject access request) to FILE, mode 0600; audited",
    )
    parser.add_argument("--reason", help="why the export is made (into the audit trail)")
    parser.set_defaults(func=cmd_audit)
    verbs = parser.add_subparsers(dest="audit_command", metavar="verify")
    verify = verbs.add_parser("verify", help="check the audit trail's hash chain (exit 7: broken)")
    # SUPPRESS: given before or after `verify`, the parent's value is not overwritten.
    verify.add_argument(
        "--config", default=argparse.SUPPRESS, help="configuration file (as for `audit`)"
    )
    verify.add_argument(
        "--max-skew",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="PostgreSQL: flag records whose time is further than this from the server's when "
        "it wrote them (default 300)",
    )
    verify.add_argument(
        "--anchor",
        type=_anchor,
        metavar="ID:HASH",
        help="a head printed by an earlier verify: it must still be in the chain as it was",
    )
    verify.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="JSON instead of text"
    )
    verify.set_defaults(func=cmd_audit_verify)

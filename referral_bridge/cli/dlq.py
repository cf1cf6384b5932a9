"""`referral-bridge dlq …`: list, show, replay and purge dead letters without exposing anyone.

Nothing here prints a value from a message body unless the operator asks with `show --reveal
--reason TEXT`, and then only after the audit record of that disclosure is committed.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from referral_bridge.cli.common import SubParsers, operator_session, parse_when, with_config
from referral_bridge.cli.exit_codes import RET_FAILURE, RET_OK, RET_USAGE
from referral_bridge.cli.render import EMPTY, ProgressBar, format_time, render_table
from referral_bridge.settings import Settings

if TYPE_CHECKING:
    # Loaded lazily in the commands, so that `referral-bridge --help` does not import kombu.
    from referral_bridge.operator.deadletters import DeadLetterMessage, DeadLetterQueue
    from referral_bridge.operator.session import OperatorSession
    from referral_bridge.transport.embedded import BrokerSpec


# --- argument types ----------------------------------------------------------------------------


def _duration(text: str) -> timedelta:
    from referral_bridge.operator.deadletters import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# --- rendering ---------------------------------------------------------------------------------


def _letter_row(letter: DeadLetterMessage) -> list[str]:
    return [
        letter.id,
        letter.reason,
        letter.event_type or EMPTY,
        letter.shown_routing_key or EMPTY,
        format_time(letter.first_failed_at),
        str(letter.attempts) if letter.attempts is not None else EMPTY,
        str(letter.replay_count),
        str(letter.size),
    ]


_LETTER_HEADINGS = (
    "ID",
    "REASON",
    "TYPE",
    "ROUTING KEY",
    "FIRST FAILED AT",
    "ATTEMPTS",
    "REPLAYS",
    "SIZE",
)


def _print_letters(letters: Sequence[DeadLetterMessage], out: TextIO) -> None:
    from referral_bridge.operator.deadletters import counts_by_reason

    if letters:
        render_table(_LETTER_HEADINGS, [_letter_row(letter) for letter in letters], out)
    counts = counts_by_reason(letters)
    breakdown = ", ".join(f"{reason} {count}" for reason, count in counts.items())
    noun = "dead letter" if len(letters) == 1 else "dead letters"
    print(f"{len(letters)} {noun}" + (f": {breakdown}" if breakdown else ""), file=out)


# --- commands ----------------------------------------------------------------------------------


def _broker(settings: Settings) -> BrokerSpec:
    """The configured broker; on the embedded one, say so, and refuse one that was never used.

    An operator who forgot the broker URL (it usually lives in a root-only environment file) would
    otherwise read an empty embedded queue, created on the spot, and conclude there are no dead
    letters.
    """
    from referral_bridge.bootstrap import broker_of
    from referral_bridge.transport.errors import TransportConfigError

    broker = broker_of(settings)
    if broker.embedded:
        folder = Path(str(broker.transport_options["data_folder_in"]))
        print(
            f"referral-bridge: no broker URL is configured, so this reads the embedded broker "
            f"under {folder} (set REFERRAL_BRIDGE_BROKER_URL or [broker] url for RabbitMQ)",
            file=sys.stderr,
        )
        if not folder.is_dir():
            raise TransportConfigError(
                f"the embedded broker's queue folder {folder} does not exist, so no bridge has "
                "run with this configuration; if the bridge uses RabbitMQ, pass its URL "
                "(e.g. the EnvironmentFile= of the unit: /etc/referral-bridge/environment). "
                "Nothing was read or created"
            )
    return broker


def _queue(settings: Settings) -> DeadLetterQueue:
    from referral_bridge.bootstrap import topology_of
    from referral_bridge.operator.deadletters import DeadLetterQueue

    broker = _broker(settings)
    return DeadLetterQueue(broker, topology_of(settings), provider_ids=settings.providers)


def cmd_list(args: argparse.Namespace) -> int:
    from referral_bridge.operator.deadletters import DeadLetterFilter, counts_by_reason

    selection = DeadLetterFilter(
        reason=args.reason,
        event_type=args.type,
        failed_since=args.since,
        failed_before=args.until,
    )
    with operator_session(args) as session:
        letters = _queue(session.settings).browse(selection)
    if args.json:
        document = {
            "dead_letters": [letter.summary() for letter in letters],
            "counts_by_reason": counts_by_reason(letters),
            "total": len(letters),
        }
        json.dump(document, sys.stdout, indent=2)
        print()
    else:
        _print_letters(letters, sys.stdout)
    return RET_OK


def cmd_show(args: argparse.Namespace) -> int:
    from referral_bridge.operator.deadletters import DeadLetterFilter

    if args.reveal and not (args.reason or "").strip():
        print(
            "referral-bridge: --reveal shows personal data and needs --reason TEXT saying why "
            "(it goes into the audit trail); nothing was shown",
            file=sys.stderr,
        )
        return RET_USAGE
    if args.reason and not args.reveal:
        print("referral-bridge: --reason is given with --reveal only", file=sys.stderr)
        return RET_USAGE
    with operator_session(args) as session:
        letters = _queue(session.settings).browse(DeadLetterFilter(ids=frozenset({args.id})))
        if not letters:
            print(
                f"referral-bridge: no dead letter with id {args.id}; "
                "run `referral-bridge dlq list`",
                file=sys.stderr,
            )
            return RET_USAGE
        audit_ids: list[int] = []
        if args.reveal:
            # The disclosure is recorded, and committed, before a byte of it is shown.
            audit_ids = _audit_reveal(session, letters, args.reason)
    if args.json:
        json.dump(
            [_show_document(letter, reveal=args.reveal) for letter in letters],
            sys.stdout,
            indent=2,
            ensure_ascii=False,
            # Revealed headers are raw AMQP values: timestamps, bytes, decimals. Only `--reveal`
            # prints them, and by then the disclosure is audited, so show them as text.
            default=str,
        )
        print()
    else:
        for letter in letters:
            _show_text(letter, reveal=args.reveal, audit_ids=audit_ids)
    return RET_OK


def _audit_reveal(
    session: OperatorSession, letters: Sequence[DeadLetterMessage], why: str
) -> list[int]:
    from referral_bridge.operator.audit import DEAD_LETTER_REVEALED, OperatorAction

    revealed: list[OperatorAction] = []
    for letter in letters:
        case_ref, victim_ids = letter.refs()
        # One record per victim the body names, so that `audit --victim` finds the disclosure.
        for victim_id in victim_ids or (None,):
            revealed.append(
                OperatorAction(
                    action=DEAD_LETTER_REVEALED,
                    message_id=letter.id,
                    case_ref=case_ref,
                    victim_id=victim_id,
                    detail=why,
                )
            )
    return session.record(revealed)


def _show_document(letter: DeadLetterMessage, *, reveal: bool) -> dict[str, Any]:
    from referral_bridge.operator.masking import mask_body

    masked = mask_body(letter.body)
    body: dict[str, Any] = {"size": masked.size, "sha256": masked.sha256}
    if reveal:
        body["original_base64"] = base64.b64encode(letter.body).decode("ascii")
        try:
            body["original_text"] = letter.body.decode("utf-8")
        except UnicodeDecodeError:
            body["original_text"] = None
    else:
        body["is_json"] = masked.is_json
        body["masked"] = masked.document
    return {
        **letter.summary(),
        "detail": letter.detail,
        "headers": dict(letter.headers) if reveal else letter.safe_headers(),
        "body": body,
    }


def _show_text(letter: DeadLetterMessage, *, reveal: bool, audit_ids: Sequence[int]) -> None:
    from referral_bridge.operator.masking import mask_body

    out = sys.stdout
    masked = mask_body(letter.body)
    failed = format_time(letter.failed_at)
    first = format_time(letter.first_failed_at)
    print(f"dead letter {letter.id}", file=out)
    for label, value in (
        ("reason", letter.reason),
        ("detail", letter.detail or EMPTY),
        ("event type", letter.event_type or EMPTY),
        ("routing key", letter.shown_routing_key or EMPTY),
        ("failed at", failed if first == failed else f"{failed} (first failed {first})"),
        ("attempts", str(letter.attempts) if letter.attempts is not None else EMPTY),
        ("replays", str(letter.replay_count)),
        ("size", f"{masked.size} bytes, sha256 {masked.sha256}"),
    ):
        print(f"  {label + ':':<13}{value}", file=out)
    print("headers:", file=out)
    headers = dict(letter.headers) if reveal else letter.safe_headers()
    for name, value in sorted(headers.items()):
        print(f"  {name}: {value}", file=out)
    if reveal:
        ids = ", ".join(str(i) for i in audit_ids)
        print(f"body (original, byte for byte; disclosure recorded in audit {ids}):", file=out)
        out.flush()
        sys.stdout.buffer.write(letter.body)
        sys.stdout.buffer.flush()
        print(file=out)
    elif masked.is_json:
        print("body (personal fields masked; --reveal --reason TEXT shows the original):", file=out)
        print(json.dumps(masked.document, indent=2, ensure_ascii=False), file=out)
    else:
        print("body: not UTF-8 JSON, so not shown (size and sha256 above)", file=out)
    print(file=out)


def cmd_replay(args: argparse.Namespace) -> int:
    from referral_bridge.bootstrap import topology_of
    from referral_bridge.operator.deadletters import (
        DeadLetterFilter,
        DeadLetterNotFoundError,
        DeadLetterQueue,
    )
    from referral_bridge.transport.publisher import Publisher

    forms = sum((bool(args.ids), args.reason is not None, args.all))
    if forms != 1:
        print(
            "referral-bridge: say which dead letters to replay: IDs, --reason CODE or --all "
            "(exactly one of them)",
            file=sys.stderr,
        )
        return RET_USAGE
    selection = DeadLetterFilter(ids=frozenset(args.ids), reason=args.reason)
    with operator_session(args) as session:
        settings = session.settings
        broker, topology = _broker(settings), topology_of(settings)
        queue = DeadLetterQueue(broker, topology, provider_ids=settings.providers)
        with Publisher(broker, topology) as publisher:
            try:
                report = queue.replay(
                    selection,
                    publisher=publisher,
                    dry_run=args.dry_run,
                    on_progress=None if args.dry_run else _progress_for(args, "replaying"),
                )
            except DeadLetterNotFoundError as exc:
                print(f"referral-bridge: {exc}", file=sys.stderr)
                return RET_USAGE
    if args.dry_run:
        print(
            f"dry run: would replay {len(report.selected)} to {topology.inbound_exchange} "
            f"(providers' outcomes to {topology.outcomes_exchange}):"
        )
        _print_letters(report.selected, sys.stdout)
        return RET_OK
    print(f"replayed {len(report.replayed)} of {len(report.selected)} dead letters")
    for letter_id, reason in report.failed:
        print(f"  not replayed, still dead-lettered: {letter_id}: {reason}", file=sys.stderr)
    return RET_FAILURE if report.failed else RET_OK


def cmd_purge(args: argparse.Namespace) -> int:
    from referral_bridge.operator.audit import (
        DEAD_LETTER_PURGE_FAILED,
        DEAD_LETTER_PURGED,
        OperatorAction,
    )
    from referral_bridge.operator.deadletters import DeadLetterFilter, DeadLetterNotFoundError

    bulk = args.reason is not None or args.older_than is not None
    if bool(args.ids) == bulk or (bulk and (args.reason is None or args.older_than is None)):
        print(
            "referral-bridge: say which dead letters to purge: IDs, or --reason CODE together "
            "with --older-than DURATION",
            file=sys.stderr,
        )
        return RET_USAGE
    selection = DeadLetterFilter(
        ids=frozenset(args.ids),
        reason=args.reason,
        failed_before=datetime.now(UTC) - args.older_than if args.older_than else None,
    )
    with operator_session(args) as session:
        queue = _queue(session.settings)
        try:
            if not args.yes:
                preview = queue.purge(selection, before_remove=lambda _: None, dry_run=True)
                print(f"would purge {len(preview.selected)} (nothing was removed):")
                _print_letters(preview.selected, sys.stdout)
                print("add --yes to purge them for good", file=sys.stderr)
                return RET_USAGE

            def purging(letter: DeadLetterMessage) -> None:
                case_ref, _ = letter.refs()
                session.record(
                    [
                        OperatorAction(
                            action=DEAD_LETTER_PURGED,
                            message_id=letter.id,
                            case_ref=case_ref,
                            detail=f"reason code {letter.reason}",
                        )
                    ]
                )

            def not_purged(letter: DeadLetterMessage) -> None:
                case_ref, _ = letter.refs()
                session.record(
                    [
                        OperatorAction(
                            action=DEAD_LETTER_PURGE_FAILED,
                            message_id=letter.id,
                            case_ref=case_ref,
                            detail="removal failed; the dead letter is still queued",
                        )
                    ]
                )

            # Nothing is removed unless the audit trail can be written: open the ledger first.
            session.open_ledger()
            report = queue.purge(
                selection,
                before_remove=purging,
                on_remove_failed=not_purged,
                on_progress=_progress_for(args, "purging"),
            )
        except DeadLetterNotFoundError as exc:
            print(f"referral-bridge: {exc}", file=sys.stderr)
            return RET_USAGE
    print(f"purged {len(report.purged)} dead letters (audited)")
    if report.already_gone:
        print(
            f"{len(report.already_gone)} were already gone (removed by another run; audited too)",
            file=sys.stderr,
        )
    return RET_OK


def _progress_for(args: argparse.Namespace, label: str) -> ProgressBar | None:
    # A single message needs no bar.
    return None if args.ids and len(args.ids) == 1 else ProgressBar(label)


# --- registration ------------------------------------------------------------------------------


def register(commands: SubParsers) -> None:
    dlq = commands.add_parser(
        "dlq", help="dead letters: list, show (masked), replay, purge"
    ).add_subparsers(dest="dlq_command", required=True, metavar="ACTION")

    listing = with_config(dlq.add_parser("list", help="list dead letters (no personal data)"))
    listing.add_argument("--reason", help="only this reason code, e.g. schema_violation")
    listing.add_argument("--type", help="only this event type, e.g. crime.recorded")
    listing.add_argument(
        "--since", type=parse_when, help="dead-lettered at or after: 2026-11-23, RFC 3339 or 24h"
    )
    listing.add_argument("--until", type=parse_when, help="dead-lettered before this time")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    listing.set_defaults(func=cmd_list)

    show = with_config(dlq.add_parser("show", help="one dead letter, personal fields masked"))
    show.add_argument("id", help="an id from `dlq list`")
    show.add_argument(
        "--reveal",
        action="store_true",
        help="show the original body, personal data included (audited; needs --reason)",
    )
    show.add_argument("--reason", help="why you need to see it (recorded in the audit trail)")
    show.add_argument("--json", action="store_true", help="JSON instead of text")
    show.set_defaults(func=cmd_show)

    replay = with_config(
        dlq.add_parser("replay", help="republish dead letters to the inbound exchange")
    )
    replay.add_argument("ids", nargs="*", metavar="ID", help="ids from `dlq list`")
    replay.add_argument("--reason", help="every dead letter with this reason code")
    replay.add_argument("--all", action="store_true", help="every dead letter")
    replay.add_argument(
        "--dry-run", action="store_true", help="show what would be replayed; change nothing"
    )
    replay.set_defaults(func=cmd_replay)

    purge = with_config(dlq.add_parser("purge", help="delete dead letters for good (audited)"))
    purge.add_argument("ids", nargs="*", metavar="ID", help="ids from `dlq list`")
    purge.add_argument("--reason", help="every dead letter with this reason code ...")
    purge.add_argument(
        "--older-than", type=_duration, help="... dead-lettered longer ago than this: 30d, 12h"
    )
    purge.add_argument(
        "--yes", action="store_true", help="really purge (without it, only show what would go)"
    )
    purge.set_defaults(func=cmd_purge)

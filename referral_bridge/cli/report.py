"""`referral-bridge report`: Victims' Code compliance figures for a period, from the ledger.

For a force's Victims' Code lead, a Police and Crime Commissioner's office or a crime data
integrity inspector: referrals in time, consent asked, officer tasks done on time, provider
outcomes, crimes recorded from incidents, fallbacks and dead letters, by month, offence category,
provider and service. Counts only (docs/operations.md, "The monthly compliance report").
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from referral_bridge.cli.common import SubParsers, operator_session, with_config
from referral_bridge.cli.exit_codes import RET_OK, RET_USAGE
from referral_bridge.core.report import Counted, Period
from referral_bridge.settings import Settings

if TYPE_CHECKING:
    from referral_bridge.operator.session import OperatorSession


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date: use YYYY-MM-DD") from exc


def read_dead_letters(settings: Settings, period: Period) -> Sequence[Counted] | None:
    """Dead letters that failed in the period and still wait on the queue, by reason; None
    when the queue cannot be read (the report says so and carries on)."""
    from referral_bridge.bootstrap import broker_of, topology_of
    from referral_bridge.errors import BridgeError
    from referral_bridge.operator.deadletters import DeadLetterError, DeadLetterQueue
    from referral_bridge.report import dead_letter_counts
    from referral_bridge.transport.errors import TransportError

    try:
        broker = broker_of(settings)
        if broker.embedded:
            folder = Path(str(broker.transport_options["data_folder_in"]))
            if not folder.is_dir():
                return None
        queue = DeadLetterQueue(broker, topology_of(settings), provider_ids=settings.providers)
        letters = queue.browse()
    except (TransportError, DeadLetterError, BridgeError, OSError):
        return None
    return dead_letter_counts(((letter.reason, letter.failed_at) for letter in letters), period)


def write_report(
    session: OperatorSession,
    period: Period,
    *,
    form: str,
    now: datetime,
    dead_letters: bool = True,
) -> str:
    """The rendered report (used by `report` and by `demo`)."""
    from referral_bridge.report import Format, produce, render

    letters = read_dead_letters(session.settings, period) if dead_letters else None
    report = produce(session.ledger.engine, period, now=now, dead_letters=letters)
    return render(report, Format(form))


def cmd_report(args: argparse.Namespace) -> int:
    from referral_bridge.core.calendar import LONDON
    from referral_bridge.core.report import period_of

    now = datetime.now(UTC)
    try:
        period = period_of(args.first, args.last, now.astimezone(LONDON).date())
    except ValueError as exc:
        print(f"referral-bridge: {exc}", file=sys.stderr)
        return RET_USAGE
    with operator_session(args) as session:
        text = write_report(
            session,
            period,
            form=args.format,
            now=now,
            dead_letters=args.dead_letters,
        )
    if args.out:
        path = Path(args.out)
        path.write_text(text, encoding="utf-8")
        print(f"report written to {path.resolve()}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return RET_OK


def register(commands: SubParsers) -> None:
    parser = with_config(
        commands.add_parser(
            "report",
            help="Victims' Code compliance figures for a period (counts only)",
            description=__doc__,
        )
    )
    parser.add_argument(
        "--from",
        dest="first",
        type=_day,
        help="first day, YYYY-MM-DD, Europe/London (default: the last calendar month)",
    )
    parser.add_argument(
        "--to", dest="last", type=_day, help="last day, inclusive (default: see --from)"
    )
    parser.add_argument("--format", choices=("table", "csv", "json", "html"), default="table")
    parser.add_argument("--out", help="write to this file instead of standard output")
    parser.add_argument(
        "--dead-letters",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="count dead letters still waiting on the queue (reads the broker; default: yes)",
    )
    parser.set_defaults(func=cmd_report)

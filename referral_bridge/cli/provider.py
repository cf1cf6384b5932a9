"""`referral-bridge provider …`: the reference inbox, and delivery tools for operators.

`inbox` runs the reference HTTPS receiver a provider can use or copy; `outcome` sends what became
of a referral back to the force. `deliveries` lists what is
parked or rejected (ids, provider, attempts, last error: never personal data). `resend` puts a
rejected message back in line once the provider has fixed its side.

Long on purpose: the `provider` command group (inbox, users, outcome, deliveries, resend): each
sub-command's parser sits beside the function it runs.
"""

from __future__ import annotations

import argparse
import getpass
import json
import signal
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from referral_bridge.cli.common import SubParsers, operator_session, settings_from, with_config
from referral_bridge.cli.exit_codes import RET_FAILURE, RET_OK, RET_USAGE
from referral_bridge.core.events import ProviderOutcome
from referral_bridge.display import safe_text
from referral_bridge.ledger import DeliveryFilter, ResendOutcome

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from referral_bridge.intake.outbox import OutcomeOutbox
    from referral_bridge.provider.inbox import InboxStore
    from referral_bridge.sealing import KeySet
    from referral_bridge.transport import Publisher


def cmd_inbox(args: argparse.Namespace) -> int:
    from referral_bridge.provider.inbox import InboxStore, ReferralInbox
    from referral_bridge.provider.inbox_app import InboxServer
    from referral_bridge.runtime.http_server import ServerLimits
    from referral_bridge.sealing import load_key_set

    host, _, port = args.listen.rpartition(":")
    if not host or not (port.isascii() and port.isdigit()):
        print(f"referral-bridge: --listen {args.listen!r} is not HOST:PORT", file=sys.stderr)
        return RET_USAGE
    if args.users and not args.broker_url:
        print(
            "referral-bridge: the web inbox (--users) needs --broker-url: the force's broker, "
            "with this provider's account, to send outcomes to",
            file=sys.stderr,
        )
        return RET_USAGE
    store = InboxStore(Path(args.store))
    decryption_keys = load_key_set(Path(args.keys))
    verification_keys = load_key_set(Path(args.verify_with))
    inbox = ReferralInbox(
        provider=args.provider,
        decryption_keys=decryption_keys,
        verification_keys=verification_keys,
        store=store,
        store_plaintext=args.store_plaintext,
    )
    web = _web_inbox(args, store, decryption_keys, verification_keys) if args.users else None
    server = InboxServer(
        inbox,
        certfile=Path(args.cert),
        keyfile=Path(args.key),
        host=host,
        port=int(port),
        client_ca=Path(args.client_ca) if args.client_ca else None,
        path=args.path or ("/referrals" if web else None),
        routes=web.routes if web else (),
        limits=ServerLimits(
            request_seconds=args.request_deadline,
            handshake_seconds=args.request_deadline,
            max_connections=args.max_connections,
        ),
    )
    stop = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    server.start()
    print(f"listening on {server.url} (stop with Ctrl-C)", file=sys.stderr)
    if web is not None:
        web.outbox.start()
        print(f"staff sign in at https://{args.listen}/inbox", file=sys.stderr)
    try:
        stop.wait()
    finally:
        server.stop()
        if web is not None:
            web.close()
        store.close()
    return RET_OK


@dataclass
class _WebInbox:
    routes: list[BaseRoute]
    outbox: OutcomeOutbox
    publisher: Publisher

    def close(self) -> None:
        self.outbox.stop()
        self.publisher.close()


def _web_inbox(
    args: argparse.Namespace,
    store: InboxStore,
    decryption_keys: KeySet,
    verification_keys: KeySet,
) -> _WebInbox:
    """The staff pages beside the receiver, and the loop that sends their outcomes."""
    from referral_bridge.intake.accounts import Accounts
    from referral_bridge.intake.outbox import OutcomeOutbox
    from referral_bridge.intake.store import IntakeStore
    from referral_bridge.intake.web import IntakeWeb, intake_routes
    from referral_bridge.provider.outcomes import OutcomeSender
    from referral_bridge.transport import Publisher, Topology, broker_spec

    spec = broker_spec(args.broker_url, Path.cwd())
    exchange = args.outcomes_exchange or Topology().outcomes_exchange
    # One attempt per publish: the outbox loop does the waiting and retrying, for ever.
    publisher = Publisher(
        spec,
        Topology(outcomes_exchange=exchange),
        declare_topology=spec.embedded,
        retry_attempts=1,
    )
    sender = OutcomeSender(publisher, provider=args.provider, exchange=exchange)
    intake = IntakeStore(store)

    def send(referral_id: str, outcome: str, at: datetime, event_id: str) -> object:
        return sender.send(referral_id, outcome, at=at, event_id=event_id)

    outbox = OutcomeOutbox(intake, send, clock=lambda: datetime.now(UTC))
    web = IntakeWeb(
        store=intake,
        accounts=Accounts(Path(args.users)),
        decryption_keys=decryption_keys,
        verification_keys=verification_keys,
        outbox=outbox,
        provider=args.provider,
    )
    return _WebInbox(routes=intake_routes(web), outbox=outbox, publisher=publisher)


def cmd_users(args: argparse.Namespace) -> int:
    """Keep the web inbox's accounts file: add (or reset), disable, enable, list."""
    from referral_bridge.core.intake import Role
    from referral_bridge.intake.accounts import AccountsError, add_user, read_accounts, set_disabled

    path = Path(args.users)
    try:
        if args.users_command == "add":
            if args.password_stdin:
                password = sys.stdin.readline().rstrip("\n")
            else:
                password = getpass.getpass("password: ")
                if getpass.getpass("again: ") != password:
                    print("referral-bridge: the passwords differ; nothing changed", file=sys.stderr)
                    return RET_USAGE
            account = add_user(
                path, args.username, password, role=Role(args.role), teams=args.team or []
            )
            print(f"added {account.username} ({account.role.value}) to {path}")
        elif args.users_command in ("disable", "enable"):
            account = set_disabled(path, args.username, disabled=args.users_command == "disable")
            print(f"{account.username}: {'disabled' if account.disabled else 'enabled'}")
        else:
            for account in read_accounts(path).values():
                state = "disabled" if account.disabled else "active"
                teams = ",".join(account.teams) or "-"
                print(f"{account.username}  {account.role.value:<6} {state:<8} teams={teams}")
    except AccountsError as exc:
        print(f"referral-bridge: {exc}", file=sys.stderr)
        return RET_USAGE
    return RET_OK


def cmd_deliveries(args: argparse.Namespace) -> int:
    with operator_session(args) as session:
        rows = session.ledger.deliveries(state=args.state, provider=args.provider, limit=args.limit)
    records = [
        {
            "message_id": r.message_id,
            "kind": r.message.kind,
            "state": r.state,
            "provider": r.message.provider,
            "case_ref": r.case_ref,
            "victim_id": r.victim_id,
            "created_at": r.created_at.isoformat(),
            "attempts": r.attempts,
            "next_attempt_at": r.next_attempt_at.isoformat() if r.next_attempt_at else None,
            "rejected_at": r.rejected_at.isoformat() if r.rejected_at else None,
            "deadline": r.message.deadline.isoformat() if r.message.deadline else None,
            "fallback_task_id": r.fallback_task_id,
            "delivered_at": r.published_at.isoformat() if r.published_at else None,
            "last_error": r.last_error,
        }
        for r in rows
    ]
    if args.json:
        json.dump({"deliveries": records}, sys.stdout, indent=2)
        print()
        return RET_OK
    for record in records:
        # The case ref came in with an event: escaped and scrubbed like anything from outside.
        print(
            f"{record['message_id']}  {record['kind']:<12} {record['provider'] or '-':<28} "
            f"{record['state']:<9} attempts={record['attempts']} "
            f"case={safe_text(record['case_ref'])} next={record['next_attempt_at'] or '-'} "
            f"error={safe_text(record['last_error'] or '-')}"
        )
    if not records:
        print("nothing to show", file=sys.stderr)
    return RET_OK


def cmd_resend(args: argparse.Namespace) -> int:
    with operator_session(args) as session:
        # `--actor` is what the operator types, so a claim beside the OS user, never instead.
        result = session.ledger.resend(
            args.message_id, at=datetime.now(UTC), actor=session.on_behalf_of(args.actor)
        )
    print(f"{args.message_id}: {RESEND_MESSAGES[result.outcome]}")
    return RET_OK if result.outcome is ResendOutcome.RESENT else RET_FAILURE


#: What an operator is told for each outcome of `provider resend`.
RESEND_MESSAGES: Mapping[ResendOutcome, str] = {
    ResendOutcome.RESENT: "queued for delivery: the running bridge sends it within a scheduler "
    "interval",
    ResendOutcome.NOT_FOUND: "no outbox message has this id; check it with `provider deliveries`",
    ResendOutcome.DELIVERED: "already delivered; nothing to do",
    ResendOutcome.NOT_REJECTED: "not rejected: it is still being retried (see `provider "
    "deliveries`)",
    ResendOutcome.WITHDRAWN: "refused: consent for this referral was withdrawn, so it must not be "
    "sent",
    ResendOutcome.CANCELLED: "refused: cancelled because consent was withdrawn before delivery",
}


def cmd_outcome(args: argparse.Namespace) -> int:
    """Send one `victim.referral.outcome`, as a provider's operator marks a referral."""
    from referral_bridge.provider.inbox import InboxStore
    from referral_bridge.provider.outcomes import OutcomeError, OutcomeSender
    from referral_bridge.transport import Publisher, Topology, broker_spec

    at = None
    if args.at:
        try:
            at = datetime.fromisoformat(args.at)
        except ValueError:
            at = None
        if at is None or at.tzinfo is None:
            print("referral-bridge: --at must be an RFC 3339 time with an offset", file=sys.stderr)
            return RET_USAGE
    if args.store:
        store = InboxStore(Path(args.store))
        try:
            held = store.current(args.referral)
        finally:
            store.close()
        if held is None or held[2]:
            state = "is not held in" if held is None else "was withdrawn, says"
            print(
                f"referral-bridge: referral {args.referral} {state} {args.store}; nothing sent",
                file=sys.stderr,
            )
            return RET_FAILURE
    if args.config:
        from referral_bridge.bootstrap import broker_of, topology_of

        settings = settings_from(args)
        spec, topology = broker_of(settings), topology_of(settings)
    elif args.broker_url:
        spec = broker_spec(args.broker_url, Path.cwd())
        topology = Topology(outcomes_exchange=args.exchange or Topology().outcomes_exchange)
    else:
        print("referral-bridge: give --broker-url (or --config)", file=sys.stderr)
        return RET_USAGE
    # A provider's broker account may only publish: the bridge declares the exchange.
    with Publisher(spec, topology, declare_topology=spec.embedded) as publisher:
        sender = OutcomeSender(
            publisher, provider=args.provider, exchange=args.exchange or topology.outcomes_exchange
        )
        try:
            sent = sender.send(args.referral, args.outcome, at=at, event_id=args.event_id)
        except OutcomeError as exc:
            print(f"referral-bridge: {exc}", file=sys.stderr)
            return RET_USAGE
    print(
        f"sent {sent.outcome.value} for referral {sent.referral_id} at {sent.at.isoformat()} "
        f"(event {sent.event_id}, routing key {sent.provider})"
    )
    return RET_OK


def positive_seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds in (0, 3600]")
    return value


def positive_count(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def register(commands: SubParsers) -> None:
    provider = commands.add_parser(
        "provider", help="the reference provider inbox, and delivery tools"
    ).add_subparsers(dest="provider_command", required=True)

    inbox = provider.add_parser("inbox", help="run the reference HTTPS receiver (provider side)")
    inbox.add_argument("--listen", default="127.0.0.1:8443", help="HOST:PORT (default %(default)s)")
    inbox.add_argument("--cert", required=True, help="server certificate chain (PEM)")
    inbox.add_argument("--key", required=True, help="server TLS private key (PEM)")
    inbox.add_argument("--client-ca", help="require client certificates issued by this CA (mTLS)")
    inbox.add_argument(
        "--provider",
        required=True,
        metavar="ID",
        help="this provider's id: referrals addressed to another provider are refused (400)",
    )
    inbox.add_argument("--keys", required=True, help="the provider's private key set (JWK/JWKS)")
    inbox.add_argument(
        "--verify-with", required=True, help="the force's public signing key set (JWK/JWKS)"
    )
    inbox.add_argument("--store", required=True, help="SQLite file for accepted referrals")
    inbox.add_argument(
        "--store-plaintext",
        action="store_true",
        help="also store the decrypted referral (personal data on disk: only if you must)",
    )
    inbox.add_argument("--path", help="accept POSTs only on this path (default: any path)")
    inbox.add_argument(
        "--request-deadline",
        type=positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="a TLS handshake, and a request's headers and body, must each arrive within this; "
        "slower clients are cut off (default %(default)s)",
    )
    inbox.add_argument(
        "--max-connections",
        type=positive_count,
        metavar="N",
        help="open connections at most; more wait in the kernel's queue "
        "(default: half the open-file limit, at most 1024)",
    )
    inbox.add_argument(
        "--users",
        metavar="FILE",
        help="serve the staff web inbox (/inbox) with the accounts in FILE "
        "(`provider users add`); the receiver then takes POSTs on /referrals unless --path says",
    )
    inbox.add_argument(
        "--broker-url",
        help="web inbox: the force's broker, with this provider's account (amqps://...), "
        "where recorded outcomes are sent",
    )
    inbox.add_argument(
        "--outcomes-exchange",
        help="web inbox: the outcomes exchange (default: victim-services.outcomes)",
    )
    inbox.set_defaults(func=cmd_inbox)

    users = provider.add_parser(
        "users", help="staff accounts of the web inbox: add, disable, enable, list"
    ).add_subparsers(dest="users_command", required=True)
    add = users.add_parser("add", help="add a user, or set a new password, role or teams")
    add.add_argument("username")
    add.add_argument("--role", choices=("intake", "admin"), default="intake")
    add.add_argument(
        "--team",
        action="append",
        metavar="SERVICE",
        help="a service (team) whose referrals an intake worker sees; repeat for more",
    )
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    for name, text in (
        ("disable", "refuse a user's sign-in (and end their sessions at their next request)"),
        ("enable", "let a disabled user sign in again"),
    ):
        parser = users.add_parser(name, help=text)
        parser.add_argument("username")
    users.add_parser("list", help="list users (no hashes)")
    for parser in users.choices.values():
        parser.add_argument("--users", required=True, metavar="FILE", help="the accounts file")
        parser.set_defaults(func=cmd_users)

    outcome = with_config(
        provider.add_parser(
            "outcome",
            help="tell the force what became of a referral (victim.referral.outcome)",
            description="Publish a victim.referral.outcome to the force's outcomes exchange with "
            "this provider's id as routing key, and wait for the broker's confirm. No personal "
            "data: the referral id, the outcome and when.",
        )
    )
    outcome.add_argument("--provider", required=True, metavar="ID", help="this provider's id")
    outcome.add_argument(
        "--referral", required=True, metavar="ID", help="the referral id (its CloudEvent id)"
    )
    outcome.add_argument(
        "--outcome",
        required=True,
        choices=[outcome.value for outcome in ProviderOutcome],
    )
    outcome.add_argument("--at", help="when it happened, RFC 3339 with an offset (default: now)")
    outcome.add_argument(
        "--broker-url",
        help="the force's broker, with this provider's account (amqps://...); or --config",
    )
    outcome.add_argument(
        "--exchange",
        help="the outcomes exchange (default: victim-services.outcomes, or the config's)",
    )
    outcome.add_argument(
        "--store", help="the reference inbox's store: refuse a referral it does not hold"
    )
    outcome.add_argument(
        "--event-id", help="the CloudEvent id (default: a new one); reuse it to send again safely"
    )
    outcome.set_defaults(func=cmd_outcome)

    deliveries = with_config(
        provider.add_parser("deliveries", help="list parked, rejected, cancelled or all deliveries")
    )
    deliveries.add_argument(
        "--state",
        choices=[state.value for state in DeliveryFilter],
        default="undelivered",
        help="cancelled: consent was withdrawn before delivery (never sent)",
    )
    deliveries.add_argument("--provider", help="only this provider id")
    deliveries.add_argument("--limit", type=int, default=200)
    deliveries.add_argument("--json", action="store_true")
    deliveries.set_defaults(func=cmd_deliveries)

    resend = with_config(
        provider.add_parser("resend", help="deliver a rejected message again (audited)")
    )
    resend.add_argument("message_id", help="the referral or withdrawal id")
    resend.add_argument(
        "--actor",
        help="on whose behalf you ask: recorded beside your login in the audit trail",
    )
    resend.set_defaults(func=cmd_resend)

"""Command line: run, migrate, check-config, keys, provider, dlq, audit, report, retention, open,
rules explain, simulate, demo, schemas.

Exit codes are part of the interface (a test pins them); systemd and scripts act on them.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TextIO

import structlog

from referral_bridge.cli import (
    audit,
    check_config,
    dlq,
    keys,
    migrate,
    provider,
    report,
    retention,
)
from referral_bridge.cli.common import settings_from, with_config
from referral_bridge.cli.exit_codes import (
    RET_CONFIG,
    RET_CONNECT,
    RET_DRIFT,
    RET_FAILURE,
    RET_OK,
    RET_USAGE,
    RET_VERIFY,
)
from referral_bridge.errors import (
    BridgeError,
    ConfigError,
    LedgerPrivilegeError,
    LedgerSchemaError,
    LedgerUnavailableError,
)
from referral_bridge.files import private_umask
from referral_bridge.logging import configure_logging
from referral_bridge.resources import DEFAULT_POLICY
from referral_bridge.sealing import InvalidKeyIdError, KeyFileError, SealingError
from referral_bridge.settings import Settings
from referral_bridge.transport.errors import TransportConfigError, TransportError

__all__ = [
    "RET_CONFIG",
    "RET_CONNECT",
    "RET_DRIFT",
    "RET_FAILURE",
    "RET_OK",
    "RET_USAGE",
    "RET_VERIFY",
    "build_parser",
    "main",
]

log = structlog.get_logger("referral_bridge.cli")


def _settings(args: argparse.Namespace) -> Settings:
    return settings_from(args)


def cmd_run(args: argparse.Namespace) -> int:
    from referral_bridge import bootstrap
    from referral_bridge.runtime import worker

    settings = _settings(args)
    # Signals first: a SIGTERM while waiting for the ledger must still end in a clean exit 0.
    stop = threading.Event()
    worker.install_stop_signals(stop)
    bridge = bootstrap.build_when_ready(settings, stop=stop)
    try:
        worker.run(bridge, stop)
    finally:
        bridge.close()
    return RET_OK


def cmd_open(args: argparse.Namespace) -> int:
    from referral_bridge.sealing import load_key_set, open_event

    raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    envelope, payload = open_event(
        raw,
        decryption_keys=load_key_set(Path(args.key)),
        verification_keys=load_key_set(Path(args.verify_with)),
    )
    document = {"envelope": envelope, "payload": payload} if envelope is not None else payload
    json.dump(document, sys.stdout, indent=2, ensure_ascii=False)
    print()
    return RET_OK


def cmd_rules_explain(args: argparse.Namespace) -> int:
    from referral_bridge.operator.explain import explain_event

    policy_path = Path(args.policy) if args.policy else None
    if policy_path is None:
        policy_path = (
            _settings(args).bridge.policy_file
            if (args.config or _has_env_config())
            else _default_policy()
        )
    now: datetime | None = args.now
    raw = sys.stdin.buffer.read() if args.event == "-" else Path(args.event).read_bytes()
    earlier = [Path(name).read_bytes() for name in args.after or ()]
    return explain_event(raw, policy_path=policy_path, now=now, out=sys.stdout, after=earlier)


def _moment(text: str) -> datetime:
    """`--now`: an RFC 3339 time with an offset, as the contract's timestamps are."""
    from pydantic import TypeAdapter, ValidationError

    from referral_bridge.core.events import Timestamp

    try:
        return TypeAdapter(Timestamp).validate_python(text)
    except ValidationError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an RFC 3339 time with an offset: use e.g. 2026-11-24T10:00:00Z"
        ) from None


def _has_env_config() -> bool:
    import os

    from referral_bridge.settings import CONFIG_ENV

    return CONFIG_ENV in os.environ


def _default_policy() -> Path:
    return DEFAULT_POLICY


def cmd_simulate(args: argparse.Namespace) -> int:
    from referral_bridge.devtools.simulate import feed

    return feed(
        config=Path(args.config) if args.config else None,
        count=args.count,
        seed=args.seed,
        bad=args.bad,
        samples=args.samples,
        max_age_hours=args.max_age_hours,
        respond_only=args.respond,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from referral_bridge.devtools.demo import run_demo

    return run_demo(
        data_dir=Path(args.data_dir),
        cases=args.cases,
        seed=args.seed,
        marker=args.marker,
        out=sys.stdout,
    )


def cmd_schemas(args: argparse.Namespace) -> int:
    from referral_bridge.schemas import check_schemas, write_schemas

    directory = Path(args.directory)
    if args.action == "write":
        for path in write_schemas(directory):
            print(path)
        return RET_OK
    drifted = check_schemas(directory)
    for name in drifted:
        print(f"out of date: {directory / name} (run `make schemas`)", file=sys.stderr)
    return RET_DRIFT if drifted else RET_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="referral-bridge", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument(
        "--log-json",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="JSON log lines (default: when stderr is not a terminal)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    with_config(commands.add_parser("run", help="run the worker")).set_defaults(func=cmd_run)
    for module in (check_config, keys, provider, dlq, audit, report, migrate, retention):
        module.register(commands)

    opener = commands.add_parser("open", help="provider side: verify, decrypt and print a referral")
    opener.add_argument("file", help="a referral CloudEvent or JWE compact string; - for stdin")
    opener.add_argument("--key", required=True, help="provider's private key (JWK or JWKS)")
    opener.add_argument(
        "--verify-with", required=True, help="the bridge's public signing key (JWK or JWKS)"
    )
    opener.set_defaults(func=cmd_open)

    rules = commands.add_parser("rules", help="the consent policy").add_subparsers(
        dest="rules_command", required=True
    )
    explain = with_config(
        rules.add_parser("explain", help="show each victim's decision for an event")
    )
    explain.add_argument("event", help="event JSON file; - for stdin")
    explain.add_argument(
        "--policy", help="policy file (default: the configured one, else the default policy)"
    )
    explain.add_argument(
        "--now", type=_moment, help="decide as at this RFC 3339 time with an offset (default: now)"
    )
    explain.add_argument(
        "--after",
        action="append",
        metavar="EARLIER",
        help="an earlier event of the same matter, carried out first (repeat, oldest first): "
        "shows the update or withdrawal a change would give",
    )
    explain.set_defaults(func=cmd_rules_explain)

    simulate = with_config(
        commands.add_parser("simulate", help="publish synthetic events (fake people only)")
    )
    simulate.add_argument("--count", type=int, default=300, help="number of synthetic cases")
    simulate.add_argument("--seed", type=int, default=2026)
    simulate.add_argument(
        "--bad", type=int, default=0, help="also publish this many invalid messages"
    )
    simulate.add_argument(
        "--samples", type=Path, help="also publish the sample events in this folder"
    )
    simulate.add_argument(
        "--max-age-hours",
        type=float,
        default=96.0,
        help="cases are reported up to this long ago (default 96)",
    )
    simulate.add_argument(
        "--respond",
        action="store_true",
        help="instead of cases: providers' outcomes and officers' task completions for what "
        "the bridge has sent (read from its ledger; with --bad, one unknown referral and task)",
    )
    simulate.set_defaults(func=cmd_simulate)

    demo = commands.add_parser(
        "demo", help="run the bridge on the embedded broker with synthetic events"
    )
    demo.add_argument("--data-dir", default="var/demo")
    demo.add_argument("--cases", type=int, default=300)
    demo.add_argument("--seed", type=int, default=2026)
    demo.add_argument(
        "--marker", help=argparse.SUPPRESS
    )  # tests: put this marker in every personal field
    demo.set_defaults(func=cmd_demo)

    schemas = commands.add_parser("schemas", help="JSON Schema files generated from the models")
    schemas.add_argument("action", choices=("write", "check"))
    schemas.add_argument("directory", nargs="?", default="schemas")
    schemas.set_defaults(func=cmd_schemas)
    return parser


def main(argv: Sequence[str] | None = None, *, stderr: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(json=args.log_json, level=args.log_level)
    err = stderr or sys.stderr
    try:
        # Whatever a command writes (ledger, broker files, logs, inbox, keys) is owner-only.
        with private_umask():
            return int(args.func(args))
    except ConfigError as exc:
        print(f"referral-bridge: {exc}", file=err)
        return RET_CONFIG
    except (LedgerUnavailableError, LedgerSchemaError, LedgerPrivilegeError) as exc:
        print(f"referral-bridge: {exc}", file=err)
        return RET_CONNECT if isinstance(exc, LedgerUnavailableError) else RET_CONFIG
    except (KeyFileError, InvalidKeyIdError) as exc:
        print(f"referral-bridge: {exc}", file=err)
        return RET_CONFIG
    except SealingError as exc:
        print(f"referral-bridge: cannot open: {exc}", file=err)
        return RET_VERIFY
    except TransportConfigError as exc:
        print(f"referral-bridge: {exc}", file=err)
        return RET_CONFIG
    except TransportError as exc:
        print(f"referral-bridge: {exc}", file=err)
        return RET_CONNECT
    except (BridgeError, OSError) as exc:
        print(f"referral-bridge: {exc}", file=err)
        return RET_FAILURE
    except KeyboardInterrupt:
        return RET_FAILURE
    except Exception as exc:  # noqa: BLE001 (the last resort: a bug is exit 1, logged by type)
        # A bug. Its text may quote personal data (a validation error, a SQL parameter), so
        # only the type is shown and logged; the log event says where to look.
        log.error("command.failed", error_type=type(exc).__name__, detail=args.command)
        print(f"referral-bridge: unexpected {type(exc).__name__}; see the log", file=err)
        return RET_FAILURE

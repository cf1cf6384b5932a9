"""`referral-bridge check-config`: check everything the bridge needs before it starts, and say
exactly what is wrong and what to do about it.

Checks, in order: the configuration file, the policy, the keys (permissions, the signing key
against the public file next to it, unique kids), providers' TLS files (CA bundles, client
certificates: loaded as `run` loads them), the metrics address, then (unless
`--offline`) broker and ledger reachability. Every check prints one line, `OK`, `WARN` or
`FAIL`, on stdout; failures are repeated on stderr. The exit code is RET_CONFIG (3) when anything
needs an operator to change configuration, keys or software, else RET_CONNECT (4) when the broker
or ledger cannot be reached, else RET_OK. Nothing here prints personal data: it reads the
configuration, key ids and the ledger's schema version, never ledger rows.

Long on purpose: one check per thing the bridge needs, in the order `run` needs them; a flat list
is what an operator's failing check points into.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from referral_bridge.cli.common import SubParsers, with_config
from referral_bridge.cli.exit_codes import RET_CONFIG, RET_CONNECT, RET_OK
from referral_bridge.display import escape_controls, mask_url
from referral_bridge.errors import ConfigError
from referral_bridge.ledger.schema import SCHEMA_VERSION
from referral_bridge.runtime.health import (
    PROBE_TIMEOUT_SECONDS,
    parse_listen,
    probe_broker,
    probe_ledger,
)
from referral_bridge.sealing import (
    KeySet,
    PrivateKey,
    PublicKey,
    SealingError,
    load_key_set,
)

# The file-name convention of `keys generate`; not part of the sealing package's pinned surface.
from referral_bridge.sealing.keys import PRIVATE_SUFFIX, PUBLIC_SUFFIX
from referral_bridge.sealing.rotation import load_signing_key
from referral_bridge.settings import Settings, load_settings
from referral_bridge.transport.errors import TransportConfigError


class Status(StrEnum):
    OK = "OK"
    #: Works, but worth knowing (e.g. the embedded broker, a ledger not created yet).
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class Finding:
    """The outcome of one check: a PII-free line, and for a failure the exit code it implies."""

    check: str
    status: Status
    detail: str
    #: RET_CONFIG for what an operator must change; RET_CONNECT for what may come back by itself.
    exit_code: int = RET_OK


def ok(check: str, detail: str) -> Finding:
    return Finding(check, Status.OK, detail)


def warn(check: str, detail: str) -> Finding:
    return Finding(check, Status.WARN, detail)


def fail(check: str, detail: str, exit_code: int = RET_CONFIG) -> Finding:
    return Finding(check, Status.FAIL, detail, exit_code)


# --- configuration and policy ------------------------------------------------------------------


def check_settings(
    path: Path | None, env: Mapping[str, str] | None = None
) -> tuple[Settings | None, list[Finding]]:
    try:
        settings = load_settings(path, env=env)
    except ConfigError as exc:
        return None, [fail("config", problem) for problem in exc.problems]
    return settings, [ok("config", str(settings.config_path))]


def check_policy(settings: Settings) -> list[Finding]:
    from referral_bridge.bootstrap import check_policy_providers, load_policy

    try:
        policy = load_policy(settings.bridge.policy_file)
        check_policy_providers(policy, settings)
    except ConfigError as exc:
        return [fail("policy", problem) for problem in exc.problems]
    providers = sorted(policy.providers())
    return [
        ok(
            "policy",
            f"{settings.bridge.policy_file}: {len(policy.rules)} rules, routing to "
            f"{', '.join(providers) or 'no provider'}",
        )
    ]


# --- keys --------------------------------------------------------------------------------------


def _coordinates(key: PrivateKey | PublicKey) -> tuple[str, str]:
    """The public point of a key: what makes two files hold 'the same key'."""
    public = key.public_key if isinstance(key, PrivateKey) else key
    document = public.as_jwk()
    return str(document.get("x")), str(document.get("y"))


def _public_file_next_to(private_path: Path) -> Path | None:
    name = private_path.name
    if not name.endswith(PRIVATE_SUFFIX):
        return None
    return private_path.with_name(name.removesuffix(PRIVATE_SUFFIX) + PUBLIC_SUFFIX)


def _check_signing_key(path: Path) -> tuple[KeySet | None, list[Finding]]:
    """The signing key as the bridge loads it: a private JWK, or the current key of a private
    JWKS (after `keys rotate`); returns the whole set, whose kids are all the bridge's."""
    try:
        key = load_signing_key(path)
        signing_set = load_key_set(path)
    except SealingError as exc:
        # The message names the file and says what to do (chmod, generate, fix the path).
        return None, [fail("keys", f"keys.signing_key: {exc}")]
    findings: list[Finding] = []
    mode = stat.S_IMODE(path.stat().st_mode)
    folder_mode = path.parent.stat().st_mode
    if folder_mode & (stat.S_IWGRP | stat.S_IWOTH):
        findings.append(
            warn(
                "keys",
                f"{path.parent} (holding the signing key) is writable by group or others, who "
                f"could replace the key; run: chmod go-w {path.parent}",
            )
        )
    public_path = _public_file_next_to(path)
    pair = "no public key file next to it"
    if public_path is not None and public_path.exists():
        findings.extend(_check_pair(key, signing_set, public_path))
        pair = f"matches {public_path.name}"
    others = [kid for kid in signing_set.kids if kid != key.kid]
    kept = f" (also holds {', '.join(others)})" if others else ""
    findings.insert(
        0, ok("keys", f"signing key {path}: kid {key.kid}{kept}, mode {mode:04o}, {pair}")
    )
    return signing_set, findings


def _check_pair(key: PrivateKey, signing_set: KeySet, public_path: Path) -> list[Finding]:
    """The public file providers verify with must hold the signing key under the same kid, and
    every kid the two files share must name the same key."""
    try:
        published = load_key_set(public_path)
    except SealingError as exc:
        return [fail("keys", f"public key next to the signing key: {exc}")]
    if key.kid not in published:
        return [
            fail(
                "keys",
                f"{public_path} has no key with the signing key's kid {key.kid!r} (it has "
                f"{', '.join(published.kids)}); providers verifying with it would reject every "
                "referral: publish the public half of the signing key ('keys rotate "
                "--public-out'), or point keys.signing_key at the private key this file belongs to",
            )
        ]
    findings: list[Finding] = []
    for private in signing_set:
        match = published.get(private.kid)
        if match is not None and _coordinates(match) != _coordinates(private):
            findings.append(
                fail(
                    "keys",
                    f"{public_path} holds a different key under kid {private.kid!r} than "
                    f"{'the signing key' if private.kid == key.kid else 'the signing set'}: the "
                    "two files are not a pair; rewrite the public file from the private one "
                    "('keys rotate --public-out') and send it to providers",
                )
            )
    return findings


def _check_provider_keys(settings: Settings) -> tuple[dict[str, KeySet], list[Finding]]:
    sets: dict[str, KeySet] = {}
    findings: list[Finding] = []
    for provider_id, provider in settings.providers.items():
        try:
            key_set = load_key_set(provider.public_keys)
        except SealingError as exc:
            findings.append(fail("keys", f"providers.{provider_id}.public_keys: {exc}"))
            continue
        sets[provider_id] = key_set
        findings.append(
            ok(
                "keys",
                f"provider {provider_id}: kids {', '.join(key_set.kids)}; encrypts to "
                f"{key_set.current.kid}",
            )
        )
        if any(isinstance(key, PrivateKey) for key in key_set):
            findings.append(
                warn(
                    "keys",
                    f"providers.{provider_id}.public_keys ({provider.public_keys}) holds private "
                    "keys: the bridge needs only the provider's public keys; ask the provider "
                    "for its public file and keep the private one off this host",
                )
            )
    return sets, findings


def _check_kids_unique(signing: KeySet | None, sets: Mapping[str, KeySet]) -> list[Finding]:
    """A kid names one key: tokens carry only the kid, so a reused kid picks the wrong key."""
    owners: dict[str, list[tuple[str, tuple[str, str]]]] = {}
    for key in signing or ():
        owners.setdefault(key.kid, []).append(("the bridge's signing key", _coordinates(key)))
    for provider_id, key_set in sets.items():
        for key in key_set:
            owners.setdefault(key.kid, []).append((f"provider {provider_id}", _coordinates(key)))
    findings: list[Finding] = []
    for kid, holders in sorted(owners.items()):
        if len(holders) < 2:
            continue
        names = " and ".join(name for name, _ in holders)
        if len({point for _, point in holders}) > 1:
            findings.append(
                fail(
                    "keys",
                    f"kid {kid!r} names different keys for {names}; every key needs its own kid: "
                    "generate a new key pair with a new kid for one of them",
                )
            )
        else:
            findings.append(
                warn("keys", f"kid {kid!r} is the same key for {names}; is that intended?")
            )
    return findings


def check_keys(settings: Settings) -> list[Finding]:
    signing, findings = _check_signing_key(settings.keys.signing_key)
    sets, provider_findings = _check_provider_keys(settings)
    return findings + provider_findings + _check_kids_unique(signing, sets)


def check_provider_tls(settings: Settings) -> list[Finding]:
    """Each provider's own TLS files (HTTPS: CA bundle, client certificate and key; a provider
    broker: its CA bundle), loaded exactly as `run` loads them at start."""
    from referral_bridge.bootstrap import provider_tls

    findings: list[Finding] = []
    for provider_id, provider in settings.providers.items():
        try:
            context = provider_tls(provider_id, provider)
        except ConfigError as exc:
            findings += [fail("tls", problem) for problem in exc.problems]
            continue
        if context is None:
            continue
        trusted = provider.ca_bundle if provider.delivery == "https" else provider.broker_ca_bundle
        mutual = f", client certificate {provider.client_cert}" if provider.client_cert else ""
        findings.append(
            ok("tls", f"provider {provider_id}: trusts {trusted or 'the system CAs'}{mutual}")
        )
    return findings


# --- metrics, broker, ledger -------------------------------------------------------------------


def check_metrics(settings: Settings) -> list[Finding]:
    try:
        address = parse_listen(settings.metrics.listen)
    except ConfigError as exc:
        return [fail("metrics", problem) for problem in exc.problems]
    if address is None:
        return [ok("metrics", "endpoint off (metrics.listen is empty)")]
    host, port = address
    return [ok("metrics", f"/metrics, /healthz and /readyz on {host}:{port}")]


def check_broker(settings: Settings, *, timeout: float) -> list[Finding]:
    from referral_bridge.bootstrap import broker_of

    try:
        spec = broker_of(settings)
    except TransportConfigError as exc:
        return [fail("broker", str(exc))]
    if spec.embedded:
        return [
            warn(
                "broker",
                f"embedded broker under {settings.data_dir}: for trying the bridge only (a crash "
                "loses in-flight messages); set [broker] url or REFERRAL_BRIDGE_BROKER_URL to "
                "RabbitMQ for production",
            )
        ]
    queue = settings.broker.topology.work_queue
    where = spec.display_url
    found = probe_broker(spec, queue, timeout=timeout)
    if found.refused_login:
        return [
            fail(
                "broker",
                f"{where} refused the user name or password (or access to the vhost): correct "
                "the broker URL's credentials, or grant the user access in RabbitMQ",
            )
        ]
    if not found.reachable:
        return [
            fail(
                "broker",
                f"cannot reach {where} within {timeout:g} s ({found.error}): check that RabbitMQ "
                "is running, the host and port in the broker URL, and the firewall",
                RET_CONNECT,
            )
        ]
    if not found.queue_exists:
        return [
            warn(
                "broker",
                f"{where} is reachable but work queue {queue!r} does not exist yet: the bridge "
                "declares it at start; if the broker is provisioned by hand, check the names in "
                "[broker.topology]",
            )
        ]
    return [ok("broker", f"{where}: work queue {queue!r} has {found.waiting} message(s) waiting")]


def _sqlite_probe_engine(url: str, timeout: float) -> Engine:
    engine = create_engine(url, connect_args={"timeout": timeout})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite would otherwise commit DDL at once: the probe's CREATE TABLE must roll back.
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def check_ledger(settings: Settings, *, timeout: float) -> list[Finding]:  # noqa: C901 (independent checks in a row, each with its own message)
    url = make_url(settings.ledger_url)
    where = mask_url(settings.ledger_url)
    if url.get_backend_name() == "sqlite":
        database = Path(url.database or "")
        if not database.exists():
            return [_sqlite_not_created(database)]
    try:
        if url.get_backend_name() == "sqlite":
            engine = _sqlite_probe_engine(settings.ledger_url, timeout)
        else:
            engine = create_engine(
                settings.ledger_url, connect_args={"connect_timeout": max(1, round(timeout))}
            )
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        return [
            fail(
                "ledger",
                f"ledger URL {where} cannot be used ({type(exc).__name__}): use "
                "postgresql+psycopg://USER@HOST/DB, or leave it empty for SQLite",
            )
        ]
    powers: list[str] = []
    try:
        found = probe_ledger(engine)
        if url.get_backend_name() == "postgresql" and (found.schema_version or 0) > 0:
            powers = _audit_powers(engine)
    finally:
        engine.dispose()
    if not found.reachable:
        return [
            fail(
                "ledger",
                f"cannot connect to {where} ({found.error}: {found.message}): check that the "
                "database is running "
                "and reachable, and the ledger URL (REFERRAL_BRIDGE_LEDGER_URL)",
                RET_CONNECT,
            )
        ]
    version = found.schema_version or 0
    if version > SCHEMA_VERSION:
        return [
            fail(
                "ledger",
                f"{where} has schema version {version}, newer than this bridge's "
                f"{SCHEMA_VERSION}: install the newer referral-bridge that wrote it",
            )
        ]
    if not found.writable:
        return [
            fail(
                "ledger",
                f"{where} refuses writes ({found.error}): give the bridge's database user write "
                "access (or the service user write access to the SQLite file and its folder), "
                "and check free disk space",
            )
        ]
    if powers:
        return [
            fail(
                "ledger",
                f"{where}: `run` would refuse to start: "
                + "; ".join(powers)
                + ". Use a role with only SELECT and INSERT on rb_audit "
                "(`referral-bridge migrate --grant ROLE` as the owner)",
            )
        ]
    postgres = url.get_backend_name() == "postgresql"
    if version < SCHEMA_VERSION and postgres:
        return [
            fail(
                "ledger",
                f"{where}: schema version {version}, the bridge needs {SCHEMA_VERSION} and does "
                "not migrate PostgreSQL itself: run `referral-bridge migrate` as the ledger's "
                "owner role (take a backup first)",
            )
        ]
    if version == 0:
        state = "empty: the bridge creates its tables at first start"
    elif version < SCHEMA_VERSION:
        state = (
            f"schema version {version}: the bridge migrates it to {SCHEMA_VERSION} at start "
            "(take a backup first)"
        )
    else:
        state = f"schema version {version}, as this bridge expects"
    return [ok("ledger", f"{where}: {state}; writable")]


def _audit_powers(engine: Engine) -> list[str]:
    """What lets this role alter the audit trail ([] if nothing, or if it cannot be read)."""
    from sqlalchemy.exc import SQLAlchemyError

    from referral_bridge.ledger.roles import audit_powers

    try:
        with engine.connect() as connection:
            return audit_powers(connection)
    except SQLAlchemyError:
        return []


def _sqlite_not_created(database: Path) -> Finding:
    folder = database.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if os.access(folder, os.W_OK | os.X_OK):
        return warn("ledger", f"{database} does not exist yet: the bridge creates it at start")
    return fail(
        "ledger",
        f"{database} does not exist and {folder} is not writable by this user: create the data "
        "directory and make the service user its owner (systemd's StateDirectory= does this)",
    )


# --- the command -------------------------------------------------------------------------------


def run_checks(
    config: Path | None,
    *,
    offline: bool = False,
    timeout: float = PROBE_TIMEOUT_SECONDS,
    env: Mapping[str, str] | None = None,
) -> list[Finding]:
    """Every check, in order; stops after the configuration when it cannot be read."""
    settings, findings = check_settings(config, env)
    if settings is None:
        return findings
    findings += check_policy(settings)
    findings += check_keys(settings)
    findings += check_provider_tls(settings)
    findings += check_metrics(settings)
    if offline:
        findings.append(ok("broker", "not checked (--offline)"))
        findings.append(ok("ledger", "not checked (--offline)"))
    else:
        findings += check_broker(settings, timeout=timeout)
        findings += check_ledger(settings, timeout=timeout)
    return findings


def exit_code(findings: Iterable[Finding]) -> int:
    """RET_CONFIG beats RET_CONNECT: a reachable broker does not fix a bad key."""
    codes = {f.exit_code for f in findings if f.status is Status.FAIL}
    if RET_CONFIG in codes:
        return RET_CONFIG
    if codes:
        return max(codes)
    return RET_OK


def render(findings: list[Finding], config: Path | None, *, out: TextIO, err: TextIO) -> int:
    for finding in findings:
        detail = escape_controls(finding.detail)
        print(f"{finding.status.value:<5} {finding.check:<8} {detail}", file=out)
    code = exit_code(findings)
    failed = [f for f in findings if f.status is Status.FAIL]
    if failed:
        print(f"referral-bridge: check-config: {len(failed)} check(s) failed:", file=err)
        for finding in failed:
            print(f"  {finding.check}: {escape_controls(finding.detail)}", file=err)
    else:
        where = findings[0].detail if findings else config
        print(f"configuration ok: {where}", file=out)
    return code


def cmd_check_config(args: argparse.Namespace) -> int:
    config = Path(args.config) if args.config else None
    findings = run_checks(config, offline=args.offline, timeout=args.timeout)
    return render(findings, config, out=sys.stdout, err=sys.stderr)


def register(commands: SubParsers) -> None:
    parser = commands.add_parser(
        "check-config",
        help="check configuration, policy, keys, broker and ledger; exit 3 or 4 on a problem",
    )
    with_config(parser)
    parser.add_argument(
        "--offline",
        action="store_true",
        help="skip the broker and ledger checks (systemd's ExecStartPre: the bridge waits for "
        "them itself)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=PROBE_TIMEOUT_SECONDS,
        help=f"seconds to wait for the broker and the ledger (default {PROBE_TIMEOUT_SECONDS:g})",
    )
    parser.set_defaults(func=cmd_check_config)

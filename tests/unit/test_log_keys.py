"""Every keyword the package passes to its loggers is on the redaction allow-list.

Redaction is by allow-list (referral_bridge/logging.py), so a field the project itself logs but
forgot to allow is silently replaced by "[redacted]": the log line then says nothing. This walks
the package's syntax trees, finds every structlog logger (module-level `get_logger` and what
`.bind(...)` returns) and every call on it, and checks the keywords against the allow-list.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from referral_bridge.logging import ALLOWED_KEYS

PACKAGE = Path(__file__).resolve().parents[2] / "referral_bridge"
LEVELS = frozenset(
    {"debug", "info", "warning", "warn", "error", "exception", "critical", "fatal", "msg", "log"}
)
#: Consumed by the processors (render_exception) before redaction: never written as fields.
PROCESSED = frozenset({"exc_info", "stack_info"})


@dataclass(frozen=True)
class LogCall:
    where: str
    keywords: tuple[str, ...]
    splat: bool  # a `**mapping` whose keys cannot be read from the source


def _is_get_logger(node: ast.expr) -> bool:
    """`structlog.get_logger(...)` or `get_logger(...)`."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    return (isinstance(func, ast.Attribute) and func.attr == "get_logger") or (
        isinstance(func, ast.Name) and func.id == "get_logger"
    )


def _logger_names(tree: ast.AST) -> set[str]:
    """Names bound to a logger: `log = structlog.get_logger(...)`, `bound = log.bind(...)`."""
    names: set[str] = set()
    changed = True
    while changed:  # a bind of a bind is a logger too
        changed = False
        for node in ast.walk(tree):
            if not isinstance(node, ast.Assign) or len(node.targets) != 1:
                continue
            target = node.targets[0]
            if not isinstance(target, ast.Name) or target.id in names:
                continue
            value = node.value
            bound = (
                isinstance(value, ast.Call)
                and isinstance(value.func, ast.Attribute)
                and value.func.attr in {"bind", "new"}
                and isinstance(value.func.value, ast.Name)
                and value.func.value.id in names
            )
            if _is_get_logger(value) or bound:
                names.add(target.id)
                changed = True
    return names


def log_calls(source: str, where: str) -> list[LogCall]:
    """Every call of a logging method (or `.bind`) on a logger name in one module's source."""
    tree = ast.parse(source, filename=where)
    loggers = _logger_names(tree)
    return [
        LogCall(
            where=f"{where}:{node.lineno}",
            keywords=tuple(k.arg for k in node.keywords if k.arg is not None),
            splat=any(k.arg is None for k in node.keywords),
        )
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in LEVELS | {"bind", "new"}
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id in loggers
    ]


def all_log_calls() -> list[LogCall]:
    return [
        call
        for path in sorted(PACKAGE.rglob("*.py"))
        for call in log_calls(
            path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE.parent))
        )
    ]


def test_the_walk_finds_the_package_s_log_calls() -> None:
    calls = all_log_calls()
    # The service, the worker and the delivery engine all log; a walk that finds a handful has
    # stopped recognising the loggers.
    assert len(calls) > 50
    files = {call.where.partition(":")[0] for call in calls}
    assert {"referral_bridge/runtime/worker.py", "referral_bridge/delivery/engine.py"} <= files


def test_every_logged_keyword_is_allowed() -> None:
    refused = sorted(
        f"{call.where}: {keyword}"
        for call in all_log_calls()
        for keyword in call.keywords
        if keyword not in ALLOWED_KEYS | PROCESSED
    )
    assert refused == [], (
        "these fields would be logged as [redacted]: add them to ALLOWED_KEYS in "
        "referral_bridge/logging.py if their values can never hold personal data, or rename them"
    )


def test_no_log_call_passes_keywords_the_source_cannot_show() -> None:
    # `log.info("x", **fields)` hides its keys from the check above.
    assert [call.where for call in all_log_calls() if call.splat] == []


def test_the_walk_sees_module_loggers_and_bound_ones() -> None:
    source = (
        "import structlog\n"
        "log = structlog.get_logger('x')\n"
        "def f() -> None:\n"
        "    bound = log.bind(case_ref='C')\n"
        "    bound.warning('w', step='s')\n"
        "    log.info('i', attempt_s=1, **{})\n"
        "    other.info('not a logger', ignored=1)\n"
    )
    calls = {(call.keywords, call.splat) for call in log_calls(source, "sample.py")}
    assert calls == {(("case_ref",), False), (("step",), False), (("attempt_s",), True)}

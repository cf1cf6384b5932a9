"""What a producer sets in headers, ids, types, routing keys or flag names never reaches an
operator's screen or a log unescaped and unscrubbed (issue 10, finding 7).

A producer used to be able to put a name, a phone number and a date of birth (and terminal
escapes) into `dlq list`/`dlq show` output without `--reveal`, because inbound `x-rb-*` headers
were trusted; an unknown flag key such as `jane_doe_07700900456` was echoed into `x-rb-detail`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.e2e.helpers import BridgeEnv, crime_event, new_ref
from tests.e2e.test_dlq_cli import cli, dead_letters

pytestmark = pytest.mark.e2e

NAME = "Quennell-Brightwater"
PHONE = "07700 900456"
BIRTH = "1984-02-29"
ANSI = "\x1b[2J"
C1 = "\x9b31m"
HOSTILE = f"{NAME} {PHONE} born {BIRTH} {ANSI}{C1}"
#: What must not appear in any output without --reveal.
FORBIDDEN = (NAME.lower(), "07700", BIRTH, "\x1b", "\x9b", "quennell")


def leaks(text: str) -> list[str]:
    return [marker for marker in FORBIDDEN if marker in text.lower()]


@dataclass(frozen=True)
class Hostile:
    env: BridgeEnv
    log: str


@pytest.fixture(scope="module")
def hostile(rabbitmq_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    env = BridgeEnv.create(tmp_path_factory.mktemp("hostile"), rabbitmq_url=rabbitmq_url)
    try:
        worker = env.start_worker()
        # 1. Not JSON, with every x-rb-* header a producer could try to plant.
        env.publisher.publish(
            exchange=env.topology.inbound_exchange,
            routing_key="crime.recorded",
            body=b"not json",
            headers={
                "x-rb-reason": HOSTILE,
                "x-rb-detail": HOSTILE,
                "x-rb-failed-at": HOSTILE,
                "x-rb-first-failed-at": HOSTILE,
                "x-rb-attempts": HOSTILE,
                "x-rb-replay-count": HOSTILE,
                "x-rb-original-routing-key": "quennell.brightwater.07700900456",
                "x-rb-anything": HOSTILE,
            },
            message_id="quennell.brightwater.07700900456",
        )
        # 2. An extra flag whose name is personal data, with a wrong type.
        event = crime_event(crime_ref=new_ref(), victim_id="V-1")
        event["data"]["flags"] = {"quennell_brightwater_07700900456": "yes"}
        env.publish(event)
        # 3. An event type that is personal data, on a routing key that is too.
        event = crime_event(crime_ref=new_ref(), victim_id="V-2")
        event["type"] = "crime.quennell.brightwater.07700900456"
        env.publisher.publish_inbound(
            json.dumps(event).encode(), "crime.quennell.brightwater.07700900456"
        )
        env.wait_dead_letters(3, timeout=60)
        assert worker.terminate() == 0
        yield Hostile(env=env, log=worker.log_text())
    finally:
        env.close()


def test_the_worker_dead_letters_them_with_its_own_headers(hostile: Hostile) -> None:
    letters = dead_letters(hostile.env)

    assert sorted(letter["reason"] for letter in letters) == [
        "invalid_json",
        "schema_violation",
        "unknown_type",
    ]
    planted = next(letter for letter in letters if letter["reason"] == "invalid_json")
    assert (planted["attempts"], planted["replay_count"]) == (1, 0)
    assert planted["original_routing_key"] == "crime.recorded"


@pytest.mark.parametrize("form", [(), ("--json",)], ids=["table", "json"])
def test_dlq_list_shows_none_of_it(hostile: Hostile, form: tuple[str, ...]) -> None:
    result = cli(hostile.env, "dlq", "list", *form)

    assert result.returncode == 0, result.stderr
    assert leaks(result.stdout + result.stderr) == []


@pytest.mark.parametrize("form", [(), ("--json",)], ids=["text", "json"])
def test_dlq_show_shows_none_of_it(hostile: Hostile, form: tuple[str, ...]) -> None:
    for letter in dead_letters(hostile.env):
        result = cli(hostile.env, "dlq", "show", letter["id"], *form)

        assert result.returncode == 0, result.stderr
        assert leaks(result.stdout + result.stderr) == [], letter["reason"]


def test_the_worker_log_shows_none_of_it(hostile: Hostile) -> None:
    assert leaks(hostile.log) == []


def test_a_dead_letter_parked_with_hostile_headers_is_shown_escaped_and_scrubbed(
    hostile: Hostile,
) -> None:
    """Straight onto the dead-letter queue (someone with rights to it): still nothing shown."""
    env = hostile.env
    env.publisher.publish_dead_letter(
        json.dumps({"type": "quennell.brightwater"}).encode(),
        {
            "x-rb-reason": HOSTILE,
            "x-rb-detail": HOSTILE.replace(NAME, "someone"),
            "x-rb-failed-at": HOSTILE,
            "x-rb-attempts": HOSTILE,
            f"x-{PHONE}": HOSTILE,
        },
        "quennell.brightwater.07700900456",
        message_id="quennell.brightwater.07700900456",
    )
    env.wait_dead_letters(4, timeout=30)
    letters = [letter for letter in dead_letters(env) if letter["reason"] == "unknown"]
    assert len(letters) == 1

    for form in ((), ("--json",)):
        shown = cli(env, "dlq", "show", letters[0]["id"], *form)
        listed = cli(env, "dlq", "list", *form)
        assert shown.returncode == 0, shown.stderr
        assert leaks(shown.stdout + shown.stderr + listed.stdout + listed.stderr) == []

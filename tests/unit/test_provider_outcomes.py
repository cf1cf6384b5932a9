"""A provider's outcomes (`provider outcome`, OutcomeSender) and the simulator's responses."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from referral_bridge.cli import main as cli
from referral_bridge.core.events import EventType, ReferralOutcome, TaskCompleted
from referral_bridge.core.parsing import parse_inbound
from referral_bridge.devtools.simulate import Responder
from referral_bridge.provider.inbox import (
    REFERRAL_CREATED,
    REFERRAL_WITHDRAWN,
    InboxRecord,
    InboxStore,
)
from referral_bridge.provider.outcomes import OutcomeError, OutcomeSender, outcome_event
from tests.fakes import POLICY_FILE

AT = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
LANCASHIRE = "lancashire-victim-services"
REFERRAL = "6f1d8a52-0000-5b63-9a0e-4c1f2b7e9d10"


class RecordingPublisher:
    """Stands in for transport.Publisher: what would have been published, and where."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def publish_inbound(self, body: bytes, routing_key: str, **options: Any) -> None:
        self.sent.append({"body": body, "routing_key": routing_key, **options})


def run(*argv: str) -> int:
    return cli.main(["--log-level", "WARNING", "--no-log-json", *argv])


class TestOutcomeEvent:
    def test_the_event_is_one_the_bridge_accepts(self) -> None:
        body = outcome_event(
            provider=LANCASHIRE,
            referral_id=REFERRAL,
            outcome="unable_to_contact",
            at=AT,
            source="urn:provider:x",
            event_id="event-1",
        )

        event = parse_inbound(body)

        assert (event.type, event.id, event.source) == (
            EventType.REFERRAL_OUTCOME,
            "event-1",
            "urn:provider:x",
        )
        assert event.data == ReferralOutcome.model_validate(
            {
                "referral_id": REFERRAL,
                "provider": LANCASHIRE,
                "outcome": "unable_to_contact",
                "at": AT,
            }
        )

    @pytest.mark.parametrize(
        ("referral_id", "outcome", "named"),
        [
            (REFERRAL, "lost_in_the_post", "data.outcome"),
            ("has spaces in it", "contacted", "data.referral_id"),
        ],
    )
    def test_an_outcome_the_contract_refuses_is_an_error_naming_the_field_not_the_value(
        self, referral_id: str, outcome: str, named: str
    ) -> None:
        with pytest.raises(OutcomeError) as caught:
            outcome_event(
                provider=LANCASHIRE,
                referral_id=referral_id,
                outcome=outcome,
                at=AT,
                source="s",
                event_id="e",
            )

        message = str(caught.value)
        assert named in message
        assert "lost_in_the_post" not in message
        assert "has spaces" not in message


class TestOutcomeSender:
    def test_it_publishes_to_the_outcomes_exchange_with_the_provider_as_routing_key(
        self,
    ) -> None:
        publisher = RecordingPublisher()
        sender = OutcomeSender(
            publisher,  # type: ignore[arg-type]
            provider=LANCASHIRE,
            exchange="victim-services.outcomes",
            clock=lambda: AT,
        )

        sent = sender.send(REFERRAL, "contacted", event_id="event-9")

        [message] = publisher.sent
        assert (message["routing_key"], message["exchange"], message["message_id"]) == (
            LANCASHIRE,
            "victim-services.outcomes",
            "event-9",
        )
        assert (sent.event_id, sent.at, sent.outcome.value) == ("event-9", AT, "contacted")
        assert json.loads(message["body"])["source"] == f"urn:provider:{LANCASHIRE}"

    def test_a_time_without_an_offset_is_refused_before_anything_is_sent(self) -> None:
        publisher = RecordingPublisher()
        sender = OutcomeSender(publisher, provider=LANCASHIRE, exchange="x")  # type: ignore[arg-type]

        with pytest.raises(OutcomeError, match="UTC offset"):
            sender.send(REFERRAL, "contacted", at=datetime(2026, 11, 24, 10, 0))

        assert publisher.sent == []


class TestProviderOutcomeCommand:
    def test_without_a_broker_it_is_a_usage_error(self) -> None:
        code = run(
            "provider", "outcome", "--provider", LANCASHIRE, "--referral", REFERRAL,
            "--outcome", "contacted",
        )  # fmt: skip

        assert code == cli.RET_USAGE

    def test_a_time_without_an_offset_is_a_usage_error(self) -> None:
        code = run(
            "provider", "outcome", "--provider", LANCASHIRE, "--referral", REFERRAL,
            "--outcome", "contacted", "--at", "2026-11-24T10:00:00", "--broker-url",
            "amqp://guest:guest@127.0.0.1:1//",
        )  # fmt: skip

        assert code == cli.RET_USAGE

    @pytest.mark.parametrize("withdrawn", [False, True], ids=["not-held", "withdrawn"])
    def test_with_the_inbox_store_a_referral_it_does_not_hold_is_refused(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], withdrawn: bool
    ) -> None:
        store = InboxStore(tmp_path / "inbox.sqlite3")
        if withdrawn:
            for event_type, message_id in (
                (REFERRAL_CREATED, REFERRAL),
                (REFERRAL_WITHDRAWN, "w-1"),
            ):
                store.add(
                    InboxRecord(
                        message_id=message_id,
                        event_type=event_type,
                        referral_id=REFERRAL,
                        received_at=AT,
                        recipient_kid="k",
                        envelope="{}",
                        token="t",
                    )
                )
        store.close()

        code = run(
            "provider", "outcome", "--provider", LANCASHIRE, "--referral", REFERRAL,
            "--outcome", "contacted", "--store", str(tmp_path / "inbox.sqlite3"),
            "--broker-url", "amqp://guest:guest@127.0.0.1:1//",
        )  # fmt: skip

        assert code == cli.RET_FAILURE
        assert "nothing sent" in capsys.readouterr().err


class TestResponder:
    def test_responses_are_valid_events_about_only_what_was_sent(self) -> None:
        responder = Responder(seed=7, now=AT, answer_share=1.0)
        referrals = [(f"ref-{n}", LANCASHIRE) for n in range(30)]
        tasks = [(f"task-{n}", "leaflet") for n in range(10)] + [("review-1", "crime_review")]

        outcomes = list(responder.outcomes(referrals))
        completions = list(responder.completions(tasks))

        parsed = [parse_inbound(e.body) for e in outcomes]
        assert {e.data.referral_id for e in parsed if isinstance(e.data, ReferralOutcome)} == {
            r for r, _ in referrals
        }
        assert all(e.from_provider and e.routing_key == LANCASHIRE for e in outcomes)
        done = [parse_inbound(e.body).data for e in completions]
        assert {d.task_id for d in done if isinstance(d, TaskCompleted)} == {t for t, _ in tasks}
        assert not any(e.from_provider for e in completions)

    def test_the_same_seed_gives_the_same_responses(self) -> None:
        def bodies() -> list[bytes]:
            responder = Responder(seed=11, now=AT)
            return [e.body for e in responder.outcomes([("ref-1", LANCASHIRE), ("ref-2", "h")])]

        assert bodies() == bodies()


class TestRulesExplain:
    @pytest.mark.parametrize(
        ("event_type", "data", "expected"),
        [
            (
                "victim.referral.outcome",
                {"referral_id": REFERRAL, "provider": LANCASHIRE, "outcome": "returned"},
                "a leaflet task (provider_returned)",
            ),
            (
                "victim.referral.outcome",
                {"referral_id": REFERRAL, "provider": LANCASHIRE, "outcome": "contacted"},
                "recorded against the referral only",
            ),
            (
                "task.completed",
                {"task_id": "task-1", "completed_by": "PC 1", "result": "leaflet_given"},
                "closes that task",
            ),
        ],
    )
    def test_an_outcome_or_a_completion_is_explained_without_a_rule(
        self,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        event_type: str,
        data: dict[str, str],
        expected: str,
    ) -> None:
        at = AT.isoformat()
        timed = {"at": at} if event_type.startswith("victim") else {"completed_at": at}
        event = tmp_path / "event.json"
        event.write_text(
            json.dumps(
                {
                    "specversion": "1.0",
                    "id": "e-1",
                    "source": "urn:test",
                    "type": event_type,
                    "schemaversion": 1,
                    "data": data | timed,
                }
            )
        )

        assert run("rules", "explain", str(event), "--policy", str(POLICY_FILE)) == cli.RET_OK
        assert expected in capsys.readouterr().out

"""How `ledger-schema-3.sqlite3` was made: run with the code of the bridge whose schema it has.

    git archive <commit of schema version 3> | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old python tests/integration/data/make_ledger_schema_3.py OUT.sqlite3 KEYS_DIR

A referral (opt-out) later withdrawn, a second victim referred and kept, and a sexual offence
held for consent. Kept so that an upgrade is tested against what that release really wrote.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

from referral_bridge.ledger import Ledger
from tests.fakes import FakeClock, RecordingPublisher, cloudevent, inbound, make_keys, make_service
from tests.unit.factories import REPORTED_AT, make_crime, make_victim


def main(out: Path, keys_dir: Path) -> None:
    keys = make_keys(keys_dir)
    ledger = Ledger.open(f"sqlite:///{out}")
    clock = FakeClock(REPORTED_AT + timedelta(hours=1))
    service = make_service(
        ledger=ledger, sealer=keys.sealer(), publisher=RecordingPublisher(), clock=clock
    )
    crime = make_crime(make_victim("P-0001"), make_victim("P-0002"))
    service.handle(inbound(cloudevent(crime, event_type="crime.recorded", event_id="main-event-1")))
    consent = {
        "case_ref": crime.crime_ref,
        "victim_id": "P-0001",
        "referral": "withdrawn",
        "recorded_at": (REPORTED_AT + timedelta(hours=2)).isoformat(),
        "recorded_by": "PC 0000",
        "lawful_basis": None,
    }
    clock.advance(timedelta(hours=2))
    service.handle(
        inbound(
            cloudevent(consent, event_type="consent.updated", event_id="main-event-2"),
            routing_key="consent.updated",
        )
    )
    sexual = make_crime(
        make_victim("P-0003"), crime_ref="LC-26-0000002", category="sexual", ho_class="19C"
    )
    service.handle(
        inbound(cloudevent(sexual, event_type="crime.recorded", event_id="main-event-3"))
    )
    ledger.dispose()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

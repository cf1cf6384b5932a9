"""Unsettled deliveries of a message on a classic queue, counted in the ledger.

A quorum queue counts the deliveries of a message that came back unsettled (`x-delivery-count`);
a classic queue only says `redelivered`. A message that takes its worker down (SIGKILL, the OOM
killer, a crash in a C library) would then come back for ever, taking every worker down in turn.
So the consumer counts such a redelivery here (its `count_redelivery` port): in the ledger every
worker shares, kept across restarts, in one short transaction, and only for a redelivered message
without the quorum queue's count, so the normal path costs nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine, delete
from sqlalchemy.dialects import postgresql, sqlite

from referral_bridge.ledger import schema as t
from referral_bridge.ledger.engine import writing

#: How long a count is kept after its last redelivery. A copy is redelivered within seconds of
#: its worker's death; a count forgotten later only gives a message its attempts afresh.
REDELIVERY_MEMORY = timedelta(days=7)


class RedeliveryCounts:
    """The ledger's count of unsettled deliveries per message copy (see module docstring)."""

    engine: Engine

    def count_redelivery(self, message_key: str, at: datetime) -> int:
        """Count one more unsettled delivery of this message copy; returns the count so far.

        `message_key` names the copy without personal data (the consumer's SHA-256 of its body
        and the attempts it carries). An upsert in its own committed transaction: two workers
        counting at once both count.
        """
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        counted = (
            dialect.insert(t.redeliveries)
            .values(message_key=message_key, count=1, last_at=at)
            .on_conflict_do_update(
                index_elements=[t.redeliveries.c.message_key],
                set_={"count": t.redeliveries.c.count + 1, "last_at": at},
            )
            .returning(t.redeliveries.c.count)
        )
        with writing(self.engine) as connection:
            return int(connection.execute(counted).scalar_one())

    def forget_redeliveries(self, now: datetime) -> int:
        """Delete the counts last touched more than REDELIVERY_MEMORY ago; returns how many.
        (The retention sweep calls it, so the table holds only recent redeliveries.)"""
        with writing(self.engine) as connection:
            stale = t.redeliveries.c.last_at < now - REDELIVERY_MEMORY
            return int(connection.execute(delete(t.redeliveries).where(stale)).rowcount)

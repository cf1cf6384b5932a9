"""Prometheus metrics: counters the service and delivery increment, on a registry of their own.

Labels hold only codes and configured ids (event types, outcomes, reasons, provider ids), never
personal data or free text. Gauges that describe the ledger (holds open, oldest undelivered
referral, dead-letter depth) are computed at scrape time by a collector registered next to these.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class BridgeMetrics:
    """The bridge's counters; one instance per process, injected where things happen."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.events_consumed = Counter(
            "referral_bridge_events_consumed",
            "Valid inbound events consumed, by CloudEvent type.",
            ["type"],
            registry=self.registry,
        )
        self.decisions = Counter(
            "referral_bridge_decisions",
            "Per-victim decisions recorded, by outcome and reason code.",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "referral_bridge_dead_letters",
            "Messages sent to the dead-letter queue, by reason code.",
            ["reason"],
            registry=self.registry,
        )
        self.retries = Counter(
            "referral_bridge_retries",
            "Messages whose processing failed, put on the retry queue to be tried again later.",
            registry=self.registry,
        )
        self.delivered = Counter(
            "referral_bridge_deliveries",
            "Referrals and withdrawals handed over to a provider, by provider and kind.",
            ["provider", "kind"],
            registry=self.registry,
        )
        self.delivery_failures = Counter(
            "referral_bridge_delivery_failures",
            "Failed delivery attempts, by provider and outcome (transient or rejected).",
            ["provider", "outcome"],
            registry=self.registry,
        )
        self.circuit_open = Gauge(
            "referral_bridge_provider_circuit_open",
            "1 while a provider's circuit is open or half-open (deliveries paused after "
            "repeated failures), 0 once a delivery succeeds again; officer-tasks: the force "
            "broker.",
            ["provider"],
            registry=self.registry,
        )
        self.fallback_tasks = Counter(
            "referral_bridge_fallback_tasks",
            "Leaflet tasks issued because a provider rejected or could not be reached, by reason.",
            ["provider", "reason"],
            registry=self.registry,
        )

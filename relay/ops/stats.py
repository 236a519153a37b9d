"""The node's counters, kept up to date as things happen in plain ints and local histograms; relay.ops.metrics
reads them (through the node) at each sync. No dependency on the node, the sessions or the exporter."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from relay.ops.histogram import LocalHistogram

__all__ = ["Stats"]

log = logging.getLogger("relay.node")  # the logger these events always had


class Stats:
    """Counters kept up to date as things happen, in plain ints (relay.ops.metrics exports them)."""

    def __init__(self) -> None:
        self.commands: Counter[tuple[str, str]] = Counter()
        self.disconnects: Counter[int] = Counter()
        self.auth_failures: Counter[str] = Counter()
        self.redactions: Counter[str] = Counter()  # "card" / "pattern": replaced in client publications
        self.handshake_failures: Counter[str] = Counter()
        self.accepted: Counter[int] = Counter()  # sessions by wire
        self.publications: Counter[str] = Counter()  # by source: client, api
        self.api_requests: Counter[tuple[str, str]] = Counter()
        self.resyncs = 0
        self.outage_resyncs = 0  # subscriptions dropped with 2500 because their broker shard stayed down
        self.lane_resyncs = 0  # subscriptions dropped with 2500 after their update/bulk lane overflowed
        self.history_reads: Counter[str] = Counter()  # broker history reads by reason (recover/position/history)
        self.fanout = LocalHistogram()
        self.broker_publish = LocalHistogram()

    def command(self, method: str, result: str) -> None:
        self.commands[(method, result)] += 1

    def disconnect(self, code: int) -> None:
        self.disconnects[code] += 1

    def auth_failure(self, reason: str, **ids: Any) -> None:
        self.auth_failures[reason] += 1
        log.info("authentication failed: %s", reason, extra={"event": "auth_failed", "reason": reason, **ids})

    def handshake_failure(self, reason: str, **ids: Any) -> None:
        self.handshake_failures[reason] += 1
        log.info("connection refused: %s", reason, extra={"event": "refused", "reason": reason, **ids})

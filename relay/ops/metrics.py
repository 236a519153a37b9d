"""Prometheus metrics, served at ``/metrics`` on the API port.

The hot path never calls prometheus-client: the hub counts deliveries and writes
in C, ``Stats`` counts commands and failures in plain ints, and two local
histograms keep bucket counts in a list. ``Exporter.sync()`` (every
``metrics_interval`` seconds, and before a scrape) adds what each counter grew
by since the last sync and sets the gauges.

With ``relay serve --workers N`` the supervisor gives every worker the same
``PROMETHEUS_MULTIPROC_DIR`` before it imports prometheus-client, so each
worker's values land in files there and a scrape answered by any worker sums
them all (prometheus-client's multiprocess mode): one scrape, the whole node.
A worker's figures are at most ``metrics_interval`` old in that mode.

Labels stay low-cardinality: transports, command methods, results, reasons and
close codes come from fixed sets; never a channel, user or client id.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from typing import Any, Protocol

from relay import __version__

from relay.ops import logs
from relay.ops.histogram import FIRST_RESPONSE_BUCKETS, LATENCY_BUCKETS
from relay.ops.stats import Stats
from relay.rules.backpressure import Backpressure, resident_bytes

__all__ = ["Exporter", "NodeView", "multiprocess_dir"]

TRANSPORTS = {0: "websocket", 1: "tcp", 2: "websocket"}  # relay.core WIRE_WS, WIRE_TCP, WIRE_WS_PB


class NodeView(Protocol):
    """What the exporter reads of the node, and all it reads (relay.node.registry.Node fulfils it): counters
    and gauges, never the sessions. The exporter knows the node by this view only."""

    core: str  # "cython" or "python"
    stats: Stats
    hub: Any  # relay.core.Hub, None before start: its delivery counters
    connected_by_wire: Mapping[int, int]
    join_leave_subs: int
    recovery: Any  # relay.node.recovery.RecoveryCoalescer: .coalesced
    broker: Any  # relay.brokers.base.Broker: health(), and .errors, .reconnects where it counts them
    backpressure: Backpressure
    outbox: Any  # relay.integrations.outbox.OutboxConsumer or None
    proxy: Any  # relay.integrations.proxy.EventProxy or None
    support: Any  # relay.rules.support.SupportDesk or None

    @property
    def max_connections(self) -> int: ...
    @property
    def num_channels(self) -> int: ...
    def backlog_bytes(self) -> int: ...


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Exporter:
    """The node's metrics. Made after PROMETHEUS_MULTIPROC_DIR is set (it decides where values live)."""

    def __init__(self, node: NodeView) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.node = node
        self.mp_dir = multiprocess_dir()
        r = self.registry = CollectorRegistry(auto_describe=True)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = (), mode: str = "livesum") -> Any:
            return Gauge(name, doc, labels, registry=r, multiprocess_mode=mode)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
            return Counter(name, doc, labels, registry=r)

        gauge("relay_build_info", "relay's version and Python", ("version", "python"), "livemax").labels(
            __version__, platform.python_version()).set(1)
        gauge("relay_core_info", "the fan-out core in use (cython: compiled; python: the pure-Python twin)",
              ("implementation",), "livemax").labels(node.core).set(1)
        self.connections = gauge("relay_connections", "connected clients (connect command done)", ("transport",))
        self.connections_max = gauge("relay_connections_max", "connections this node accepts (the cap)")
        self.accepted = counter("relay_connections_accepted", "client sockets accepted", ("transport",))
        self.subscriptions = gauge("relay_subscriptions", "client subscriptions")
        self.channels = gauge("relay_channels", "channels with subscribers on this node (summed over workers)")
        self.commands = counter("relay_client_commands", "client protocol commands by method and result",
                                ("method", "result"))
        self.publications = counter("relay_publications", "publications accepted, by who sent them", ("source",))
        self.deliveries = counter("relay_deliveries", "publications queued to a subscriber, by transport",
                                  ("transport",))
        self.writes = counter("relay_socket_writes", "socket writes of queued messages (several messages "
                                                     "share one write)")
        self.fanout = Histogram("relay_fanout_latency_seconds", "publication at this node (its own publish or "
                                "its arrival from the broker) to the end of the write pass to every subscriber",
                                buckets=LATENCY_BUCKETS, registry=r)
        self.broker_publish = Histogram("relay_broker_publish_latency_seconds", "a broker publish (or a batch "
                                        "of them) round trip", buckets=LATENCY_BUCKETS, registry=r)
        self.queue_bytes = gauge("relay_outbound_queue_bytes", "bytes waiting for slow clients (relay's queues, "
                                 "the transports' buffers and the kernel's send queues of connections whose "
                                 "writes are paused)")
        self.slow = counter("relay_slow_consumer_disconnects", "clients disconnected for not reading (3008)")
        self.refused = counter("relay_publications_refused", "publications refused by publisher backpressure "
                               "(server API 429, client error 106), by source", ("source",))
        self.backpressure = gauge("relay_backpressure_active", "1 while the node refuses new publications "
                                  "(docs/backpressure.md)", mode="livemax")
        self.paced = counter("relay_paced_publications", "publications whose fan-out was spread over a window "
                             "(pace_ms, docs/pacing.md)")
        self.pacing = gauge("relay_pacing_channels", "channels with a paced broadcast in progress")
        self.lane_drops = counter("relay_lane_drops", "publications not queued for a slow client because its "
                                  "queue passed the lane's limit, by lane (update, bulk)", ("lane",))
        self.lane_resyncs = counter("relay_lane_resyncs", "subscriptions dropped with 2500 (the SDK resubscribes "
                                    "and recovers) because their update or bulk lane overflowed")
        self.disconnects = counter("relay_disconnects", "disconnects by close code", ("code",))
        self.handshake_failures = counter("relay_handshake_failures", "sockets refused before a session, "
                                          "by reason", ("reason",))
        self.auth_failures = counter("relay_auth_failures", "authentication and authorization failures, "
                                     "by reason", ("reason",))
        self.broker_errors = counter("relay_broker_errors", "broker operations that failed")
        self.broker_reconnects = counter("relay_broker_reconnects", "broker pub/sub connections re-established")
        self.broker_up = gauge("relay_broker_up", "1 if every shard of the broker (every Redis instance, every "
                               "Cluster master) passes its liveness checks", mode="livemin")
        self.broker_shard_up = gauge("relay_broker_shard_up", "1 if this broker shard (a Redis instance, a Cluster "
                                     "master) passes its liveness checks: PINGs with a deadline on every "
                                     "connection", ("shard",), mode="livemin")
        self.resyncs = counter("relay_resyncs", "channels resynced after a gap in the broker's stream")
        self.outage_resyncs = counter("relay_broker_outage_resyncs", "subscriptions dropped with 2500 (the SDK "
                                      "retries) because their broker shard stayed down past broker_down_grace")
        self.api_requests = counter("relay_api_requests", "HTTP server API calls by method and result",
                                    ("method", "result"))
        self.worker_restarts = counter("relay_worker_restarts", "workers the supervisor restarted")
        self.rss = gauge("relay_resident_memory_bytes", "resident memory of relay's processes (summed over "
                         "workers)")
        self.log_dropped = counter("relay_log_lines_dropped", "log lines dropped by the rate limit (log_rate)")
        self.outbox_rows = counter("relay_outbox_rows", "outbox rows settled: ok (executed, deleted) or failed "
                                   "(given up on: failed_at set)", ("result",))
        self.outbox_errors = counter("relay_outbox_errors", "outbox database errors and transient execution "
                                     "failures (each followed by a retry)")
        self.outbox_reconnects = counter("relay_outbox_reconnects", "outbox database sessions re-established")
        self.outbox_lag = gauge("relay_outbox_lag_seconds", "age of the oldest outbox row claimed by the last "
                                "poll (0: none waiting)", mode="livemax")
        self.outbox_partitions = gauge("relay_outbox_partitions_owned", "outbox partitions this node consumes")
        self.ready = gauge("relay_ready", "1 when ready (accepting, broker reachable); 0 draining or not ready",
                           mode="livemin")
        self.proxy_latency = Histogram("relay_proxy_request_duration_seconds", "event proxy requests to the "
                                       "backend, by hook (failures included, shed requests not)", ("hook",),
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.proxy_errors = counter("relay_proxy_errors", "event proxy requests that gave no usable answer, by "
                                    "hook and kind (timeout, unreachable, status, malformed, overloaded)",
                                    ("hook", "kind"))
        self.proxy_in_flight = gauge("relay_proxy_in_flight", "event proxy requests in flight, by hook",
                                     ("hook",))
        self.redactions = counter("relay_redactions", "card numbers and configured patterns replaced in client "
                                  "publications, by kind (card, pattern)", ("kind",))
        self.history_reads = counter("relay_history_reads", "broker history reads made, by reason: recover and "
                                     "position (subscribes, coalesced per channel), history (history calls)",
                                     ("reason",))
        self.recoveries_coalesced = counter("relay_recoveries_coalesced", "subscribe stream reads (position or "
                                            "recovery) served by a broker read made for another subscribe too")

        self.first_response = Histogram("relay_first_response_seconds", "support chats: a customer's message to "
                                        "the first reply by someone else, by namespace (each counted once, by the "
                                        "node that accepted the reply)", ("namespace",),
                                        buckets=FIRST_RESPONSE_BUCKETS, registry=r)
        self.support_waiting = gauge("relay_support_chats_waiting", "support chats waiting now for longer than "
                                     "support_wait_threshold, by namespace (the cluster's figure: every node "
                                     "exports the same value, so aggregate with max, not sum)", ("namespace",),
                                     "livemax")
        self.support_escalations = counter("relay_support_escalations", "support chats sent to the escalation "
                                           "webhook, by result (ok, failed: after 3 tries)", ("result",))
        self.support_errors = counter("relay_support_errors", "support chat bookkeeping that failed (the "
                                      "publications went through; their first-response figures are lost)")
        self._seen: dict[Any, float] = {}
        self._shards: set[str] = set()  # broker shards with a relay_broker_shard_up series

    # --- sync -------------------------------------------------------------------------------------

    def _add(self, metric: Any, key: Any, value: float) -> None:
        """Increase ``metric`` by what ``value`` (a running total) grew since the last sync."""
        last = self._seen.get(key, 0)
        if value > last:
            metric.inc(value - last)
            self._seen[key] = value

    def sync(self, ready: bool | None = None) -> None:
        node = self.node
        stats = node.stats
        hub = node.hub
        by_wire = node.connected_by_wire
        connected: dict[str, int] = {}
        for wire, name in TRANSPORTS.items():  # a transport may carry several protocols (wires)
            connected[name] = connected.get(name, 0) + by_wire.get(wire, 0)
            self._add(self.accepted.labels(name), ("accepted", wire), stats.accepted.get(wire, 0))
        for name, n in connected.items():
            self.connections.labels(name).set(n)
        self.connections_max.set(node.max_connections)
        if hub is not None:
            self.subscriptions.set(hub.num_subscriptions - node.join_leave_subs)
            self.channels.set(node.num_channels)
            tcp = hub.deliveries_tcp
            self._add(self.deliveries.labels("tcp"), "dtcp", tcp)
            self._add(self.deliveries.labels("websocket"), "dws", hub.deliveries - tcp)
            self._add(self.writes, "writes", hub.writes)
            self._add(self.paced, "paced", hub.paced)
            self.pacing.set(hub.pacing())
            self._add(self.lane_drops.labels("update"), "ldu", hub.drops_update)
            self._add(self.lane_drops.labels("bulk"), "ldb", hub.drops_bulk)
        for (method, result), n in list(stats.commands.items()):
            self._add(self.commands.labels(method, result), ("cmd", method, result), n)
        for source, n in list(stats.publications.items()):
            self._add(self.publications.labels(source), ("pub", source), n)
        for code, n in list(stats.disconnects.items()):
            self._add(self.disconnects.labels(str(code)), ("disc", code), n)
        self._add(self.slow, "slow", stats.disconnects.get(3008, 0))
        for reason, n in list(stats.handshake_failures.items()):
            self._add(self.handshake_failures.labels(reason), ("hs", reason), n)
        for kind, n in list(stats.redactions.items()):
            self._add(self.redactions.labels(kind), ("redact", kind), n)
        for reason, n in list(stats.history_reads.items()):
            self._add(self.history_reads.labels(reason), ("hread", reason), n)
        self._add(self.recoveries_coalesced, "coalesced", node.recovery.coalesced)
        for reason, n in list(stats.auth_failures.items()):
            self._add(self.auth_failures.labels(reason), ("auth", reason), n)
        for (method, result), n in list(stats.api_requests.items()):
            self._add(self.api_requests.labels(method, result), ("api", method, result), n)
        broker = node.broker
        self._add(self.broker_errors, "berr", getattr(broker, "errors", 0))
        self._add(self.broker_reconnects, "brec", getattr(broker, "reconnects", 0))
        self._add(self.resyncs, "resync", stats.resyncs)
        self._add(self.outage_resyncs, "oresync", stats.outage_resyncs)
        self._add(self.lane_resyncs, "laneresync", stats.lane_resyncs)
        bp = node.backpressure
        for source, n in list(bp.refused.items()):
            self._add(self.refused.labels(source), ("refused", source), n)
        self.backpressure.set(0 if bp.reason is None else 1)
        self._add(self.log_dropped, "logdrop", logs.dropped_total())
        outbox = node.outbox
        if outbox is not None:
            self._add(self.outbox_rows.labels("ok"), "obok", outbox.rows_done)
            self._add(self.outbox_rows.labels("failed"), "obfail", outbox.rows_failed)
            self._add(self.outbox_errors, "oberr", outbox.errors)
            self._add(self.outbox_reconnects, "obrec", outbox.reconnects)
            self.outbox_lag.set(outbox.lag_seconds)
            self.outbox_partitions.set(outbox.partitions_owned)
        self.queue_bytes.set(node.backlog_bytes())
        self.rss.set(resident_bytes())
        proxy = node.proxy
        if proxy is not None:
            for name, h in proxy.hooks.items():
                if not proxy.enabled(name):
                    continue
                h.latency.flush(self.proxy_latency.labels(name))
                self.proxy_in_flight.labels(name).set(h.in_flight)
                for kind, n in list(h.errors.items()):
                    self._add(self.proxy_errors.labels(name, kind), ("proxy", name, kind), n)
        support = node.support
        if support is not None:
            for ns, h in support.first_response.items():
                h.flush(self.first_response.labels(ns))
            for ns, n in list(support.waiting.items()):
                self.support_waiting.labels(ns).set(n)
            for result in ("ok", "failed"):
                self._add(self.support_escalations.labels(result), ("esc", result), support.escalations[result])
            self._add(self.support_errors, "superr", support.errors)
        stats.fanout.flush(self.fanout)
        stats.broker_publish.flush(self.broker_publish)
        health = broker.health()  # local state, kept by the broker's liveness checks: no round trip
        self.broker_up.set(1 if all(health.values()) else 0)
        for shard, up in health.items():
            self.broker_shard_up.labels(shard).set(1 if up else 0)
        for shard in self._shards - health.keys():  # a Cluster master that left the slot map
            self.broker_shard_up.remove(shard)
        self._shards = set(health)
        if ready is not None:
            self.ready.set(1 if ready else 0)

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition of this process, or of every worker in multiprocess mode."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if self.mp_dir:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.mp_dir)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def count_worker_restart() -> None:
    """The supervisor's one metric (it writes to the shared multiprocess directory)."""
    from prometheus_client import CollectorRegistry, Counter

    global _restarts
    if _restarts is None:
        _restarts = Counter("relay_worker_restarts", "workers the supervisor restarted",
                            registry=CollectorRegistry())
    _restarts.inc()


_restarts: Any = None

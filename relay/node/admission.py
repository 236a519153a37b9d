"""Admission: which client sockets this node takes. It counts accepted sockets (in all and per IP) against
max_connections and max_connections_per_ip, and keeps WebSocket handshakes still under way in a pool of their
own per IP (max_handshakes_per_ip, oldest evicted), apart from established connections, so half-open sockets
from a shared address cannot lock its real clients out. No I/O: the transports ask and tell."""

from __future__ import annotations

import resource
from collections import Counter
from typing import Any

from relay.config import Config
from relay.ops.stats import Stats

__all__ = ["Admission", "connection_cap"]


def connection_cap() -> int:
    """90 % of the open-file limit (after raising the soft limit to the hard one), so sockets never
    exhaust the descriptors relay needs for Redis, logs and its listeners."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return max(1, int(soft * 0.9) - 64)


class Admission:
    """The node's sockets: accepted and not yet closed (handshaking ones included), in all and per IP."""

    def __init__(self, cfg: Config, stats: Stats) -> None:
        self.cfg = cfg
        self.stats = stats
        self.num_connections = 0
        self.per_ip: Counter[str] = Counter()  # established connections per IP
        # WebSocket sockets still in their handshake, per IP, oldest first
        self.handshaking: dict[str, dict[Any, None]] = {}
        self.max_connections = cfg.max_connections or connection_cap()

    def admit(self, ip: str) -> str | None:
        """Count a new socket; the reason it must be refused ("full" or "ip"), or None."""
        if self.num_connections >= self.max_connections:
            self.stats.handshake_failure("server_full")
            return "full"
        limit = self.cfg.max_connections_per_ip
        if limit and self.per_ip[ip] >= limit:
            self.stats.handshake_failure("ip_limit")
            return "ip"
        self.num_connections += 1
        self.per_ip[ip] += 1
        return None

    def release(self, ip: str) -> None:
        """An admitted (or established) socket closed."""
        self.num_connections -= 1
        n = self.per_ip[ip] - 1
        if n > 0:
            self.per_ip[ip] = n
        else:
            del self.per_ip[ip]

    def admit_handshake(self, ip: str, proto: Any) -> str | None:
        """Count a new WebSocket socket that has not finished its handshake: the process-wide cap applies,
        the per-IP cap of established connections does not (yet). Past max_handshakes_per_ip pending from
        one address, its oldest pending handshake is closed (``proto.evict()``) to make room: a real client
        finishes within a round trip, so half-open sockets from a shared address (a NAT, an office) cannot
        keep it out. The reason to refuse ("full"), or None."""
        if self.num_connections >= self.max_connections:
            self.stats.handshake_failure("server_full")
            return "full"
        pending = self.handshaking.setdefault(ip, {})
        limit = self.cfg.max_handshakes_per_ip
        while limit and len(pending) >= limit:
            oldest = next(iter(pending))
            del pending[oldest]
            self.num_connections -= 1
            self.stats.handshake_failure("evicted")
            oldest.evict()
        pending[proto] = None
        self.num_connections += 1
        return None

    def handshake_done(self, ip: str, proto: Any, established: bool) -> str | None:
        """A pending handshake ended: completed (``established``: it now counts as a connection of its IP,
        unless the per-IP cap refuses it: "ip") or abandoned (the socket is released). "gone": it had
        been evicted."""
        pending = self.handshaking.get(ip)
        if pending is None or proto not in pending:
            return "gone"  # evicted meanwhile, and released then
        del pending[proto]
        if not pending:
            del self.handshaking[ip]
        if not established:
            self.num_connections -= 1
            return None
        limit = self.cfg.max_connections_per_ip
        if limit and self.per_ip[ip] >= limit:
            self.stats.handshake_failure("ip_limit")
            self.num_connections -= 1
            return "ip"
        self.per_ip[ip] += 1
        return None

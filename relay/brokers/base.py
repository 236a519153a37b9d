"""The narrow interfaces every broker implements (after centrifuge's Broker and PresenceManager).

A publication is a plain dict in the client protocol's shape
(``{"data": ..., "offset": 7, "info": {...}, "tags": {...}}``) so the node can
encode it for the wire without converting it again.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["StreamPosition", "HistoryResult", "PublishOptions", "BrokerEventHandler", "Broker",
           "PresenceManager", "UnrecoverablePosition", "BrokerUnavailable", "history_page"]


@dataclass(frozen=True, slots=True)
class StreamPosition:
    offset: int = 0
    epoch: str = ""


@dataclass(frozen=True, slots=True)
class HistoryResult:
    publications: list[dict]
    position: StreamPosition


@dataclass(frozen=True, slots=True)
class PublishOptions:
    history_size: int = 0
    history_ttl: float = 0.0
    history_meta_ttl: float = 86400.0
    info: dict | None = None
    tags: dict[str, str] | None = None
    idempotency_key: str | None = None
    idempotency_window: float = 300.0
    lane: int | None = None  # priority lane (relay.core.LANES) for this publication; None: its namespace's
    pace_ms: int | None = None  # spread its fan-out over this window (paced broadcast); None: its namespace's
    extra: dict[str, Any] = field(default_factory=dict)


def history_page(pubs: list[dict], limit: int, reverse: bool) -> list[dict]:
    """Publications (oldest first) as a history answer: newest first if ``reverse``, at most ``limit`` (> 0)."""
    if reverse:
        pubs.reverse()
    return pubs[:limit] if limit > 0 else pubs


class BrokerUnavailable(Exception):
    """The broker could not be reached: the operation did not happen (never a false OK)."""


class UnrecoverablePosition(Exception):
    """``since`` names another epoch, or a position the stream no longer holds."""


class BrokerEventHandler(Protocol):
    """What a broker calls back into (the node)."""

    def handle_publication(self, channel: str, pub: dict, epoch: str = "", lane: int | None = None,
                           pace_ms: int | None = None) -> None:
        """A publication for ``channel``; ``epoch`` is its stream's epoch when it has an offset; ``lane`` and
        ``pace_ms`` the publisher's own priority lane and pacing window, if it named them (None: the
        namespace's)."""

    def handle_join(self, channel: str, info: dict) -> None: ...

    def handle_leave(self, channel: str, info: dict) -> None: ...

    def handle_domain(self, domain: str, up: bool) -> None:
        """A failure domain of the broker (``Broker.domain``) went down or came back."""

    def handle_control(self, data: bytes) -> None:
        """A node command (``Broker.publish_control``), on every node."""


class Broker(abc.ABC):
    @abc.abstractmethod
    async def start(self, handler: BrokerEventHandler) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def subscribe(self, channel: str) -> None:
        """This node has local subscribers for ``channel`` (deliver its publications here)."""

    @abc.abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """The last local subscriber of ``channel`` left."""

    @abc.abstractmethod
    async def publish(self, channel: str, data: Any, opts: PublishOptions) -> StreamPosition:
        """Store (when history is on) and deliver a publication to every node with subscribers."""

    async def publish_many(self, items: list[tuple[str, Any, PublishOptions]]) -> list:
        """Publish in order; per item its StreamPosition or the BrokerUnavailable it met.
        Brokers with a round trip per call override this to make one for the batch."""
        out: list = []
        for channel, data, opts in items:
            try:
                out.append(await self.publish(channel, data, opts))
            except BrokerUnavailable as e:
                out.append(e)
        return out

    @abc.abstractmethod
    async def publish_join(self, channel: str, info: dict) -> None: ...

    @abc.abstractmethod
    async def publish_leave(self, channel: str, info: dict) -> None: ...

    @abc.abstractmethod
    async def publish_control(self, data: bytes) -> None:
        """Deliver ``data`` to ``handle_control`` on every node, this one included: the server API's commands
        that act on a user's connections wherever they are (disconnect, unsubscribe, subscribe, refresh)."""

    @abc.abstractmethod
    async def history(self, channel: str, *, since: StreamPosition | None, limit: int, reverse: bool,
                      meta_ttl: float) -> HistoryResult:
        """Publications after ``since`` (all kept, if None); ``limit`` < 0: no limit, 0: position only.

        Raises ``UnrecoverablePosition`` when ``since`` names another epoch (an empty epoch is any epoch:
        the SDKs send none when the app's getState holds only an offset)."""

    @abc.abstractmethod
    async def remove_history(self, channel: str) -> None: ...

    #: publications can be lost between the broker and this node (the node checks stream positions)
    lossy_delivery = False

    async def ping(self) -> bool:
        """The broker is reachable (a round trip; readiness and metrics read ``health()`` instead)."""
        return True

    def domain(self, channel: str) -> str:
        """The failure domain ``channel`` lives in (a Redis shard, a Cluster master): channels of one
        domain fail together, and only together."""
        return ""

    def health(self) -> dict[str, bool]:
        """Each failure domain's state as the broker's own checks last saw it: local, never waits."""
        return {}


class PresenceManager(abc.ABC):
    #: seconds between refreshes of live connections' presence (None: entries never expire)
    refresh_interval: float | None = None

    @abc.abstractmethod
    async def add_presence(self, channel: str, client_id: str, info: dict) -> None: ...

    @abc.abstractmethod
    async def remove_presence(self, channel: str, client_id: str) -> None: ...

    @abc.abstractmethod
    async def presence(self, channel: str) -> dict[str, dict]: ...

    @abc.abstractmethod
    async def presence_stats(self, channel: str) -> tuple[int, int]:
        """(number of clients, number of distinct users)."""

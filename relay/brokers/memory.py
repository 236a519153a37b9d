"""The embedded broker: history, presence and delivery inside one process.

History per channel is a stream: publications with increasing offsets, capped by
size and by age, and an epoch that changes when the stream is lost (created
anew after its metadata expired, or removed), so a client holding an old
position learns it cannot recover instead of silently missing publications.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from typing import Any

from relay.brokers.base import (Broker, BrokerEventHandler, HistoryResult, PresenceManager, PublishOptions,
                                StreamPosition, UnrecoverablePosition, history_page)

__all__ = ["MemoryBroker", "MemoryPresenceManager"]


class _Stream:
    __slots__ = ("epoch", "top", "items", "meta_expires")

    def __init__(self) -> None:
        self.epoch = secrets.token_hex(4)
        self.top = 0
        self.items: deque[tuple[int, float, dict]] = deque()  # (offset, expires_at, pub)
        self.meta_expires = 0.0

    def trim(self, now: float) -> None:
        items = self.items
        while items and items[0][1] <= now:
            items.popleft()


class MemoryBroker(Broker):
    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._handler: BrokerEventHandler | None = None
        self._streams: dict[str, _Stream] = {}
        self._idempotent: dict[tuple[str, str], tuple[float, StreamPosition]] = {}
        self._last_sweep = 0.0

    async def start(self, handler: BrokerEventHandler) -> None:
        self._handler = handler

    async def close(self) -> None:
        self._handler = None

    async def subscribe(self, channel: str) -> None:
        return None

    async def publish_control(self, data: bytes) -> None:
        if self._handler is not None:  # one node: this one
            self._handler.handle_control(data)

    async def unsubscribe(self, channel: str) -> None:
        return None

    def _stream(self, channel: str, now: float, create: bool) -> _Stream | None:
        s = self._streams.get(channel)
        if s is not None and s.meta_expires <= now:
            del self._streams[channel]
            s = None
        if s is None and create:
            s = self._streams[channel] = _Stream()
        return s

    def _sweep(self, now: float) -> None:
        """Drop expired streams and idempotency entries (at most once a second)."""
        if now - self._last_sweep < 1.0:
            return
        self._last_sweep = now
        for ch in [c for c, s in self._streams.items() if s.meta_expires <= now]:
            del self._streams[ch]
        for k in [k for k, (exp, _) in self._idempotent.items() if exp <= now]:
            del self._idempotent[k]

    async def publish(self, channel: str, data: Any, opts: PublishOptions) -> StreamPosition:
        now = self._clock()
        self._sweep(now)
        if opts.idempotency_key:
            hit = self._idempotent.get((channel, opts.idempotency_key))
            if hit is not None and hit[0] > now:
                return hit[1]
        pub: dict = {"data": data}
        if opts.info is not None:
            pub["info"] = opts.info
        if opts.tags:
            pub["tags"] = opts.tags
        pos = StreamPosition()
        epoch = ""
        if opts.history_size > 0:
            s = self._stream(channel, now, True)
            s.top += 1
            pub["offset"] = s.top
            s.items.append((s.top, now + opts.history_ttl, pub))
            while len(s.items) > opts.history_size:
                s.items.popleft()
            s.meta_expires = max(s.meta_expires, now + max(opts.history_meta_ttl, opts.history_ttl))
            pos = StreamPosition(s.top, s.epoch)
            epoch = s.epoch
        if opts.idempotency_key:
            self._idempotent[(channel, opts.idempotency_key)] = (now + opts.idempotency_window, pos)
        if self._handler is not None:
            self._handler.handle_publication(channel, pub, epoch, opts.lane, opts.pace_ms)
        return pos

    async def publish_join(self, channel: str, info: dict) -> None:
        if self._handler is not None:
            self._handler.handle_join(channel, info)

    async def publish_leave(self, channel: str, info: dict) -> None:
        if self._handler is not None:
            self._handler.handle_leave(channel, info)

    async def history(self, channel: str, *, since: StreamPosition | None, limit: int, reverse: bool,
                      meta_ttl: float) -> HistoryResult:
        now = self._clock()
        s = self._stream(channel, now, True)
        if s.meta_expires < now + meta_ttl:
            s.meta_expires = now + meta_ttl
        s.trim(now)
        pos = StreamPosition(s.top, s.epoch)
        if since is not None and since.epoch and since.epoch != s.epoch:  # "": any epoch
            raise UnrecoverablePosition(channel)
        if limit == 0:
            return HistoryResult([], pos)
        items = s.items
        if since is not None:
            pubs = [p for off, _, p in items if off > since.offset]
        else:
            pubs = [p for _, _, p in items]
        return HistoryResult(history_page(pubs, limit, reverse), pos)

    async def remove_history(self, channel: str) -> None:
        s = self._streams.get(channel)
        if s is not None:
            s.items.clear()


class MemoryPresenceManager(PresenceManager):
    def __init__(self) -> None:
        self._channels: dict[str, dict[str, dict]] = {}

    async def add_presence(self, channel: str, client_id: str, info: dict) -> None:
        self._channels.setdefault(channel, {})[client_id] = info

    async def remove_presence(self, channel: str, client_id: str) -> None:
        clients = self._channels.get(channel)
        if clients is not None:
            clients.pop(client_id, None)
            if not clients:
                del self._channels[channel]

    async def presence(self, channel: str) -> dict[str, dict]:
        return dict(self._channels.get(channel, {}))

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        clients = self._channels.get(channel, {})
        return len(clients), len({i.get("user", "") for i in clients.values()})

"""One pub/sub connection to one Redis instance, and its reader (a Redis Cluster's sharded pub/sub is
relay.brokers.redis_sharded's). The broker (relay.brokers.redis) keeps a few per instance and picks one per
channel; its liveness watch (relay.brokers.health.watch) pings each and kills one that went silent."""

from __future__ import annotations

import asyncio
import logging
import random
import redis.asyncio as aioredis

from relay.brokers.base import BrokerUnavailable
from relay.brokers.health import BACKOFF_MAX, BACKOFF_MIN, PING_TOKEN, LinkEvents, Liveness

__all__ = ["PubSubConn"]

log = logging.getLogger("relay.redis")


class PubSubConn:
    """One pub/sub connection to one Redis instance and its reader task. (A Redis Cluster's sharded pub/sub
    is relay.brokers.redis_sharded's.)

    ``wanted`` is the set of channels this connection should carry; SUBSCRIBE and UNSUBSCRIBE go out
    batched per loop iteration, one batch at a time and only while connected, each name checked against
    ``wanted`` as it leaves, so a late UNSUBSCRIBE never undoes a newer SUBSCRIBE. After a reconnect
    (redis-py subscribes again to what it knew) the server's set is brought back to ``wanted``."""

    def __init__(self, client: aioredis.Redis, control: str, events: LinkEvents, ping_timeout: float) -> None:
        """``control``: a channel of this connection's own, subscribed first, so it exists before any channel."""
        self.client = client
        self.pubsub = client.pubsub()
        self.control = control
        self.events = events
        self.ping_timeout = ping_timeout
        self.task: asyncio.Task | None = None
        self.wanted: set[str] = set()
        self.confirmed: set[bytes] = set()  # what the server has confirmed on the current connection
        self._to_sub: set[str] = set()
        self._to_unsub: set[str] = set()
        self._waiting: dict[bytes, list[asyncio.Future]] = {}
        self._flush_scheduled = False
        self._flush_lock = asyncio.Lock()
        self.liveness = Liveness()  # the PING the broker's watch sent on this connection, until its pong
        self.connected = False
        self.killed = ""  # why the watch dropped this connection, until it is back

    async def start(self) -> None:
        await self.pubsub.subscribe(self.control)  # the connection exists before any channel
        self.connected = True
        self.task = asyncio.get_running_loop().create_task(self._read())

    @property
    def up(self) -> bool:
        return self.connected

    def send_ping(self, now: float) -> None:
        """A liveness PING on this connection: its pong comes back in order with the messages."""
        self.liveness.sent = now
        self.events.spawn(self._ping())

    async def _ping(self) -> None:
        try:
            await asyncio.wait_for(self.pubsub.ping(PING_TOKEN), self.ping_timeout)
        except Exception:
            pass  # an unanswered PING is what the watch looks for; a failed write, the reader sees

    def kill(self, why: str) -> None:
        """The connection stopped answering (a silent network cut): drop it, so the reader reconnects and
        subscribes again, and fail the subscribes waiting on it now rather than at their timeout."""
        self.connected = False
        self.confirmed.clear()
        self.killed = why
        self.liveness.reset()
        self._fail_waiting(BrokerUnavailable(why))
        conn = self.pubsub.connection
        if conn is not None:
            self.events.spawn(conn.disconnect())

    def _fail_waiting(self, error: Exception) -> None:
        waiting, self._waiting = self._waiting, {}
        for futs in waiting.values():
            for fut in futs:
                if not fut.done():
                    fut.set_exception(error)

    async def close(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass
        await self.pubsub.aclose()

    def subscribe(self, name: str) -> asyncio.Future:
        """The future resolves when Redis confirms the SUBSCRIBE (or fails with BrokerUnavailable)."""
        fut = asyncio.get_running_loop().create_future()
        self.wanted.add(name)
        self._to_unsub.discard(name)
        if not self.connected:  # the reconnect subscribes to everything wanted; this caller learns now
            fut.set_exception(BrokerUnavailable(self.killed or "redis pub/sub connection down"))
            return fut
        self._waiting.setdefault(name.encode(), []).append(fut)
        self._to_sub.add(name)
        self._schedule()
        return fut

    def unsubscribe(self, name: str) -> None:
        self.wanted.discard(name)
        self._to_sub.discard(name)
        self._to_unsub.add(name)
        self._schedule()

    def _schedule(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(lambda: self.events.spawn(self._flush()))

    async def _flush(self) -> None:
        async with self._flush_lock:  # one batch on the wire at a time: they reach Redis in order
            self._flush_scheduled = False
            if not self.connected:
                return  # the reconnect brings the server's set back to self.wanted (_reconcile)
            subs = [n for n in self._to_sub if n in self.wanted]
            unsubs = [n for n in self._to_unsub if n not in self.wanted]
            self._to_sub, self._to_unsub = set(), set()
            try:
                if subs:
                    await self.pubsub.subscribe(*subs)  # one SUBSCRIBE for the whole batch
                if unsubs:
                    await self.pubsub.unsubscribe(*unsubs)
            except Exception as e:  # connection down: the waiters learn it now, not at a timeout
                for name in subs:
                    for fut in self._waiting.pop(name.encode(), []):
                        if not fut.done():
                            fut.set_exception(BrokerUnavailable(str(e)))

    def _reconcile(self) -> None:
        """Reconnected: redis-py subscribed again to the channels it knew, those being left included."""
        known = {self.pubsub.encoder.decode(c, force=True) for c in self.pubsub.channels}
        known.discard(self.control)
        self._to_unsub |= known - self.wanted
        self._to_sub |= self.wanted - known
        if self._to_sub or self._to_unsub:
            self._schedule()

    async def _read(self) -> None:
        failures = 0
        backoff = BACKOFF_MIN
        while True:
            try:
                msg = await self.pubsub.get_message(timeout=1.0)  # reconnects (and resubscribes) when down
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.connected = False
                self.confirmed.clear()
                self.liveness.reset()
                self._fail_waiting(BrokerUnavailable(str(e)))
                self.events.on_error()
                failures += 1
                if failures == 1:  # once per outage: the broker's watch logs the state changes
                    log.warning("redis pub/sub connection failed (%s); reconnecting", self.killed or e,
                                extra={"event": "broker_error"})
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            if failures:
                log.info("redis pub/sub reconnected after %d failed attempts", failures,
                         extra={"event": "broker_reconnected"})
                failures, backoff = 0, BACKOFF_MIN
                self.events.on_reconnect()
            if not self.connected:  # back (redis-py reconnected in get_message, or after failures)
                self.connected = True
                self.killed = ""
                self._reconcile()
            if msg is not None:
                self._handle(msg)

    def _handle(self, msg: dict) -> None:
        kind = msg["type"]
        if isinstance(kind, bytes):
            kind = kind.decode()
        if kind == "message":
            self.events.on_message(msg["channel"], msg["data"])
        elif kind == "subscribe":
            self.confirmed.add(msg["channel"])
            for fut in self._waiting.pop(msg["channel"], []):
                if not fut.done():
                    fut.set_result(None)
        elif kind == "unsubscribe":
            self.confirmed.discard(msg["channel"])
        elif kind == "pong" and msg["data"] == PING_TOKEN:
            self.liveness.pong()

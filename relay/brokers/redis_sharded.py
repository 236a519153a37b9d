"""Sharded pub/sub on a Redis Cluster: one connection per master, owned by relay.

redis-py's ``ClusterPubSub`` changed its locking in every minor release (none on
``RedisCluster`` before 8.0; from 8.2 a bounded poll holds the node's I/O lock for
its whole timeout, so an SSUBSCRIBE or SUNSUBSCRIBE waits behind every idle
read). relay needs the opposite: a reader that blocks on its socket without
holding up the commands that change its subscriptions. So this module keeps one
plain ``redis.asyncio.Connection`` per master and does the routing itself:

* a channel goes to the master that owns its slot (``RedisCluster.get_node_from_key``);
* SSUBSCRIBE / SUNSUBSCRIBE of one loop iteration leave in one write, one command
  per slot (a sharded command may not span slots);
* a reader per link blocks on its socket; nothing it does holds a lock;
* the slot moved (the server's own ``sunsubscribe``, or ``MOVED`` in answer to an
  SSUBSCRIBE): the topology is refreshed and the channel follows its slot;
* the link failed: its waiters learn it at once and it reconnects with capped
  exponential backoff and jitter, then subscribes again to what it still carries;
  while the master stays unreachable, each failed attempt refreshes the topology,
  and the channels whose slots a failover gave to another master move there.

Publications that fly by while a channel is between masters are lost to pub/sub
(it is at-most-once); the node's position checks find the gap and recover it from
history, as after any broker reconnect.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable
from typing import Any

from redis.asyncio.connection import Connection
from redis.exceptions import AskError, ResponseError, TryAgainError

from relay.brokers.base import BrokerUnavailable
from relay.brokers.health import BACKOFF_MAX, BACKOFF_MIN, PING_TOKEN, LinkEvents, Liveness

__all__ = ["ShardedSubscriber"]

log = logging.getLogger("relay.redis")

REROUTE_RETRY = 0.1  # a channel whose slot the topology still places here is tried again after this
CONNECT_TIMEOUT = 5.0  # connect and handshake of a link, so a black-holed master does not hold it forever


class _Link:
    """One connection to one master, carrying the sharded subscriptions of the slots it owns."""

    def __init__(self, sub: ShardedSubscriber, name: str, host: str, port: int) -> None:
        self.sub = sub
        self.name = name
        self.host, self.port = host, port
        self.channels: dict[bytes, int] = {}  # wanted here: channel -> slot
        self._waiting: dict[bytes, list[asyncio.Future]] = {}
        self._to_sub: set[bytes] = set()
        self._to_unsub: dict[bytes, int] = {}
        self._unsub_sent: dict[bytes, int] = {}  # SUNSUBSCRIBEs not yet answered, so ours are told from the server's
        self._flush_scheduled = False
        self._write_lock = asyncio.Lock()
        self.conn: Connection | None = None
        self.up = False
        self.closed = False
        self.liveness = Liveness()  # the broker's liveness PING on this link, until its pong
        self.task = asyncio.get_running_loop().create_task(self._run())

    # subscriptions -----------------------------------------------------------------------------
    def add(self, channel: bytes, slot: int, waiters: Iterable[asyncio.Future] = ()) -> None:
        self.channels[channel] = slot
        self._waiting.setdefault(channel, []).extend(waiters)
        self._to_unsub.pop(channel, None)
        self._to_sub.add(channel)
        self._schedule()

    def remove(self, channel: bytes) -> None:
        slot = self.channels.pop(channel, None)
        self._to_sub.discard(channel)
        self._settle(channel, None)  # nobody here needs it any more: a subscribe still waiting is done
        if slot is not None:
            self._to_unsub[channel] = slot
            self._schedule()

    def confirmed(self, channel: bytes) -> bool:
        """The master confirmed ``channel``'s SSUBSCRIBE on this connection (none of it is still waiting)."""
        return channel in self.channels and channel not in self._waiting and channel not in self._to_sub

    def forget(self, channel: bytes) -> list[asyncio.Future]:
        """Drop ``channel`` without telling the server (it already dropped it); returns its waiters."""
        self.channels.pop(channel, None)
        self._to_sub.discard(channel)
        return self._waiting.pop(channel, [])

    def _settle(self, channel: bytes, error: Exception | None) -> None:
        for fut in self._waiting.pop(channel, []):
            if not fut.done():
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(error)

    def _schedule(self) -> None:
        if not self._flush_scheduled and self.up:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.sub.events.spawn, self._flush())

    async def _flush(self) -> None:
        self._flush_scheduled = False
        if not self.up or self.conn is None:
            return  # the (re)connect subscribes to everything in self.channels
        subs, self._to_sub = self._to_sub, set()
        unsubs, self._to_unsub = self._to_unsub, {}
        commands = _by_slot("SSUBSCRIBE", {c: self.channels[c] for c in subs if c in self.channels})
        commands += _by_slot("SUNSUBSCRIBE", unsubs)
        for c in unsubs:
            self._unsub_sent[c] = self._unsub_sent.get(c, 0) + 1
        await self._send(commands)

    async def _send(self, commands: list[tuple]) -> None:
        if not commands:
            return
        conn = self.conn
        try:
            async with self._write_lock:
                await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
        except Exception as e:  # the reader sees the same failure and reconnects
            log.debug("redis sharded pub/sub write to %s failed: %s", self.name, e)
            await conn.disconnect()

    def send_ping(self, now: float) -> None:
        """A liveness PING: its pong comes back in order with the messages (relay.brokers.health.watch)."""
        self.liveness.sent = now
        self.sub.events.spawn(self._send([("PING", PING_TOKEN)]))

    def kill(self, why: str = "") -> None:
        """The link stopped answering (a silent network cut): drop it; the reader reconnects."""
        self.liveness.reset()
        conn = self.conn
        if conn is not None:
            self.sub.events.spawn(conn.disconnect())

    # the connection ------------------------------------------------------------------------------
    async def _run(self) -> None:
        backoff = BACKOFF_MIN
        failures = 0
        while not self.closed:
            # socket_timeout=None: the reader blocks on its socket for as long as the channels are quiet
            conn = Connection(host=self.host, port=self.port, socket_timeout=None, socket_connect_timeout=2.0,
                              socket_keepalive=True, **self.sub.connection_kwargs)
            try:
                await asyncio.wait_for(conn.connect(), CONNECT_TIMEOUT)
                self.conn = conn
                self._unsub_sent.clear()
                self._to_sub.clear()
                self._to_unsub.clear()
                self.up = True
                await self._send(_by_slot("SSUBSCRIBE", self.channels))
                if failures:
                    self.sub.events.on_reconnect()
                    log.info("redis sharded pub/sub to %s reconnected after %d failed attempts", self.name,
                             failures, extra={"event": "broker_reconnected"})
                failures, backoff = 0, BACKOFF_MIN
                await self._read(conn)
            except asyncio.CancelledError:
                await conn.disconnect()
                raise
            except Exception as e:
                self.up = False
                self.conn = None
                self.liveness.reset()
                await conn.disconnect()
                if self.closed:
                    return
                failures += 1
                self.sub.events.on_error()
                if failures == 1:
                    log.warning("redis sharded pub/sub to %s failed (%s); reconnecting", self.name, e,
                                extra={"event": "broker_error"})
                error = BrokerUnavailable(f"redis cluster node {self.name}: {e}")
                for channel in list(self._waiting):
                    self._settle(channel, error)
                if failures > 1:  # the master stays unreachable: a failover may have moved its slots elsewhere
                    await self.sub.relocate(self, list(self.channels))
                    if not self.channels and self.sub.retire(self):
                        return
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _read(self, conn: Connection) -> None:
        while True:
            try:
                reply = await conn.read_response(push_request=True)  # pub/sub messages are the replies here
            except (AskError, TryAgainError) as e:  # MOVED is an AskError: the slot is served elsewhere
                self._rejected(getattr(e, "slot_id", None))
                continue
            except ResponseError as e:  # CLUSTERDOWN and the like: the subscribes in flight are retried
                log.warning("redis sharded pub/sub on %s: %s", self.name, e, extra={"event": "broker_error"})
                self.sub.events.on_error()
                self._rejected(None)
                continue
            self._handle(reply)

    def _handle(self, reply: Any) -> None:
        if reply == PING_TOKEN or (isinstance(reply, list) and reply[:1] == [b"pong"]):
            self.liveness.pong()  # subscribed: [b"pong", token]; not yet: the token itself
            return
        if not isinstance(reply, list) or len(reply) < 3:
            return
        kind, channel = reply[0], reply[1]
        if kind == b"smessage":
            if channel in self.channels:  # not one already left (its SUNSUBSCRIBE crossed this message)
                self.sub.events.on_message(channel, reply[2])
        elif kind == b"ssubscribe":
            for fut in self._waiting.pop(channel, []):
                if not fut.done():
                    fut.set_result(None)
        elif kind == b"sunsubscribe":
            sent = self._unsub_sent.get(channel, 0)
            if sent:
                if sent == 1:
                    del self._unsub_sent[channel]
                else:
                    self._unsub_sent[channel] = sent - 1
            elif channel in self.channels:  # the server's own: the slot left this master
                self.sub.events.spawn(self.sub.relocate(self, [channel]))

    def _rejected(self, slot: int | None) -> None:
        """An SSUBSCRIBE was refused; the channels of ``slot`` (all unconfirmed ones if unknown) move on."""
        channels = [c for c, s in self.channels.items() if (slot is None or s == slot) and c in self._waiting]
        if slot is not None and not channels:
            channels = [c for c, s in self.channels.items() if s == slot]
        if channels:
            self.sub.events.spawn(self.sub.relocate(self, channels))

    async def close(self) -> None:
        self.closed = True
        self.task.cancel()
        try:
            await self.task
        except (asyncio.CancelledError, Exception):
            pass
        for channel in list(self._waiting):
            self._settle(channel, BrokerUnavailable("the broker is closing"))


def _by_slot(command: str, channels: dict[bytes, int]) -> list[tuple]:
    """One ``command`` per slot: a sharded (un)subscribe may not name channels of two slots."""
    slots: dict[int, list[bytes]] = {}
    for channel, slot in channels.items():
        slots.setdefault(slot, []).append(channel)
    return [(command, *chans) for chans in slots.values()]


class ShardedSubscriber:
    """The sharded subscriptions of one node on one Redis Cluster, each on its slot's master.

    ``cluster`` is the ``RedisCluster`` client the broker publishes with: its slot map
    places channels, and is refreshed when a channel turns out to live elsewhere."""

    def __init__(self, cluster, events: LinkEvents, connection_kwargs: dict | None = None) -> None:
        self.cluster = cluster
        self.events = events
        self.connection_kwargs = connection_kwargs or {}
        self.links: dict[str, _Link] = {}
        self.owner: dict[bytes, _Link] = {}
        self._refresh: asyncio.Task | None = None

    def _link_for(self, channel: bytes) -> tuple[_Link, int]:
        node = self.cluster.get_node_from_key(channel)
        link = self.links.get(node.name)
        if link is None or link.closed:
            link = self.links[node.name] = _Link(self, node.name, node.host, node.port)
        return link, self.cluster.keyslot(channel)

    def subscribe(self, channel: str) -> asyncio.Future:
        """SSUBSCRIBE ``channel`` on its master; the future resolves when the master confirms it."""
        key = channel.encode()
        fut = asyncio.get_running_loop().create_future()
        current = self.owner.get(key)
        try:
            link, slot = self._link_for(key)
        except Exception as e:  # no slot map (the cluster is down): the caller learns it now
            fut.set_exception(BrokerUnavailable(f"redis cluster: {e}"))
            return fut
        if current is not None and current is not link:
            current.remove(key)
        self.owner[key] = link
        link.add(key, slot, [fut])
        return fut

    def unsubscribe(self, channel: str) -> None:
        key = channel.encode()
        link = self.owner.pop(key, None)
        if link is not None:
            link.remove(key)

    async def relocate(self, link: _Link, channels: list[bytes]) -> None:
        """``channels`` are not (or no longer) served by ``link``'s master: refresh the slot map and move
        each to the master that owns its slot now. One still placed on ``link`` is tried there again."""
        if not channels:
            return
        await self.refresh_topology()
        retry: list[bytes] = []
        for key in channels:
            if self.owner.get(key) is not link or key not in link.channels:
                continue  # unsubscribed or moved meanwhile
            try:
                target, slot = self._link_for(key)
            except Exception:
                retry.append(key)
                continue
            if target is link:
                retry.append(key)
                continue
            waiters = link.forget(key)
            self.owner[key] = target
            target.add(key, slot, waiters)
        if retry and link.up:
            await asyncio.sleep(REROUTE_RETRY)
            for key in retry:
                if self.owner.get(key) is link and key in link.channels:
                    link.add(key, link.channels[key])

    def retire(self, link: _Link) -> bool:
        """Forget a failed link that carries nothing and whose node left the slot map."""
        try:
            in_map = any(n.name == link.name for n in self.cluster.get_nodes())
        except Exception:
            in_map = True
        if in_map or link.channels:
            return False
        link.closed = True
        if self.links.get(link.name) is link:
            del self.links[link.name]
        return True

    async def refresh_topology(self) -> None:
        """One slot-map refresh at a time; callers that arrive meanwhile share it."""
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.get_running_loop().create_task(self._reinitialize())
        try:
            await asyncio.shield(self._refresh)
        except Exception as e:
            log.debug("redis cluster slot map refresh failed: %s", e)

    async def _reinitialize(self) -> None:
        await self.cluster.nodes_manager.initialize()

    async def close(self) -> None:
        links, self.links = list(self.links.values()), {}
        self.owner.clear()
        for link in links:
            await link.close()
        if self._refresh is not None:
            self._refresh.cancel()

"""The Redis broker: publications, history and presence in Redis, so many nodes act as one.

Layout per channel ``ch`` (``{ch}`` is a hash tag: a channel's keys and its
pub/sub all live on one Redis Cluster slot):

* ``<prefix>:meta:{ch}`` hash: ``s`` top offset, ``e`` epoch; expires after
  ``history_meta_ttl`` without publications. Lost (expired, Redis restarted
  empty) means a new epoch, so no client is ever told it recovered a gap.
* ``<prefix>:hist:{ch}`` list of ``<offset>:<expire ms>:<msgpack pub>``, oldest
  first, capped at ``history_size``; expired entries are skipped on read and the
  key expires with the newest one.
* ``<prefix>:idem:{ch}:<key>`` the stream position of an idempotent publish.
* pub/sub channel ``<prefix>:ps:{ch}``; messages are ``p<offset>:<epoch>:<msgpack pub>``,
  ``j<msgpack info>`` (join) or ``l<msgpack info>`` (leave).
* ``<prefix>:pres:{ch}`` and ``<prefix>:pres-exp:{ch}``: presence (relay.brokers.redis_presence).

Publishing runs one Lua script: the history append, the offset increment and the
PUBLISH are applied together or not at all.

Channels are spread over several independent Redis instances (``redis_urls``)
with jump consistent hashing, and over several pub/sub connections per instance.
A node subscribes in Redis only to channels with local subscribers; subscribe and
unsubscribe commands are batched per loop iteration, and an unsubscribe waits
``redis_unsubscribe_delay`` so a channel that flaps is not re-subscribed each time.
On a Redis Cluster, pub/sub is sharded (SSUBSCRIBE on the master of the channel's
slot, one connection per master: ``relay.brokers.redis_sharded``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import zlib
from collections.abc import Iterable
from functools import partial
from typing import Any

import msgpack
import redis.asyncio as aioredis

from relay.brokers.base import (Broker, BrokerEventHandler, BrokerUnavailable, HistoryResult,
                                PublishOptions, StreamPosition, UnrecoverablePosition, history_page)
from relay.brokers.health import Health, LinkEvents, Strikes, check_link, command_ping, watch
from relay.brokers.redis_pubsub import PubSubConn
from relay.brokers.redis_sharded import ShardedSubscriber

__all__ = ["RedisBroker", "RedisShards", "jump_hash", "BrokerUnavailable"]  # presence: relay.brokers.redis_presence

log = logging.getLogger("relay.redis")

_packb = msgpack.Packer(use_bin_type=True).pack

#: the pub/sub channel of node commands (Broker.publish_control): a relay channel no client can name (a control
#: character), so it is subscribed, sharded, resubscribed and watched like any other; messages "c<data>"
CONTROL_CHANNEL = "\x00control"

def jump_hash(key: int, buckets: int) -> int:
    """Jump consistent hash (Lamping & Veach 2014): adding a bucket moves only ~1/n of the keys."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def _host_port(url: str) -> tuple[str, int]:
    from urllib.parse import urlparse

    u = urlparse(url)
    return u.hostname or "127.0.0.1", u.port or 6379


def _domain_name(url: str) -> str:
    """A shard's name in logs, metrics and /healthz: host:port (a unix socket: its path)."""
    from urllib.parse import urlparse

    u = urlparse(url)
    if u.scheme == "unix":
        return u.path
    host, port = _host_port(url)
    return f"{host}:{port}"


def _key_hash(channel: str) -> int:
    data = channel.encode()
    return (zlib.crc32(data) << 32) | zlib.adler32(data)


def _kind(opts: PublishOptions) -> str:
    """The pub/sub message kind of a publication: "p", or "P<lane>,<pace_ms>;" when the publisher named
    its priority lane or pacing window (nodes then apply those, not the namespace's)."""
    if opts.lane is None and opts.pace_ms is None:
        return "p"
    return f"P{'-' if opts.lane is None else opts.lane},{'-' if opts.pace_ms is None else opts.pace_ms};"


PUBLISH_LUA = """
local meta, hist, idem = KEYS[1], KEYS[2], KEYS[3]
local body, size, ttl_ms, meta_ttl_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local expire_ms, new_epoch, channel, idem_ms = ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8])
local publish_cmd = ARGV[9]  -- "publish", or "spublish" (sharded pub/sub) on a Redis Cluster
if ARGV[10] ~= "1" then idem = "" end  -- KEYS[3] is always given: one slot for all keys on a cluster
local kind = ARGV[11]  -- "p", or "P<lane>,<pace_ms>;" when the publisher named either ("-": not named)
if idem ~= "" then
  local seen = redis.call("get", idem)
  if seen then return {seen, 1} end
end
local offset, epoch = 0, ""
if size > 0 then
  epoch = redis.call("hget", meta, "e")
  if not epoch then
    epoch = new_epoch
    redis.call("hset", meta, "e", epoch)
  end
  offset = redis.call("hincrby", meta, "s", 1)
  redis.call("pexpire", meta, meta_ttl_ms)
  redis.call("rpush", hist, offset .. ":" .. expire_ms .. ":" .. body)
  redis.call("ltrim", hist, -size, -1)
  redis.call("pexpire", hist, ttl_ms)
end
redis.call(publish_cmd, channel, kind .. offset .. ":" .. epoch .. ":" .. body)
local result = offset .. ":" .. epoch
if idem ~= "" then redis.call("set", idem, result, "px", idem_ms) end
return {result, 0}
"""

HISTORY_LUA = """
local meta, hist = KEYS[1], KEYS[2]
local new_epoch, meta_ttl_ms, want = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local epoch = redis.call("hget", meta, "e")
if not epoch then
  epoch = new_epoch
  redis.call("hset", meta, "e", epoch)
end
if redis.call("pttl", meta) < meta_ttl_ms then redis.call("pexpire", meta, meta_ttl_ms) end
local top = redis.call("hget", meta, "s") or "0"
local items = {}
if want == "1" then items = redis.call("lrange", hist, 0, -1) end
return {top, epoch, items}
"""


class RedisShards:
    """The Redis instances and their pub/sub connections; picks both by channel hash.

    With ``cluster`` the URLs are seed nodes of one Redis Cluster: it is a single
    "shard" here, and the cluster itself spreads channels over its masters by slot
    (redis-py follows MOVED/ASK and topology changes for commands; the sharded
    subscriptions follow their slots in relay.brokers.redis_sharded)."""

    def __init__(self, urls: list[str], pubsub_per_instance: int, cluster: bool = False) -> None:
        self.cluster = cluster
        if cluster:
            from redis.asyncio.cluster import ClusterNode, RedisCluster

            seeds = [ClusterNode(*_host_port(u)) for u in urls]
            self.clients = [RedisCluster(startup_nodes=seeds, decode_responses=False, socket_timeout=5.0,
                                         socket_connect_timeout=2.0)]
            pubsub_per_instance = 0  # sharded pub/sub: one connection per master (relay.brokers.redis_sharded)
        else:
            # a command gets an error after socket_timeout instead of hanging on a paused Redis
            self.clients = [aioredis.Redis.from_url(u, decode_responses=False, health_check_interval=10,
                                                    socket_timeout=5.0, socket_connect_timeout=2.0)
                            for u in urls]
        self.pubsub_per_instance = pubsub_per_instance
        self.pubsubs: list[list[PubSubConn]] = []
        self.names = [_domain_name(u) for u in urls]  # each instance's failure domain (not for a cluster)

    def index(self, channel: str) -> int:
        return jump_hash(_key_hash(channel), len(self.clients))

    def client(self, channel: str) -> aioredis.Redis:
        return self.clients[self.index(channel)]

    def pubsub(self, channel: str) -> PubSubConn:
        conns = self.pubsubs[self.index(channel)]
        return conns[zlib.crc32(channel.encode()[::-1]) % len(conns)]


class RedisBroker(Broker):
    lossy_delivery = True  # pub/sub is at-most-once: a dropped link or a restart loses messages

    def __init__(self, urls: list[str], *, prefix: str = "relay", pubsub_per_instance: int = 2,
                 unsubscribe_delay: float = 1.0, node_name: str = "", timeout: float = 5.0,
                 cluster: bool = False, ping_interval: float = 0.5, ping_timeout: float = 0.8) -> None:
        self.prefix = prefix
        self.timeout = timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.health_state = Health(self._health_changed)
        self._watches: list[asyncio.Task] = []
        self.cluster = cluster
        self._publish_cmd = "spublish" if cluster else "publish"
        self.shards = RedisShards(urls, pubsub_per_instance, cluster)
        self.unsubscribe_delay = unsubscribe_delay
        self.sharded: ShardedSubscriber | None = None  # cluster mode's pub/sub
        self.node_name = node_name or secrets.token_hex(4)
        self._handler: BrokerEventHandler | None = None
        self._scripts: list[dict[str, Any]] = []
        self._unsub_timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task] = set()
        self.errors = 0  # operations that failed (relay_broker_errors_total)
        self.reconnects = 0  # pub/sub links re-established (relay_broker_reconnects_total)
        self.messages_in = 0

    # keys ------------------------------------------------------------------------------------------
    def _meta(self, ch: str) -> str:
        return f"{self.prefix}:meta:{{{ch}}}"

    def _hist(self, ch: str) -> str:
        return f"{self.prefix}:hist:{{{ch}}}"

    def _ps(self, ch: str) -> str:
        return f"{self.prefix}:ps:{{{ch}}}"

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self, handler: BrokerEventHandler) -> None:
        self._handler = handler
        ps_prefix = f"{self.prefix}:ps:{{".encode()
        self._ps_prefix_len = len(ps_prefix)
        for i, client in enumerate(self.shards.clients):
            try:
                await client.ping()
            except Exception as e:
                raise BrokerUnavailable(f"redis shard {i} unreachable: {e}") from None
            self._scripts.append({
                "publish": client.register_script(PUBLISH_LUA),
                "history": client.register_script(HISTORY_LUA),
            })
            events = LinkEvents(on_message=self._on_message, on_error=self._count_error,
                                on_reconnect=self._count_reconnect, spawn=self._spawn)
            if self.cluster:
                self.sharded = ShardedSubscriber(client, events)
            conns = [PubSubConn(client, f"{self.prefix}:ctl:{self.node_name}:{i}:{j}", events, self.ping_timeout)
                     for j in range(self.shards.pubsub_per_instance)]
            for c in conns:
                await c.start()
            self.shards.pubsubs.append(conns)
        if self.cluster:
            for n in self.shards.clients[0].get_primaries():
                self.health_state.set(n.name, True)
        else:
            for name in self.shards.names:
                self.health_state.set(name, True)  # each answered its PING above
        await self.subscribe(CONTROL_CHANNEL)  # every node hears the node commands
        loop = asyncio.get_running_loop()
        if self.cluster:
            self._watches.append(loop.create_task(self._watch_cluster()))
        else:
            self._watches += [loop.create_task(self._watch(i)) for i in range(len(self.shards.clients))]

    async def close(self) -> None:
        for w in self._watches:
            w.cancel()
        for t in self._unsub_timers.values():
            t.cancel()
        if self.sharded is not None:
            await self.sharded.close()
        for conns in self.shards.pubsubs:
            for c in conns:
                await c.close()
        for client in self.shards.clients:
            await client.aclose()
        self._handler = None

    async def ping(self) -> bool:
        """Every shard answers (a round trip; readiness and metrics read ``health()``)."""
        try:
            await asyncio.gather(*(c.ping() for c in self.shards.clients))
            return True
        except Exception:
            return False

    # health ----------------------------------------------------------------------------------------
    def domain(self, channel: str) -> str:
        if self.cluster:
            try:
                return self.shards.clients[0].get_node_from_key(self._ps(channel)).name
            except Exception:
                return "cluster"
        return self.shards.names[self.shards.index(channel)]

    def health(self) -> dict[str, bool]:
        return dict(self.health_state.up)

    def _health_changed(self, domain: str, up: bool) -> None:
        if not up:
            # in-flight commands to a silent shard would wait for their socket timeout: fail them now (the
            # pool's connections include the pub/sub ones: they reconnect and subscribe again)
            if not self.cluster:
                for c in self.shards.pubsubs[self.shards.names.index(domain)]:
                    c.killed = c.killed or f"redis {domain} is down"
            pool = self._pool_of(domain)
            if pool is not None:
                self._spawn(pool.disconnect())
        handler = self._handler
        if handler is not None and hasattr(handler, "handle_domain"):
            handler.handle_domain(domain, up)

    def _pool_of(self, domain: str):
        if self.cluster:
            node = self.shards.clients[0].get_node(node_name=domain)
            return None if node is None else node
        return self.shards.clients[self.shards.names.index(domain)].connection_pool

    def _verdict(self, domain: str, why: str) -> None:
        if why and self.health_state.is_up(domain):
            self.errors += 1
        self.health_state.set(domain, not why, why)

    async def _watch(self, i: int) -> None:
        """Shard ``i``'s liveness (relay.brokers.health.watch): a PING with a deadline on each pub/sub
        connection and on the command connections. Down when a pub/sub connection is down or silent, or
        the command PING fails (a timeout twice in a row)."""
        name, client, conns = self.shards.names[i], self.shards.clients[i], self.shards.pubsubs[i]
        timeout = self.ping_timeout
        strikes = Strikes()

        async def check(now: float, lagged: bool) -> None:
            why = ""
            for c in conns:
                why = check_link(c, now, timeout, lagged) or why
            result = await command_ping(client.ping, timeout)
            self._verdict(name, strikes.verdict(name, result, timeout) or why)

        await watch(self.ping_interval, timeout, lambda: conns, check)

    async def _watch_cluster(self) -> None:
        """Each Cluster master's liveness, as for a shard (``_watch``): its sharded pub/sub link and its
        command connections. While a master is down the slot map is refreshed each round, so the channels a
        failover hands to a replica follow it; a master that left the map is forgotten."""
        cluster = self.shards.clients[0]
        timeout = self.ping_timeout
        strikes = Strikes()

        def links() -> Iterable[Any]:
            return self.sharded.links.values() if self.sharded is not None else ()

        async def check(now: float, lagged: bool) -> None:
            try:
                primaries = cluster.get_primaries()
            except Exception:
                primaries = []
            names = {n.name for n in primaries}
            for d in list(self.health_state.up):
                if d not in names:
                    self.health_state.forget(d)
            by_name = self.sharded.links if self.sharded is not None else {}
            results = await asyncio.gather(*(command_ping(partial(n.execute_command, "PING"), timeout)
                                             for n in primaries))
            for node, result in zip(primaries, results, strict=True):
                why = strikes.verdict(node.name, result, timeout)
                link = by_name.get(node.name)
                if link is not None and link.channels:
                    why = check_link(link, now, timeout, lagged) or why
                self._verdict(node.name, why)
            if not self.health_state.all_up() and self.sharded is not None:
                await self.sharded.refresh_topology()  # a failover moves the slots of a down master

        await watch(self.ping_interval, timeout, links, check)

    # pub/sub ---------------------------------------------------------------------------------------
    def _carries(self, channel: str) -> bool:
        """This node's pub/sub subscription to ``channel`` is in place: confirmed, on a live connection."""
        if self.sharded is not None:
            link = self.sharded.owner.get(self._ps(channel).encode())
            return link is not None and link.up and link.confirmed(self._ps(channel).encode())
        conn = self.shards.pubsub(channel)
        return conn.connected and self._ps(channel).encode() in conn.confirmed

    def _wants(self, channel: str) -> bool:
        if self.sharded is not None:
            return self._ps(channel).encode() in self.sharded.owner
        return self._ps(channel) in self.shards.pubsub(channel).wanted

    async def subscribe(self, channel: str) -> None:
        self.health_state.check(self.domain(channel))
        timer = self._unsub_timers.pop(channel, None)
        if timer is not None:
            timer.cancel()
            if self._carries(channel):
                return  # it flapped: still subscribed in Redis
        if self.sharded is not None:
            fut = self.sharded.subscribe(self._ps(channel))
        else:
            fut = self.shards.pubsub(channel).subscribe(self._ps(channel))
        try:
            await asyncio.wait_for(fut, self.timeout)
        except TimeoutError:
            self.errors += 1
            raise BrokerUnavailable("redis did not confirm SUBSCRIBE in time") from None

    async def unsubscribe(self, channel: str) -> None:
        if channel in self._unsub_timers or not self._wants(channel):
            return  # leaving already, or never subscribed (its subscribe failed)
        loop = asyncio.get_running_loop()
        self._unsub_timers[channel] = loop.call_later(self.unsubscribe_delay, self._really_unsubscribe, channel)

    def _really_unsubscribe(self, channel: str) -> None:
        self._unsub_timers.pop(channel, None)
        if self.sharded is not None:
            self.sharded.unsubscribe(self._ps(channel))
        else:
            self.shards.pubsub(channel).unsubscribe(self._ps(channel))

    def _count_error(self) -> None:
        self.errors += 1

    def _count_reconnect(self) -> None:
        self.reconnects += 1

    def _on_message(self, ps_channel: bytes, data: bytes) -> None:
        handler = self._handler
        if handler is None or not ps_channel.startswith(f"{self.prefix}:ps:{{".encode()):
            return
        self.messages_in += 1
        channel = ps_channel[self._ps_prefix_len:-1].decode()
        kind = data[:1]
        if kind == b"p" or kind == b"P":
            lane = pace = None
            rest = data[1:]
            if kind == b"P":  # the publisher named its lane or pacing window: "P<lane>,<pace_ms>;"
                head, rest = rest.split(b";", 1)
                lane_s, pace_s = head.split(b",")
                lane = None if lane_s == b"-" else int(lane_s)
                pace = None if pace_s == b"-" else int(pace_s)
            off, epoch, body = rest.split(b":", 2)
            pub = msgpack.unpackb(body, raw=False)
            offset = int(off)
            if offset:
                pub["offset"] = offset
            handler.handle_publication(channel, pub, epoch.decode(), lane, pace)
        elif kind == b"j":
            handler.handle_join(channel, msgpack.unpackb(data[1:], raw=False))
        elif kind == b"l":
            handler.handle_leave(channel, msgpack.unpackb(data[1:], raw=False))
        elif kind == b"c" and channel == CONTROL_CHANNEL:
            handler.handle_control(data[1:])

    # publish and history ---------------------------------------------------------------------------
    def _publish_call(self, channel: str, data: Any, opts: PublishOptions) -> tuple[list[str], list]:
        """KEYS and ARGV of the publish script for one publication."""
        pub: dict = {"data": data}
        if opts.info is not None:
            pub["info"] = opts.info
        if opts.tags:
            pub["tags"] = opts.tags
        idem = f"{self.prefix}:idem:{{{channel}}}:{opts.idempotency_key or ''}"
        keys = [self._meta(channel), self._hist(channel), idem]
        args = [_packb(pub), opts.history_size, max(1, int(opts.history_ttl * 1000)),
                max(1, int(max(opts.history_meta_ttl, opts.history_ttl) * 1000)),
                str(int((time.time() + opts.history_ttl) * 1000)), secrets.token_hex(4), self._ps(channel),
                max(1, int(opts.idempotency_window * 1000)), self._publish_cmd,
                "1" if opts.idempotency_key else "0", _kind(opts)]
        return keys, args

    @staticmethod
    def _position(result: list) -> StreamPosition:
        off, _, epoch = result[0].partition(b":")
        return StreamPosition(int(off), epoch.decode()) if epoch else StreamPosition()

    async def publish(self, channel: str, data: Any, opts: PublishOptions) -> StreamPosition:
        self.health_state.check(self.domain(channel))
        keys, args = self._publish_call(channel, data, opts)
        try:
            result = await self._scripts[self.shards.index(channel)]["publish"](keys=keys, args=args)
        except Exception as e:
            self.errors += 1
            raise BrokerUnavailable(str(e)) from None
        return self._position(result)

    async def publish_many(self, items: list[tuple[str, Any, PublishOptions]]) -> list:
        """One pipeline per shard: one round trip, publications applied in order."""
        if self.cluster or len(items) < 2:
            return await super().publish_many(items)
        by_shard: dict[int, list[int]] = {}
        for i, (channel, _, _) in enumerate(items):
            by_shard.setdefault(self.shards.index(channel), []).append(i)
        out: list = [None] * len(items)

        async def run(idx: int, positions: list[int]) -> None:
            script = self._scripts[idx]["publish"]
            if not self.health_state.is_up(self.shards.names[idx]):
                for i in positions:
                    out[i] = BrokerUnavailable(f"redis {self.shards.names[idx]} is down")
                return
            try:
                async with self.shards.clients[idx].pipeline(transaction=False) as pipe:
                    for i in positions:
                        keys, args = self._publish_call(*items[i])
                        await script(keys=keys, args=args, client=pipe)  # queued, not sent yet
                    results = await pipe.execute(raise_on_error=False)
            except Exception as e:
                self.errors += 1
                for i in positions:
                    out[i] = BrokerUnavailable(str(e))
                return
            for i, r in zip(positions, results, strict=True):
                out[i] = BrokerUnavailable(str(r)) if isinstance(r, Exception) else self._position(r)

        await asyncio.gather(*(run(idx, positions) for idx, positions in by_shard.items()))
        return out

    async def _redis_publish(self, channel: str, message: bytes) -> None:
        self.health_state.check(self.domain(channel))
        try:
            await self.shards.client(channel).execute_command(self._publish_cmd.upper(), self._ps(channel), message)
        except Exception as e:
            self.errors += 1
            raise BrokerUnavailable(str(e)) from None

    async def publish_control(self, data: bytes) -> None:
        await self._redis_publish(CONTROL_CHANNEL, b"c" + data)

    async def publish_join(self, channel: str, info: dict) -> None:
        await self._redis_publish(channel, b"j" + _packb(info))

    async def publish_leave(self, channel: str, info: dict) -> None:
        await self._redis_publish(channel, b"l" + _packb(info))

    async def history(self, channel: str, *, since: StreamPosition | None, limit: int, reverse: bool,
                      meta_ttl: float) -> HistoryResult:
        self.health_state.check(self.domain(channel))
        idx = self.shards.index(channel)
        try:
            top, epoch, items = await self._scripts[idx]["history"](
                keys=[self._meta(channel), self._hist(channel)],
                args=[secrets.token_hex(4), max(1, int(meta_ttl * 1000)), "1" if limit != 0 else "0"])
        except Exception as e:
            self.errors += 1
            raise BrokerUnavailable(str(e)) from None
        pos = StreamPosition(int(top), epoch.decode())
        if since is not None and since.epoch and since.epoch != pos.epoch:  # "": any epoch
            raise UnrecoverablePosition(channel)
        if limit == 0:
            return HistoryResult([], pos)
        now_ms = int(time.time() * 1000)
        after = since.offset if since is not None else 0
        pubs = []
        for item in items:
            off, expire_ms, body = item.split(b":", 2)
            offset = int(off)
            if offset <= after or int(expire_ms) <= now_ms:
                continue
            pub = msgpack.unpackb(body, raw=False)
            pub["offset"] = offset
            pubs.append(pub)
        return HistoryResult(history_page(pubs, limit, reverse), pos)

    async def remove_history(self, channel: str) -> None:
        self.health_state.check(self.domain(channel))
        try:
            await self.shards.client(channel).delete(self._hist(channel))
        except Exception as e:
            self.errors += 1
            raise BrokerUnavailable(str(e)) from None

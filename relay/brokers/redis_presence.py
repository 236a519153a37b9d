"""Presence in Redis, per channel: ``<prefix>:pres:{ch}`` hash client -> msgpack info, and
``<prefix>:pres-exp:{ch}`` zset client -> expiry; an entry not refreshed within ``presence_ttl`` disappears
(each read drops the expired ones). One Lua script per operation on the channel's shard (relay.brokers.redis)."""

from __future__ import annotations

import time
from typing import Any

import msgpack

from relay.brokers.base import BrokerUnavailable, PresenceManager

__all__ = ["RedisPresenceManager"]

_packb = msgpack.Packer(use_bin_type=True).pack

PRESENCE_ADD_LUA = """
redis.call("hset", KEYS[1], ARGV[1], ARGV[2])
redis.call("zadd", KEYS[2], ARGV[3], ARGV[1])
redis.call("pexpire", KEYS[1], ARGV[4])
redis.call("pexpire", KEYS[2], ARGV[4])
return 1
"""

PRESENCE_REMOVE_LUA = """
redis.call("hdel", KEYS[1], ARGV[1])
redis.call("zrem", KEYS[2], ARGV[1])
return 1
"""

PRESENCE_GET_LUA = """
local expired = redis.call("zrangebyscore", KEYS[2], "-inf", ARGV[1])
for _, c in ipairs(expired) do redis.call("hdel", KEYS[1], c) end
if #expired > 0 then redis.call("zremrangebyscore", KEYS[2], "-inf", ARGV[1]) end
return redis.call("hgetall", KEYS[1])
"""


class RedisPresenceManager(PresenceManager):
    """Presence per channel in Redis; an entry lives ``ttl`` seconds unless refreshed."""

    def __init__(self, broker: Any, ttl: float = 60.0) -> None:
        """``broker``: the relay.brokers.redis.RedisBroker whose shards hold the channels (its prefix,
        shards, domain and health are read; it is not imported here, as it does not need presence)."""
        self.broker = broker
        self.ttl = ttl
        self.refresh_interval = ttl / 3
        self._add: dict[int, Any] = {}
        self._get: dict[int, Any] = {}
        self._remove: dict[int, Any] = {}

    def _keys(self, channel: str) -> list[str]:
        p = self.broker.prefix
        return [f"{p}:pres:{{{channel}}}", f"{p}:pres-exp:{{{channel}}}"]

    def _script(self, cache: dict, channel: str, source: str):
        self.broker.health_state.check(self.broker.domain(channel))  # a down shard: BrokerUnavailable now
        idx = self.broker.shards.index(channel)
        if idx not in cache:
            cache[idx] = self.broker.shards.clients[idx].register_script(source)
        return cache[idx]

    async def add_presence(self, channel: str, client_id: str, info: dict) -> None:
        now = time.time()
        try:
            await self._script(self._add, channel, PRESENCE_ADD_LUA)(
                keys=self._keys(channel),
                args=[client_id, _packb(info), int((now + self.ttl) * 1000), int(self.ttl * 1000) + 1000])
        except Exception as e:
            raise BrokerUnavailable(str(e)) from None

    async def remove_presence(self, channel: str, client_id: str) -> None:
        try:
            await self._script(self._remove, channel, PRESENCE_REMOVE_LUA)(keys=self._keys(channel), args=[client_id])
        except Exception as e:
            raise BrokerUnavailable(str(e)) from None

    async def presence(self, channel: str) -> dict[str, dict]:
        try:
            flat = await self._script(self._get, channel, PRESENCE_GET_LUA)(
                keys=self._keys(channel), args=[int(time.time() * 1000)])
        except Exception as e:
            raise BrokerUnavailable(str(e)) from None
        return {flat[i].decode(): msgpack.unpackb(flat[i + 1], raw=False) for i in range(0, len(flat), 2)}

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        clients = await self.presence(channel)
        return len(clients), len({i.get("user", "") for i in clients.values()})

"""A reconnect storm against a real relay process: a few hundred raw WebSocket clients subscribed with recovery,
cut together by a TCP proxy, publications made while they are away, then all reconnect at once and recover,
half through ``subscribe`` (recover=true) and half through ``connect.subs`` (token channels). Each client gets
every missed publication once and in order, and relay's metrics show far fewer broker history reads than clients
(relay/node/recovery.py coalesces them per channel)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from relay.auth import make_connect_token
from tests.rawclients import RawWS
from tests.relayproc import SECRET
from tests.tcpproxy import TcpProxy

CLIENTS = 240
CHANNELS = 3
MISSED = 5
STORM_NS = {"storm": {"history_size": 100, "history_ttl": 300.0, "force_recovery": True,
                      "history_access": "subscribers"}}


class Client:
    """One client: its channel, how it subscribes (client-side subscribe or a token channel) and its position."""

    def __init__(self, i: int, channel: str) -> None:
        self.user = f"u{i}"
        self.channel = channel
        self.server_side = i % 2 == 1
        claims = {"channels": [channel]} if self.server_side else {}
        self.token = make_connect_token(self.user, SECRET, ttl=None, **claims)
        self.ws: RawWS | None = None
        self.offset = 0
        self.epoch = ""

    async def connect(self, port: int, recover: bool) -> dict:
        """Connect (and subscribe); the subscribe result for the channel."""
        self.ws = await RawWS.open(port)
        params: dict = {"token": self.token}
        if recover and self.server_side:
            params["subs"] = {self.channel: {"recover": True, "offset": self.offset, "epoch": self.epoch}}
        reply = await self.ws.call("connect", params)
        assert "connect" in reply, reply
        if self.server_side:
            res = reply["connect"]["subs"][self.channel]
        else:
            sub: dict = {"channel": self.channel}
            if recover:
                sub.update(recover=True, offset=self.offset, epoch=self.epoch)
            reply = await self.ws.call("subscribe", sub)
            assert "subscribe" in reply, reply
            res = reply["subscribe"]
        self.offset, self.epoch = res["offset"], res["epoch"]
        return res


async def publish(relay, channel: str, data: dict) -> None:
    await asyncio.to_thread(relay.api, "publish", {"channel": channel, "data": data})


def reads(relay) -> dict[str, float]:
    m = relay.metrics()
    return {r: m["relay_history_reads_total", {"reason": r}] for r in ("recover", "position", "history")}


@pytest.mark.parametrize("broker", ["memory", "redis"])
async def test_reconnect_storm_recovers_every_client(relay_factory, broker, request):
    overrides: dict = {"namespaces": STORM_NS, "max_connections_per_ip": 0}
    if broker == "redis":
        overrides.update(broker="redis", redis_urls=[request.getfixturevalue("redis_server").url],
                         redis_prefix=f"t{uuid.uuid4().hex[:8]}")
    relay = relay_factory(overrides)
    channels = [f"storm:{uuid.uuid4().hex[:6]}" for _ in range(CHANNELS)]
    clients = [Client(i, channels[i % CHANNELS]) for i in range(CLIENTS)]
    with TcpProxy("127.0.0.1", relay.ws_port) as proxy:
        for ch in channels:  # the streams exist before anyone subscribes: every client holds an offset
            await publish(relay, ch, {"n": "before"})
        await asyncio.gather(*(c.connect(proxy.port, recover=False) for c in clients))
        assert all(c.offset == 1 and c.epoch for c in clients)

        assert await proxy.acut() == CLIENTS
        for c in clients:
            c.ws.close()
        for k in range(MISSED):  # published while everyone is away
            for ch in channels:
                await publish(relay, ch, {"n": k, "ch": ch})
        before = reads(relay)

        results = await asyncio.gather(*(c.connect(proxy.port, recover=True) for c in clients))
        after = reads(relay)
        for c, res in zip(clients, results, strict=True):
            assert res.get("recovered") is True and res.get("was_recovering") is True, res
            pubs = res.get("publications", [])
            assert [p["offset"] for p in pubs] == list(range(2, 2 + MISSED)), (c.user, res)
            assert [p["data"] for p in pubs] == [{"n": k, "ch": c.channel} for k in range(MISSED)]
            assert c.offset == 1 + MISSED

        # nothing missed is pushed again: the next publication each client sees is the next one
        for ch in channels:
            await publish(relay, ch, {"n": "after"})
        for c in clients:
            push = await c.ws.pub()
            assert push["channel"] == c.channel and push["pub"]["offset"] == 2 + MISSED, (c.user, push)
            assert push["pub"]["data"] == {"n": "after"}
            assert not c.ws.pushes or all("pub" not in p for p in c.ws.pushes)
        hist = await clients[0].ws.call("history", {"channel": clients[0].channel, "limit": 10})
        assert [p["offset"] for p in hist["history"]["publications"]] == list(range(1, 3 + MISSED))
        for c in clients:
            c.ws.close()

    recover_reads = after["recover"] - before["recover"]
    assert after["position"] == before["position"]  # every subscribe of the storm recovered
    assert 1 <= recover_reads <= CLIENTS / 8, (recover_reads, before, after)
    final = relay.metrics()
    assert final["relay_recoveries_coalesced_total"] >= CLIENTS - recover_reads
    assert final["relay_history_reads_total", {"reason": "history"}] == before["history"] + 1  # the history call

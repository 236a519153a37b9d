"""centrifuge-python (the published Centrifugo SDK) against a real relay: connect, subscribe,
publish, presence, join/leave, history, and recovery after the connection is cut; over the JSON protocol and the
protobuf one (the SDK's ``use_protobuf``: payloads are bytes, here JSON-encoded, as relay carries JSON)."""

import asyncio
import json
import uuid

import pytest

from centrifuge import (Client, ClientEventHandler, DisconnectedContext, JoinContext, LeaveContext,
                        PublicationContext, SubscribedContext, SubscriptionEventHandler)

from tests.tcpproxy import TcpProxy


@pytest.fixture(params=["json", "protobuf"])
def proto(request):
    return request.param


class Codec:
    """How the test hands payloads to the SDK and reads them back, per protocol."""

    def __init__(self, proto: str) -> None:
        self.pb = proto == "protobuf"

    def out(self, data):
        return json.dumps(data).encode() if self.pb else data

    def back(self, data):
        return json.loads(data) if self.pb else data

    def client(self, url, *args, **kw) -> Client:
        return Client(url, *args, use_protobuf=self.pb, **kw)


class Recorder(SubscriptionEventHandler):
    def __init__(self):
        self.pubs: list = []
        self.joins: list = []
        self.leaves: list = []
        self.subscribed: list[SubscribedContext] = []
        self.changed = asyncio.Event()

    async def on_publication(self, ctx: PublicationContext) -> None:
        self.pubs.append(ctx.pub)
        self.changed.set()

    async def on_join(self, ctx: JoinContext) -> None:
        self.joins.append(ctx.info.user)
        self.changed.set()

    async def on_leave(self, ctx: LeaveContext) -> None:
        self.leaves.append(ctx.info.user)
        self.changed.set()

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        self.subscribed.append(ctx)
        self.changed.set()

    async def until(self, cond, timeout=10.0):
        async def wait():
            while not cond():
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(wait(), timeout)


async def test_chat_between_two_sdk_clients(relay, proto):
    c = Codec(proto)
    ch = f"chat:{uuid.uuid4().hex[:8]}"
    alice = c.client(relay.ws_url, token=relay.token("alice"))
    bob = c.client(relay.ws_url, token=relay.token("bob"))
    ra, rb = Recorder(), Recorder()
    sa = alice.new_subscription(ch, ra, join_leave=True)
    sb = bob.new_subscription(ch, rb, join_leave=True)
    await alice.connect()
    await bob.connect()
    await sa.subscribe()
    await sb.subscribe()
    await ra.until(lambda: "bob" in ra.joins)
    await sa.publish(c.out({"text": "do you have it in blue?"}))
    await sb.publish(c.out({"text": "yes, size M and L"}))
    await ra.until(lambda: len(ra.pubs) == 2)
    await rb.until(lambda: len(rb.pubs) == 2)
    for r in (ra, rb):
        assert [c.back(p.data)["text"] for p in r.pubs] == ["do you have it in blue?", "yes, size M and L"]
        assert [p.info.user for p in r.pubs] == ["alice", "bob"]
        assert [p.offset for p in r.pubs] == [1, 2]
    pres = await sa.presence()
    assert sorted(c.user for c in pres.clients.values()) == ["alice", "bob"]
    stats = await sa.presence_stats()
    assert (stats.num_clients, stats.num_users) == (2, 2)
    hist = await sb.history(limit=10)
    assert [c.back(p.data)["text"] for p in hist.publications] == ["do you have it in blue?", "yes, size M and L"]
    await sb.unsubscribe()
    await ra.until(lambda: "bob" in ra.leaves)
    await alice.disconnect()
    await bob.disconnect()


async def test_sdk_recovers_missed_messages_after_connection_cut(relay, proto):
    c = Codec(proto)
    ch = f"chat:{uuid.uuid4().hex[:8]}"
    disconnects = []

    class Events(ClientEventHandler):
        async def on_disconnected(self, ctx: DisconnectedContext) -> None:
            disconnects.append(ctx.code)

    with TcpProxy("127.0.0.1", relay.ws_port) as proxy:
        port = proxy.start()
        url = relay.ws_url.replace(f":{relay.ws_port}/", f":{port}/")
        shopper = c.client(url, Events(), token=relay.token("shopper"), min_reconnect_delay=0.05,
                           max_reconnect_delay=0.3)
        rec = Recorder()
        sub = shopper.new_subscription(ch, rec)
        await shopper.connect()
        await sub.subscribe()
        agent = c.client(relay.ws_url, token=relay.token("agent"))
        await agent.connect()
        asub = agent.new_subscription(ch)
        await asub.subscribe()
        await asub.publish(c.out({"n": 0}))
        await rec.until(lambda: len(rec.pubs) == 1)
        proxy.pause()
        proxy.cut()
        for i in (1, 2, 3):
            await asub.publish(c.out({"n": i}))
        await asyncio.sleep(0.3)
        proxy.resume()
        await rec.until(lambda: len(rec.pubs) == 4)
        assert [c.back(p.data)["n"] for p in rec.pubs] == [0, 1, 2, 3]
        assert [p.offset for p in rec.pubs] == [1, 2, 3, 4]
        again = rec.subscribed[-1]
        assert again.was_recovering and again.recovered
        await asub.publish(c.out({"n": 4}))
        await rec.until(lambda: len(rec.pubs) == 5)
        await shopper.disconnect()
        await agent.disconnect()

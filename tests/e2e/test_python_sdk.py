"""centrifuge-python (the published Centrifugo SDK) against a real relay: connect, subscribe,
publish, presence, join/leave, history, and recovery after the connection is cut."""

import asyncio
import uuid

from centrifuge import (Client, ClientEventHandler, DisconnectedContext, JoinContext, LeaveContext,
                        PublicationContext, SubscribedContext, SubscriptionEventHandler)

from tests.tcpproxy import TcpProxy


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


async def test_chat_between_two_sdk_clients(relay):
    ch = f"chat:{uuid.uuid4().hex[:8]}"
    alice = Client(relay.ws_url, token=relay.token("alice"))
    bob = Client(relay.ws_url, token=relay.token("bob"))
    ra, rb = Recorder(), Recorder()
    sa = alice.new_subscription(ch, ra, join_leave=True)
    sb = bob.new_subscription(ch, rb, join_leave=True)
    await alice.connect()
    await bob.connect()
    await sa.subscribe()
    await sb.subscribe()
    await ra.until(lambda: "bob" in ra.joins)
    await sa.publish({"text": "do you have it in blue?"})
    await sb.publish({"text": "yes, size M and L"})
    await ra.until(lambda: len(ra.pubs) == 2)
    await rb.until(lambda: len(rb.pubs) == 2)
    for r in (ra, rb):
        assert [p.data["text"] for p in r.pubs] == ["do you have it in blue?", "yes, size M and L"]
        assert [p.info.user for p in r.pubs] == ["alice", "bob"]
        assert [p.offset for p in r.pubs] == [1, 2]
    pres = await sa.presence()
    assert sorted(c.user for c in pres.clients.values()) == ["alice", "bob"]
    stats = await sa.presence_stats()
    assert (stats.num_clients, stats.num_users) == (2, 2)
    hist = await sb.history(limit=10)
    assert [p.data["text"] for p in hist.publications] == ["do you have it in blue?", "yes, size M and L"]
    await sb.unsubscribe()
    await ra.until(lambda: "bob" in ra.leaves)
    await alice.disconnect()
    await bob.disconnect()


async def test_sdk_recovers_missed_messages_after_connection_cut(relay):
    ch = f"chat:{uuid.uuid4().hex[:8]}"
    disconnects = []

    class Events(ClientEventHandler):
        async def on_disconnected(self, ctx: DisconnectedContext) -> None:
            disconnects.append(ctx.code)

    with TcpProxy("127.0.0.1", relay.ws_port) as proxy:
        port = proxy.start()
        url = relay.ws_url.replace(f":{relay.ws_port}/", f":{port}/")
        shopper = Client(url, Events(), token=relay.token("shopper"), min_reconnect_delay=0.05,
                         max_reconnect_delay=0.3)
        rec = Recorder()
        sub = shopper.new_subscription(ch, rec)
        await shopper.connect()
        await sub.subscribe()
        agent = Client(relay.ws_url, token=relay.token("agent"))
        await agent.connect()
        asub = agent.new_subscription(ch)
        await asub.subscribe()
        await asub.publish({"n": 0})
        await rec.until(lambda: len(rec.pubs) == 1)
        proxy.pause()
        proxy.cut()
        for i in (1, 2, 3):
            await asub.publish({"n": i})
        await asyncio.sleep(0.3)
        proxy.resume()
        await rec.until(lambda: len(rec.pubs) == 4)
        assert [p.data["n"] for p in rec.pubs] == [0, 1, 2, 3]
        assert [p.offset for p in rec.pubs] == [1, 2, 3, 4]
        again = rec.subscribed[-1]
        assert again.was_recovering and again.recovered
        await asub.publish({"n": 4})
        await rec.until(lambda: len(rec.pubs) == 5)
        await shopper.disconnect()
        await agent.disconnect()

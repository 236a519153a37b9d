"""Server-side subscriptions carried by the connect token (e.g. a shopper's personal order channel)."""

import asyncio
import json
import urllib.request
import uuid

from centrifuge import Client, ClientEventHandler, ServerPublicationContext, ServerSubscribedContext

from tests.rawclients import RawWS
from tests.tcpproxy import TcpProxy


def publish(relay, channel, data):
    req = urllib.request.Request(f"{relay.api_url}/publish", method="POST",
                                 data=json.dumps({"channel": channel, "data": data}).encode(),
                                 headers={"X-API-Key": relay.api_key})
    return json.loads(urllib.request.urlopen(req).read())


async def test_token_channels_are_subscribed_at_connect(relay):
    personal = f"news:orders-{uuid.uuid4().hex[:6]}"
    ws = await RawWS.open(relay.ws_port)
    reply = await ws.call("connect", {"token": relay.token("alice", channels=[personal, "nope:x"])})
    subs = reply["connect"]["subs"]
    assert list(subs) == [personal]  # the unusable channel is skipped, not fatal
    assert subs[personal]["recoverable"] is True and subs[personal]["epoch"]
    await asyncio.to_thread(publish, relay, personal, {"order": 1, "status": "shipped"})
    push = await ws.pub()
    assert push["channel"] == personal and push["pub"]["data"]["status"] == "shipped"
    ws.close()


async def test_sdk_gets_and_recovers_server_side_subscription(relay):
    personal = f"news:orders-{uuid.uuid4().hex[:6]}"
    got, subscribed = [], []
    changed = asyncio.Event()

    class Events(ClientEventHandler):
        async def on_subscribed(self, ctx: ServerSubscribedContext) -> None:
            subscribed.append(ctx)
            changed.set()

        async def on_publication(self, ctx: ServerPublicationContext) -> None:
            got.append(ctx.pub.data)
            changed.set()

    async def until(cond):
        async def wait():
            while not cond():
                changed.clear()
                await changed.wait()
        await asyncio.wait_for(wait(), 10)

    with TcpProxy("127.0.0.1", relay.ws_port) as proxy:
        url = relay.ws_url.replace(f":{relay.ws_port}/", f":{proxy.start()}/")
        client = Client(url, Events(), token=relay.token("bob", channels=[personal]), min_reconnect_delay=0.05,
                        max_reconnect_delay=0.2)
        await client.connect()
        await until(lambda: subscribed)
        await asyncio.to_thread(publish, relay, personal, "paid")
        await until(lambda: got == ["paid"])
        proxy.pause()
        proxy.cut()
        await asyncio.to_thread(publish, relay, personal, "packed")
        await asyncio.to_thread(publish, relay, personal, "shipped")
        proxy.resume()
        await until(lambda: len(got) == 3)
        assert got == ["paid", "packed", "shipped"]
        assert subscribed[-1].was_recovering and subscribed[-1].recovered
        await client.disconnect()

"""Fossil delta compression (Centrifugo's subscribe ``delta: "fossil"``) against a real relay: centrifuge-python
(JSON and protobuf) rebuilds every state of a product page's stock widget from whole publications and deltas; the
frames are what Centrifugo sends (delta mode: data as a JSON string, ``delta: true`` on deltas); a subscriber
joining late, a namespace without deltas and an unknown kind."""

from __future__ import annotations

import asyncio
import json
import random
import uuid

import orjson
import pytest
from cent import AsyncClient, PublishRequest
from centrifuge import Client, DeltaType, PublicationContext, SubscriptionEventHandler

from relay.protocol.fossil import apply_delta
from tests.protocol.test_fossil import stock_widget
from tests.rawclients import ws_connected

STOCK = {"history_size": 50, "history_ttl": 300.0, "force_recovery": True, "subscribe_access": "anonymous",
         "allowed_delta_types": ["fossil"], "delta_publish": True}


@pytest.fixture(scope="module")
def delta_relay():
    from tests.relayproc import RelayProcess

    with RelayProcess({"namespaces": {"stock": STOCK}}) as r:
        yield r


def states(n: int) -> list[dict]:
    rng = random.Random(11)
    state = stock_widget(rng)
    out = []
    for _ in range(n):
        v = state["variants"][rng.randrange(len(state["variants"]))]
        v["stock"] = max(0, v["stock"] - 1)  # a sale
        state["updated"] += 1
        out.append(json.loads(json.dumps(state)))
    return out


async def publish_all(relay, channel: str, items: list[dict]) -> None:
    async with AsyncClient(relay.api_url, relay.api_key) as api:
        for item in items:
            await api.publish(PublishRequest(channel=channel, data=item))


@pytest.mark.parametrize("proto", ["json", "protobuf"])
async def test_the_sdk_rebuilds_every_state_from_deltas(delta_relay, proto):
    ch = f"stock:sku-{uuid.uuid4().hex[:8]}"
    got: list = []
    done = asyncio.Event()
    want = states(8)

    class Handler(SubscriptionEventHandler):
        async def on_publication(self, ctx: PublicationContext) -> None:
            got.append(ctx.pub.data)
            if len(got) == len(want):
                done.set()

    client = Client(delta_relay.ws_url, token=delta_relay.token("shopper"), use_protobuf=proto == "protobuf")
    sub = client.new_subscription(ch, Handler(), delta=DeltaType.FOSSIL)
    await client.connect()
    await sub.subscribe()
    await publish_all(delta_relay, ch, want)
    await asyncio.wait_for(done.wait(), 10)
    if proto == "protobuf":
        got = [orjson.loads(g) for g in got]
    assert got == want
    await client.disconnect()


async def test_the_frames_are_centrifugos_delta_mode(delta_relay):
    ch = f"stock:sku-{uuid.uuid4().hex[:8]}"
    want = states(4)
    ws = await ws_connected(delta_relay.ws_port, delta_relay.token("shopper"))
    plain = await ws_connected(delta_relay.ws_port, delta_relay.token("other"))
    res = (await ws.call("subscribe", {"channel": ch, "delta": "fossil"}))["subscribe"]
    assert res["delta"] is True and res["positioned"] is True
    assert "delta" not in (await plain.call("subscribe", {"channel": ch}))["subscribe"]
    await publish_all(delta_relay, ch, want)
    pubs = [(await ws.pub())["pub"] for _ in want]
    assert all(isinstance(p["data"], str) for p in pubs)  # data is a JSON string in delta mode
    assert "delta" not in pubs[0] and json.loads(pubs[0]["data"]) == want[0]  # the first one whole
    base = pubs[0]["data"].encode()
    for p, state in zip(pubs[1:], want[1:], strict=True):
        assert p["delta"] is True
        assert len(p["data"]) < len(orjson.dumps(state)) / 10  # one sale in a 2 KB state
        base = apply_delta(base, p["data"].encode())
        assert json.loads(base) == state
    # the subscriber without delta gets every publication whole, as JSON
    assert [(await plain.pub())["pub"]["data"] for _ in want] == want
    # a late subscriber recovering from an offset: whole publications in the reply, deltas after it
    late = await ws_connected(delta_relay.ws_port, delta_relay.token("late"))
    res = (await late.call("subscribe", {"channel": ch, "delta": "fossil", "recover": True, "offset": 2,
                                         "epoch": res["epoch"]}))["subscribe"]
    assert res["recovered"] is True and [json.loads(p["data"]) for p in res["publications"]] == want[2:]
    more = states(6)[4:]
    await publish_all(delta_relay, ch, more)
    first, second = (await late.pub())["pub"], (await late.pub())["pub"]
    assert "delta" not in first and json.loads(first["data"]) == more[0]  # its first through the hub: whole
    assert second["delta"] is True
    assert json.loads(apply_delta(first["data"].encode(), second["data"].encode())) == more[1]
    for c in (ws, plain, late):
        c.close()


async def test_no_delta_where_the_namespace_allows_none_and_unknown_kinds_are_refused(relay):
    ws = await ws_connected(relay.ws_port, relay.token("alice"))
    res = (await ws.call("subscribe", {"channel": f"chat:{uuid.uuid4().hex[:8]}", "delta": "fossil"}))["subscribe"]
    assert "delta" not in res
    bad = await ws.call("subscribe", {"channel": f"chat:{uuid.uuid4().hex[:8]}", "delta": "xdelta"})
    assert bad["error"]["code"] == 107
    ws.close()

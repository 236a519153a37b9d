"""The HTTP server API, driven by `cent` (Centrifugo's own API client) against a real relay."""

import asyncio
import uuid

import aiohttp
import pytest
from cent import (AsyncClient, BroadcastRequest, ChannelsRequest, DisconnectRequest, HistoryRemoveRequest,
                  HistoryRequest, InfoRequest, PresenceRequest, PresenceStatsRequest, PublishRequest,
                  UnsubscribeRequest)
from cent.dto import Disconnect, StreamPosition
from cent.exceptions import CentApiResponseError, CentUnauthorizedError

from tests.rawclients import ws_connected


@pytest.fixture
async def api(relay):
    client = AsyncClient(relay.api_url, relay.api_key)
    yield client
    await client.close()


async def test_publish_reaches_subscribers_and_history(relay, api):
    ch = f"chat:{uuid.uuid4().hex[:8]}"
    ws = await ws_connected(relay.ws_port, relay.token("alice"))
    await ws.call("subscribe", {"channel": ch})
    res = await api.publish(PublishRequest(channel=ch, data={"order": 42, "status": "shipped"},
                                           tags={"kind": "order"}))
    assert res.offset == 1 and res.epoch
    push = await ws.pub()
    assert push["pub"]["data"] == {"order": 42, "status": "shipped"} and push["pub"]["tags"] == {"kind": "order"}
    assert "info" not in push["pub"]  # published by the server, not a client
    hist = await api.history(HistoryRequest(channel=ch, limit=10))
    assert [p.data["order"] for p in hist.publications] == [42] and hist.offset == 1
    since = await api.history(HistoryRequest(channel=ch, limit=10, since=StreamPosition(offset=1, epoch=res.epoch)))
    assert since.publications == []
    await api.history_remove(HistoryRemoveRequest(channel=ch))
    assert (await api.history(HistoryRequest(channel=ch, limit=10))).publications == []
    ws.close()


async def test_idempotent_publish(relay, api):
    ch = f"chat:{uuid.uuid4().hex[:8]}"
    ws = await ws_connected(relay.ws_port, relay.token("alice"))
    await ws.call("subscribe", {"channel": ch})
    r1 = await api.publish(PublishRequest(channel=ch, data=1, idempotency_key="k1"))
    r2 = await api.publish(PublishRequest(channel=ch, data=1, idempotency_key="k1"))
    assert r1.offset == r2.offset == 1
    await api.publish(PublishRequest(channel=ch, data=2))
    assert (await ws.pub())["pub"]["data"] == 1
    assert (await ws.pub())["pub"]["data"] == 2  # the repeat was never delivered
    ws.close()


async def test_broadcast_presence_channels_info(relay, api):
    chs = [f"chat:{uuid.uuid4().hex[:8]}" for _ in range(2)]
    ws = await ws_connected(relay.ws_port, relay.token("bob"))
    for ch in chs:
        await ws.call("subscribe", {"channel": ch})
    res = await api.broadcast(BroadcastRequest(channels=chs + ["nope:x"], data={"sale": "now"}))
    assert [r.error is None for r in res.responses] == [True, True, False]
    assert res.responses[2].error.code == 102
    got = {(await ws.pub())["channel"] for _ in chs}
    assert got == set(chs)
    pres = await api.presence(PresenceRequest(channel=chs[0]))
    assert [c.user for c in pres.presence.values()] == ["bob"]
    stats = await api.presence_stats(PresenceStatsRequest(channel=chs[0]))
    assert (stats.num_clients, stats.num_users) == (1, 1)
    channels = await api.channels(ChannelsRequest(pattern="chat:*"))
    assert set(chs) <= set(channels.channels) and channels.channels[chs[0]].num_clients == 1
    info = await api.info(InfoRequest())
    assert info.nodes[0].num_clients >= 1 and info.nodes[0].version
    ws.close()


async def test_unsubscribe_and_disconnect_users(relay, api):
    ch = f"chat:{uuid.uuid4().hex[:8]}"
    user = f"u-{uuid.uuid4().hex[:6]}"
    ws = await ws_connected(relay.ws_port, relay.token(user))
    await ws.call("subscribe", {"channel": ch})
    await api.unsubscribe(UnsubscribeRequest(user=user, channel=ch))
    push = await ws.push()
    while "unsubscribe" not in push:
        push = await ws.push()
    assert push["channel"] == ch and push["unsubscribe"]["code"] == 2000
    await api.disconnect(DisconnectRequest(user=user, disconnect=Disconnect(code=4500, reason="bye")))
    assert await ws.expect_close() == (4500, "bye")


async def test_api_errors(relay, api):
    with pytest.raises(CentApiResponseError) as e:
        await api.publish(PublishRequest(channel="nope:x", data=1))
    assert e.value.code == 102
    with pytest.raises(CentApiResponseError) as e:
        await api.presence(PresenceRequest(channel="pub:x"))  # presence off in this namespace
    assert e.value.code == 108
    bad = AsyncClient(relay.api_url, "wrong-key")
    with pytest.raises(CentUnauthorizedError):
        await bad.info(InfoRequest())
    await bad.close()
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{relay.api_url}/publish", data=b"{oops", headers={"X-API-Key": relay.api_key}) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == 107
        async with s.post(f"{relay.api_url}/teleport", data=b"{}", headers={"X-API-Key": relay.api_key}) as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == 104
        async with s.post(f"{relay.api_url}/info", data=b"{}",
                          headers={"Authorization": f"apikey {relay.api_key}"}) as r:
            assert r.status == 200 and "nodes" in (await r.json())["result"]
        async with s.get(f"http://127.0.0.1:{relay.api_port}/healthz") as r:
            assert r.status == 200
        async with s.get(f"http://127.0.0.1:{relay.api_port}/readyz") as r:
            assert r.status == 200


async def test_api_refuses_everything_without_configured_key(relay_factory):
    r = relay_factory({"api_key": ""})
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{r.api_url}/info", data=b"{}", headers={"X-API-Key": ""}) as resp:
            assert resp.status == 401


async def test_api_header_limits(relay_factory):
    # limits below aiohttp's own defaults (128 headers, 8190-byte fields), so relay's config is what refuses
    relay = relay_factory({"max_handshake_headers": 64, "max_handshake_size": 4096})
    for headers in ([f"X-H{i}: v" for i in range(100)], ["X-Big: " + "a" * 6000]):
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.api_port)
        writer.write(("POST /api/info HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                      + "".join(h + "\r\n" for h in headers) + "\r\n{}").encode())
        head = await asyncio.wait_for(reader.read(200), 5)
        assert head.split(b" ", 2)[1] in (b"400", b"431"), head  # refused before the handler runs
        writer.close()

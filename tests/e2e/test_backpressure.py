"""Publisher backpressure: a node that cannot deliver what it has refuses new publications (server API
429 with Retry-After, client error 106) instead of buffering them, and delivers everything it accepted."""

import asyncio
import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis as redis_sync

from tests.rawclients import ws_connected

RATES = {"client_publish_rate": 1e6, "client_publish_burst": 100000, "client_command_rate": 1e6,
         "client_command_burst": 100000}


def post(relay, method, body, timeout=10):
    """(status, Retry-After header, JSON body) of one server API call."""
    req = urllib.request.Request(f"{relay.api_url}/{method}", method="POST", data=json.dumps(body).encode(),
                                 headers={"X-API-Key": relay.api_key})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers.get("Retry-After"), json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Retry-After"), json.loads(e.read())


async def test_a_backlog_past_the_limit_refuses_publishers_and_loses_nothing(relay_factory):
    r = relay_factory({**RATES, "backpressure_queue_bytes": 300000, "backpressure_retry_after": 2.0,
                       "client_queue_max_size": 16 << 20, "client_write_high_water": 16384,
                       "namespaces": {"feed": {"publish_access": "authenticated"}}})
    slow = await ws_connected(r.ws_port, r.token("reader"))
    assert "subscribe" in await slow.call("subscribe", {"channel": "feed:x"})
    slow.writer.transport.pause_reading()  # it stops reading: what relay accepts piles up for it
    accepted, refused = [], None
    loop = asyncio.get_running_loop()
    for i in range(5000):
        status, retry_after, body = await loop.run_in_executor(
            None, post, r, "publish", {"channel": "feed:x", "data": {"i": i, "p": "x" * 4000}})
        if status == 200:
            assert body == {"result": {}}
            accepted.append(i)
            continue
        refused = (status, retry_after, body)
        break
    assert refused is not None, "5000 publications of 4 KB were all accepted for a client that reads nothing"
    status, retry_after, body = refused
    assert status == 429 and retry_after in ("2", "3", "4")
    assert body == {"error": {"code": 106, "message": "limit exceeded: node overloaded, retry later",
                              "temporary": True}}
    # broadcast too, and a client's publish gets the error in its reply; other API calls still work
    status, _, body = post(r, "broadcast", {"channels": ["feed:x", "feed:y"], "data": 1})
    assert status == 429 and body["error"]["code"] == 106
    publisher = await ws_connected(r.ws_port, r.token("writer"))
    reply = await publisher.call("publish", {"channel": "feed:x", "data": {"i": -1}})
    assert reply["error"] == {"code": 106, "message": "limit exceeded: node overloaded, retry later",
                              "temporary": True}
    assert post(r, "info", {})[0] == 200
    assert r.metrics().total("relay_backpressure_active") == 1
    assert r.metrics()["relay_publications_refused_total", {"source": "api"}] >= 2
    assert r.metrics()["relay_publications_refused_total", {"source": "client"}] == 1
    # the reader catches up: everything accepted arrives, in order, and publishers are let in again
    slow.writer.transport.resume_reading()
    got = []
    while len(got) < len(accepted):
        got.append((await slow.pub(timeout=10))["pub"]["data"]["i"])
    assert got == accepted
    for _ in range(100):
        status, _, _ = post(r, "publish", {"channel": "feed:x", "data": {"i": "after"}})
        if status == 200:
            break
        await asyncio.sleep(0.05)
    assert status == 200
    assert (await slow.pub(timeout=10))["pub"]["data"]["i"] == "after"
    assert r.metrics().total("relay_backpressure_active") == 0
    assert r.metrics().total("relay_slow_consumer_disconnects_total") == 0
    slow.close()
    publisher.close()


async def test_publishes_stuck_on_a_paused_redis_are_bounded(redis_factory, relay_factory):
    redis = redis_factory()
    r = relay_factory({"broker": "redis", "redis_urls": [redis.url], "max_publishes_in_flight": 5,
                       "backpressure_publish_latency": 0})
    ch = f"chat:{uuid.uuid4().hex[:8]}"
    ws = await ws_connected(r.ws_port, r.token("alice"))
    assert "subscribe" in await ws.call("subscribe", {"channel": ch})
    assert post(r, "publish", {"channel": ch, "data": "before"})[0] == 200
    redis_sync.Redis(port=redis.port).execute_command("CLIENT", "PAUSE", "2000", "WRITE")
    # five publishes wait for Redis; the ones after them are refused at once instead of piling up
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(12) as pool:
        calls = [loop.run_in_executor(pool, post, r, "publish", {"channel": ch, "data": i}) for i in range(12)]
        results = await asyncio.gather(*calls)
    ok = [i for i, (status, _, _) in enumerate(results) if status == 200]
    refused = [i for i, (status, _, body) in enumerate(results) if status == 429 and body["error"]["code"] == 106]
    assert len(ok) == 5 and len(refused) == 7, results
    got = [(await ws.pub(timeout=5))["pub"]["data"] for _ in range(6)]
    assert got[0] == "before" and sorted(got[1:]) == ok  # every accepted publication, once
    assert post(r, "publish", {"channel": ch, "data": "after"})[0] == 200
    assert (await ws.pub(timeout=5))["pub"]["data"] == "after"
    ws.close()


async def test_a_slow_broker_round_trip_refuses_until_it_recovers(redis_factory, relay_factory):
    redis = redis_factory()
    r = relay_factory({"broker": "redis", "redis_urls": [redis.url], "backpressure_publish_latency": 0.2})
    ch = f"chat:{uuid.uuid4().hex[:8]}"
    assert post(r, "publish", {"channel": ch, "data": 0})[0] == 200
    redis_sync.Redis(port=redis.port).execute_command("CLIENT", "PAUSE", "2000", "WRITE")
    assert post(r, "publish", {"channel": ch, "data": 1})[0] == 200  # slow (~2 s), but accepted
    # refused now (one publication per PROBE_INTERVAL goes through to measure the broker again)
    answers = [post(r, "publish", {"channel": ch, "data": 2}) for _ in range(3)]
    status, retry_after, body = next(a for a in answers if a[0] != 200)
    assert (status, body["error"]["code"]) == (429, 106) and int(retry_after) >= 1
    # the moving average comes down with the next publishes: probe as a publisher would
    for _ in range(50):
        status, _, _ = post(r, "publish", {"channel": ch, "data": 3})
        if status == 200:
            break
        await asyncio.sleep(0.1)
    assert status == 200, "refusing never stopped after Redis came back"


async def test_client_send_buffer_caps_the_kernels_share(relay_factory):
    """client_send_buffer sets SO_SNDBUF on client sockets (the kernel reports twice the value)."""
    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is not installed")
    r = relay_factory({"client_send_buffer": 65536})
    ws = await ws_connected(r.ws_port, r.token("alice"))
    out = subprocess.run(["ss", "-tmnH", "state", "established", f"( sport = :{r.ws_port} )"],
                         capture_output=True, text=True, check=True).stdout
    sizes = re.findall(r"\btb(\d+)", out)
    assert sizes and all(int(s) == 131072 for s in sizes), out
    ws.close()

"""A client that stops reading is disconnected with 3008 (slow); the others get everything."""

import asyncio
import json
import urllib.request

from tests.rawclients import RawWS, ws_connected


def api(relay, method, body):
    req = urllib.request.Request(f"{relay.api_url}/{method}", method="POST", data=json.dumps(body).encode(),
                                 headers={"X-API-Key": relay.api_key})
    return json.loads(urllib.request.urlopen(req).read())


async def test_slow_consumer_disconnected_others_unaffected(relay_factory):
    # shutdown_timeout: how long a closed slow client may take to read its buffer before abort
    r = relay_factory({"client_queue_max_size": 262144, "client_write_high_water": 16384,
                       "shutdown_timeout": 60.0, "client_publish_rate": 1e6, "client_publish_burst": 100000,
                       "client_command_rate": 1e6, "client_command_burst": 100000})
    fast = await ws_connected(r.ws_port, r.token("fast"))
    await fast.call("subscribe", {"channel": "pub:flood"})
    slow = await ws_connected(r.ws_port, r.token("slow"))
    await slow.call("subscribe", {"channel": "pub:flood"})
    slow.writer.transport.pause_reading()  # stop reading: the kernel buffers fill up
    n = 3000
    payload = "x" * 2000
    received = 0

    async def reader():
        nonlocal received
        while received < n:
            p = await fast.pub(timeout=20)
            assert p["pub"]["data"]["i"] == received  # in order, nothing lost
            received += 1

    task = asyncio.create_task(reader())
    publisher = await ws_connected(r.ws_port, r.token("publisher"))
    await publisher.call("subscribe", {"channel": "pub:flood"})

    async def drain():
        while True:
            await publisher.message(timeout=60)

    drainer = asyncio.create_task(drain())
    for start in range(0, n, 20):
        while received < start - 100:  # a fast client keeps up; the slow one never reads
            await asyncio.sleep(0.001)
        await publisher.send_cmds(*[{"id": 1000 + i, "publish": {"channel": "pub:flood",
                                                                 "data": {"i": i, "p": payload}}}
                                    for i in range(start, start + 20)])
    await asyncio.wait_for(task, 30)
    drainer.cancel()
    slow.writer.transport.resume_reading()
    # the slow client finds, after whatever was delivered before the cap, a close frame with 3008
    code = None
    try:
        while True:
            op, payload_ = await slow.frame(timeout=10)
            if op == 8:
                code = RawWS.close_info(payload_)
                break
            if op == -1:
                break
    except (TimeoutError, ConnectionError):
        pass
    assert code == (3008, "slow"), code
    info = api(r, "info", {})["result"]["nodes"][0]
    assert info["num_clients"] == 2
    fast.close()
    publisher.close()

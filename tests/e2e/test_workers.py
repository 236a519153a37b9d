"""`relay serve --workers N`: workers share the ports, meet through Redis, are restarted when they die."""

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.rawclients import ws_connected


def worker_pids(parent: int) -> list[int]:
    pids = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        for pid in children:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except FileNotFoundError:  # the child exited between the two reads (a worker being replaced)
                continue
            if b"resource_tracker" not in cmd:
                pids.append(int(pid))
    return sorted(pids)


async def wait_for(cond, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


@pytest.fixture
def workers_node(redis_server, relay_factory):
    return relay_factory({"workers": 2, "broker": "redis", "redis_urls": [redis_server.url],
                          "redis_prefix": f"w{uuid.uuid4().hex[:6]}"})


async def test_clients_on_different_workers_chat(workers_node):
    node = workers_node
    await wait_for(lambda: len(worker_pids(node.pid)) == 2)
    ch = f"chat:{uuid.uuid4().hex[:8]}"
    clients = [await ws_connected(node.ws_port, node.token(f"u{i}")) for i in range(12)]
    for c in clients:
        await c.call("subscribe", {"channel": ch})
    names = set()
    for c in clients:
        await c.call("presence_stats", {"channel": ch})
    await clients[0].call("publish", {"channel": ch, "data": "hello all"})
    for c in clients:
        assert (await c.pub())["pub"]["data"] == "hello all"
    # the kernel spreads connections over both workers (the second may still be starting under load)
    import json
    import urllib.request

    deadline = time.monotonic() + 20
    while len(names) < 2 and time.monotonic() < deadline:
        req = urllib.request.Request(f"{node.api_url}/info", method="POST", data=b"{}",
                                     headers={"X-API-Key": node.api_key})
        body = await asyncio.to_thread(lambda r=req: urllib.request.urlopen(r).read())
        names.add(json.loads(body)["result"]["nodes"][0]["name"])
    assert len(names) == 2 and all(n.endswith(("-w0", "-w1")) for n in names)
    for c in clients:
        c.close()


async def test_crashed_worker_is_restarted_and_sigterm_stops_all(workers_node):
    node = workers_node
    await wait_for(lambda: len(worker_pids(node.pid)) == 2)
    before = worker_pids(node.pid)
    os.kill(before[0], signal.SIGKILL)
    await wait_for(lambda: len(worker_pids(node.pid)) == 2 and worker_pids(node.pid) != before)
    assert "exited with signal 9; restarting" in node.log()
    # still serving: the other worker, or the new one once it listens (under load the other may itself
    # still be starting: the kernel refuses a connection only while no worker of the group listens)
    deadline = time.monotonic() + 15
    while True:
        try:
            ws = await ws_connected(node.ws_port, node.token("after-crash"))
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
    ws.close()
    pids = worker_pids(node.pid)
    node.proc.terminate()
    assert await asyncio.to_thread(node.proc.wait, 20) == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or b"Z" in Path(f"/proc/{pid}/stat").read_bytes().split()[2]


def test_workers_with_memory_broker_refused(relay_factory):
    with pytest.raises(RuntimeError) as e:
        relay_factory({"workers": 2})
    assert "workers: 2 workers need broker = 'redis'" in str(e.value)

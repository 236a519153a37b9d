"""One master of a 3 + 3 Redis Cluster is killed (kill -9) under numbered traffic on channels spread over every
master: its replica takes over, and the channels of the two healthy masters never notice.

Two relay nodes, one on each core (compiled and pure Python), each publishing half of the channels and
each with a subscriber to all of them: one run covers both cores
(`make test` runs it once, beside the pure-Python pass: .ci/suites)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest
import redis as redis_sync
from redis.crc import key_slot

from relay.testing import RedisClusterProcess
from tests.conftest import need_redis_server
from tests.rawclients import ws_connected

PER_MASTER = 3  # channels on each master
PERIOD = 0.1  # seconds between two publications of one channel
WAIT_LIMIT = 1.0  # the longest a healthy master's channel may wait, for a publish or a delivery


@pytest.fixture
def cluster_with_replicas():
    need_redis_server()
    with RedisClusterProcess(3, replicas=1) as c:
        yield c


def slot_owners(port: int) -> list[tuple[int, int, int]]:
    """(first slot, last slot, master port) from CLUSTER SLOTS."""
    rows = redis_sync.Redis(port=port).execute_command("CLUSTER", "SLOTS")
    return [(int(r[0]), int(r[1]), int(r[2][1])) for r in rows]


def owner_of(channel: str, owners: list[tuple[int, int, int]]) -> int:
    slot = key_slot(channel.encode())  # relay's keys and pub/sub channel carry the hash tag {channel}
    return next(port for lo, hi, port in owners if lo <= slot <= hi)


class Subscriber:
    """One raw connection subscribed to every channel: an SDK's behaviour per channel (2500: resubscribe,
    recovering; a temporary error: retry), what arrived and when."""

    def __init__(self, node, channels: list[str]) -> None:
        self.node, self.channels = node, channels
        self.got: dict[str, list[int]] = {c: [] for c in channels}
        self.at: dict[str, list[float]] = {c: [] for c in channels}
        self.epoch: dict[str, str] = {}
        self.resyncs: dict[str, int] = {c: 0 for c in channels}
        self.ws = None
        self._id = 0
        self._replies: dict[int, asyncio.Future] = {}

    async def start(self) -> None:
        self.ws = await ws_connected(self.node.ws_port, self.node.token("watcher"))
        self.reader = asyncio.create_task(self._read())
        for c in self.channels:
            await self.subscribe(c)

    async def _call(self, method: str, params: dict) -> dict:
        self._id += 1
        fut = self._replies[self._id] = asyncio.get_running_loop().create_future()
        await self.ws.send_cmds({"id": self._id, method: params})
        return await asyncio.wait_for(fut, 15)

    async def subscribe(self, channel: str) -> None:
        while True:
            params = {"channel": channel, "recoverable": True}
            if channel in self.epoch:
                last = self.got[channel][-1] if self.got[channel] else 0
                params.update(recover=True, offset=last, epoch=self.epoch[channel])
            r = await self._call("subscribe", params)
            if "subscribe" in r:
                break
            assert r["error"].get("temporary"), r
            await asyncio.sleep(0.2)
        r = r["subscribe"]
        self.epoch[channel] = r["epoch"]
        for p in r.get("publications", []):
            self._take(channel, p["offset"])

    def _take(self, channel: str, offset: int) -> None:
        self.got[channel].append(offset)
        self.at[channel].append(time.monotonic())

    async def _read(self) -> None:
        while True:
            msg = await self.ws.message(timeout=60)
            if msg == {}:
                await self.ws.send_text("{}")
            elif "id" in msg:
                fut = self._replies.pop(msg["id"], None)
                if fut is not None:
                    fut.set_result(msg)
            elif "push" in msg:
                push = msg["push"]
                if "pub" in push:
                    self._take(push["channel"], push["pub"]["offset"])
                elif push.get("unsubscribe", {}).get("code") == 2500:
                    self.resyncs[push["channel"]] += 1
                    asyncio.create_task(self.subscribe(push["channel"]))


class Publisher(threading.Thread):
    """Numbered publications to one channel through the server API, each with an idempotency key, retried
    until acknowledged; every attempt's outcome and duration."""

    def __init__(self, node, channel: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.node, self.channel, self.stop = node, channel, stop
        self.acked: list[int] = []
        self.attempts: list[tuple[float, float, str]] = []  # (start, seconds, "ok" / "429" / "error <code>")

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            body = json.dumps({"channel": self.channel, "data": i, "idempotency_key": f"{self.channel}:{i}"})
            req = urllib.request.Request(f"{self.node.api_url}/publish", method="POST", data=body.encode(),
                                         headers={"X-API-Key": self.node.api_key})
            t0 = time.monotonic()
            try:
                res = json.loads(urllib.request.urlopen(req, timeout=10).read())
                outcome = "ok" if "result" in res else f"error {res['error']['code']}"
            except urllib.error.HTTPError as e:
                outcome, res = str(e.code), {}
            except (urllib.error.URLError, TimeoutError) as e:
                outcome, res = f"error {e}", {}
            self.attempts.append((t0, time.monotonic() - t0, outcome))
            if outcome == "ok":
                self.acked.append(res["result"]["offset"])
                i += 1
                time.sleep(PERIOD)
            else:
                time.sleep(0.05)


@pytest.mark.both_cores
@pytest.mark.skipif(os.environ.get("RELAY_PUREPYTHON") == "1", reason="starts nodes of both cores: run once")
async def test_a_killed_master_stops_only_its_own_channels(cluster_with_replicas, relay_factory):
    cluster = cluster_with_replicas
    masters = cluster.master_ports()
    assert len(masters) == 3
    owners = slot_owners(masters[0])
    chans: dict[int, list[str]] = {p: [] for p in masters}
    while any(len(v) < PER_MASTER for v in chans.values()):
        ch = f"chat:{uuid.uuid4().hex[:8]}"
        port = owner_of(ch, owners)
        if len(chans[port]) < PER_MASTER:
            chans[port].append(ch)
    victim = masters[0]
    lost_master = set(chans[victim])
    healthy = [c for p in masters[1:] for c in chans[p]]
    everything = [c for v in chans.values() for c in v]
    cfg = {"broker": "redis", "redis_cluster": True, "redis_urls": [f"redis://127.0.0.1:{p}/0" for p in masters],
           "redis_prefix": f"f{uuid.uuid4().hex[:6]}", "namespaces": {"chat": {"history_size": 10000}}}
    nodes = [relay_factory(cfg, env={"RELAY_PUREPYTHON": "0"}), relay_factory(cfg, env={"RELAY_PUREPYTHON": "1"})]
    if os.environ.get("RELAY_EXPECT_COMPILED") == "1":
        assert "core=cython" in nodes[0].log(), "the compiled core did not load"
    watchers = [Subscriber(n, everything) for n in nodes]
    for w in watchers:
        await w.start()
    stop = threading.Event()
    publishers = {c: Publisher(nodes[i % 2], c, stop) for i, c in enumerate(everything)}
    for p in publishers.values():
        p.start()
    await asyncio.sleep(3)
    killed_at = time.monotonic()
    next(n for n in cluster.nodes if n.port == victim).proc.kill()  # kill -9, mid-traffic
    await asyncio.sleep(12)
    stop.set()
    for p in publishers.values():
        await asyncio.to_thread(p.join, 15)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all(
            set(publishers[c].acked) <= set(w.got[c]) for w in watchers for c in everything):
        await asyncio.sleep(0.2)

    for n in nodes:
        for ln in n.log().splitlines():
            if any(e in ln for e in ("backpressure", "broker_down", "broker_up", "broker_error")):
                print(ln[:300])
    slow = sorted((round(a[0] - killed_at, 2), round(a[1], 3), a[2], c) for c in healthy
                  for a in publishers[c].attempts if a[1] > 0.15)
    print("slow healthy attempts (s after the kill, seconds, outcome):", slow[:40])
    report = {}
    for c in everything:
        p = publishers[c]
        assert p.acked == list(range(1, len(p.acked) + 1)), (c, p.acked[:20])  # stored once each, in order
        for w in watchers:
            assert w.got[c] == p.acked, (c, c in lost_master, len(w.got[c]), len(p.acked))  # 0 lost, 0 repeated
    for c in healthy:
        p = publishers[c]
        during = [a for a in p.attempts if a[0] + a[1] >= killed_at]
        refused = [a for a in during if a[2] != "ok"]
        assert not refused, (c, refused[:5])  # never refused, never failed
        slowest = max(a[1] for a in during)
        gaps = [max(b - a for a, b in zip(w.at[c], w.at[c][1:], strict=False) if b >= killed_at) for w in watchers]
        report[c] = (round(slowest, 3), [round(g, 3) for g in gaps])
        assert slowest <= WAIT_LIMIT, report[c]
        assert max(gaps) <= WAIT_LIMIT + PERIOD, report[c]
        assert all(w.resyncs[c] == 0 for w in watchers), c
    victims = {c: (sum(1 for a in publishers[c].attempts if a[2] != "ok"),
                   round(max(a[1] for a in publishers[c].attempts), 2)) for c in lost_master}
    print(f"master killed: healthy channels (slowest publish s, longest delivery gap s per node): {report}; "
          f"the dead master's channels (failed attempts, slowest attempt s): {victims}")
    for w in watchers:
        w.reader.cancel()

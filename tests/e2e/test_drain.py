"""SIGTERM drains: readiness turns false, listeners close, clients leave with 3001 spread over the
drain window, after every message queued for them; the process exits within drain_window + 5 s."""

import asyncio
import time
import urllib.error
import urllib.request
import uuid

import pytest
import websockets

from tests.rawclients import RawTCP

WINDOW = 3.0
N_WS = 24


def readyz(r) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{r.api_port}/readyz", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Subscriber:
    """A real WebSocket client (the websockets library) that records every publication and its close."""

    def __init__(self, r, user: str, channel: str) -> None:
        self.r, self.user, self.channel = r, user, channel
        self.seqs: list[int] = []
        self.close_code: int | None = None
        self.closed_at = 0.0
        self.abnormal = False

    async def run(self, ready: asyncio.Event) -> None:
        async with websockets.connect(self.r.ws_url, max_size=None) as ws:
            await ws.send(f'{{"id":1,"connect":{{"token":"{self.r.token(self.user)}"}}}}')
            await ws.send(f'{{"id":2,"subscribe":{{"channel":"{self.channel}"}}}}')
            replies = 0
            try:
                async for message in ws:
                    for line in message.split("\n"):
                        if line == "{}":
                            await ws.send("{}")
                        elif '"pub"' in line:
                            self.seqs.append(int(line.split('"seq":')[1].split("}")[0]))
                        elif '"id"' in line:
                            replies += 1
                            if replies == 2:
                                ready.set()
            except websockets.ConnectionClosedError:
                self.abnormal = ws.close_code in (None, 1006)
            self.close_code = ws.close_code
            self.closed_at = time.monotonic()


@pytest.mark.timeout(60)
async def test_sigterm_drains_every_client_with_reconnect_code(relay_factory):
    r = relay_factory({"drain_window": WINDOW, "client_queue_max_size": 8_000_000})
    ch = f"news:{uuid.uuid4().hex[:8]}"  # anonymous-readable, no join/leave
    subs = [Subscriber(r, f"u{i}", ch) for i in range(N_WS)]
    readies = [asyncio.Event() for _ in subs]
    tasks = [asyncio.create_task(s.run(e)) for s, e in zip(subs, readies, strict=True)]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in readies)), 15)
    tcp = await RawTCP.open(r.tcp_port)
    assert "connect" in await tcp.call("connect", {"token": r.token("tcp-user")})
    assert "subscribe" in await tcp.call("subscribe", {"channel": ch})
    assert readyz(r) == (200, '{"status":"ready"}')

    # a burst queued just before SIGTERM (every message must still arrive), then publications
    # through the drain from the HTTP API, which keeps answering while clients leave
    burst = 300
    await asyncio.to_thread(r.api, "broadcast", {"channels": [ch], "data": {"seq": 0}})
    for seq in range(1, burst):
        await asyncio.to_thread(r.api, "publish", {"channel": ch, "data": {"seq": seq}})
    term_at = time.monotonic()
    r.proc.terminate()
    seq = burst
    draining_seen = refused = False
    while time.monotonic() - term_at < WINDOW - 0.5:
        try:
            await asyncio.to_thread(r.api, "publish", {"channel": ch, "data": {"seq": seq}})
            seq += 1
        except (urllib.error.URLError, ConnectionError):
            break
        if not draining_seen:
            draining_seen = readyz(r) == (503, '{"status":"draining"}')
        if not refused:
            try:
                await asyncio.wait_for(asyncio.open_connection("127.0.0.1", r.ws_port), 2)
            except OSError:
                refused = True  # the listener is closed: new clients go to other nodes
        await asyncio.sleep(0.02)
    assert draining_seen and refused

    await asyncio.wait_for(asyncio.gather(*tasks), WINDOW + 10)
    tcp_seqs = []
    while True:
        push = await tcp.push(timeout=WINDOW + 10)
        if "disconnect" in push:
            assert push["disconnect"] == {"code": 3001, "reason": "shutdown", "reconnect": True}
            break
        tcp_seqs.append(push["pub"]["data"]["seq"])
    exit_code = await asyncio.to_thread(r.proc.wait, WINDOW + 6)
    assert exit_code == 0
    assert time.monotonic() - term_at < WINDOW + 5

    for s in subs + [None]:
        seqs = s.seqs if s is not None else tcp_seqs
        # no abnormal close; the reconnect code; every queued message, in order, without a gap
        if s is not None:
            assert not s.abnormal and s.close_code == 3001, (s.user, s.close_code)
        assert seqs[:burst] == list(range(burst)), "the burst queued before SIGTERM arrived whole"
        assert seqs == list(range(len(seqs))), "in order, without a gap"
    # spread over the window (jitter), not all at once
    times = sorted(s.closed_at - term_at for s in subs)
    assert times[-1] - times[0] > WINDOW / 3, times
    assert times[-1] < WINDOW + 1.5, times
    # later leavers saw publications made during the drain
    assert max(len(s.seqs) for s in subs) > burst
    assert '"event":"draining"' in r.log() and '"event":"stopped"' in r.log()

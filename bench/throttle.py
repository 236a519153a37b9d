"""A bandwidth-limited TCP proxy: the "bad network" in front of some benchmark clients (``lanes.py``).

Each accepted client connection gets its own upstream connection to the target. Client -> target
bytes are forwarded as they come. Target -> client bytes go through a per-connection token bucket
(``rate`` bytes/s, refilled every ``TICK`` s, at most ``burst`` bytes at once) and the proxy pushes
back on the target the way a slow network does:

* it stops reading from the target while more than ``buffer_limit`` bytes wait for the client
  (and reads again below half of it);
* its upstream socket has a small ``SO_RCVBUF`` (set before connect, so the TCP window is small
  from the handshake on). Without it, loopback kernel buffers of several MB would absorb the
  backlog and the server would never see its writes pause.

When the target closes, what it had sent still reaches the client at the same rate, then the
client side is closed; when the client closes, the upstream connection is closed at once.

Run in a process of its own with :func:`start` (pinned to the generator core; it dies with its
parent), or by hand: ``python bench/throttle.py --target 127.0.0.1:8000 --rate 8192``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import run_worker  # noqa: E402

__all__ = ["ThrottleProxy", "start", "TICK"]

TICK = 0.02  #: seconds between token-bucket refills (and writes toward the clients)
#: TCP_MAXSEG of the upstream sockets. Loopback's MSS is 64 KiB, and Linux sizes a sender's socket buffer
#: by MSS x congestion window (2-4 MiB on loopback), which would hide minutes of backlog from the server;
#: with an Internet-like MSS the target's send buffer stays at tens of KiB, as toward a real slow client.
MSS = 1460


class _Pair:
    """One proxied connection: the accepted client side and its upstream (target) side."""

    __slots__ = ("proxy", "client", "upstream", "to_upstream", "buf", "tokens", "paused", "upstream_done",
                 "closed")

    def __init__(self, proxy: ThrottleProxy, client: asyncio.Transport) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: asyncio.Transport | None = None
        self.to_upstream: list[bytes] = []  # client bytes that arrived before the upstream connected
        self.buf = bytearray()              # target bytes waiting for the client's bandwidth
        self.tokens = float(proxy.burst)
        self.paused = False
        self.upstream_done = False
        self.closed = False

    # client -> target: free
    def from_client(self, data: bytes) -> None:
        self.proxy.stats["bytes_to_target"] += len(data)
        if self.upstream is None:
            self.to_upstream.append(data)
        elif not self.upstream_done and not self.upstream.is_closing():
            self.upstream.write(data)
        # else the target closed its side: what the client still sends (a late pong) has nowhere to go,
        # while the client keeps getting what the target sent before it closed, at the same rate

    # target -> client: buffered, released by pump()
    def from_upstream(self, data: bytes) -> None:
        self.buf += data
        st = self.proxy.stats
        if len(self.buf) > st["max_buffered"]:
            st["max_buffered"] = len(self.buf)
        if not self.paused and len(self.buf) > self.proxy.buffer_limit and self.upstream is not None:
            self.paused = True
            st["upstream_pauses"] += 1
            self.upstream.pause_reading()

    def pump(self, dt: float) -> None:
        p = self.proxy
        self.tokens = min(float(p.burst), self.tokens + p.rate * dt)
        n = min(int(self.tokens), len(self.buf))
        if n > 0:
            self.client.write(bytes(self.buf[:n]))
            del self.buf[:n]
            self.tokens -= n
            p.stats["bytes_to_client"] += n
        if self.paused and len(self.buf) <= p.buffer_limit // 2 and self.upstream is not None:
            self.paused = False
            self.upstream.resume_reading()
        if self.upstream_done and not self.buf:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.proxy.pairs.discard(self)
        self.client.close()
        if self.upstream is not None:
            self.upstream.close()


class _Upstream(asyncio.Protocol):
    def __init__(self, pair: _Pair) -> None:
        self.pair = pair

    def connection_made(self, transport) -> None:
        pair = self.pair
        if pair.closed:
            transport.close()
            return
        pair.upstream = transport
        for data in pair.to_upstream:
            transport.write(data)
        pair.to_upstream = []

    def data_received(self, data: bytes) -> None:
        self.pair.from_upstream(data)

    def eof_received(self) -> bool:
        self.pair.upstream_done = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.pair.upstream_done = True  # the client still gets what was sent, at the same rate


class _Client(asyncio.Protocol):
    def __init__(self, proxy: ThrottleProxy) -> None:
        self.proxy = proxy
        self.pair: _Pair | None = None

    def connection_made(self, transport) -> None:
        self.pair = _Pair(self.proxy, transport)
        self.proxy.pairs.add(self.pair)
        self.proxy.stats["connections"] += 1
        asyncio.ensure_future(self.proxy._connect_upstream(self.pair))

    def data_received(self, data: bytes) -> None:
        self.pair.from_client(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pair.close()


class ThrottleProxy:
    """Listen on 127.0.0.1:``port`` (0: any free port) and forward to ``target`` at ``rate`` bytes/s per
    connection toward the client (see the module docstring)."""

    def __init__(self, target: tuple[str, int], rate: float, rcvbuf: int = 4096, buffer_limit: int = 4096,
                 burst: int | None = None, mss: int = MSS) -> None:
        self.target = target
        self.mss = mss
        self.rate = float(rate)
        self.rcvbuf = rcvbuf
        self.buffer_limit = buffer_limit
        self.burst = burst if burst is not None else max(1024, int(self.rate * TICK * 2))
        self.pairs: set[_Pair] = set()
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self.stats: dict[str, Any] = {"connections": 0, "upstream_failures": 0, "bytes_to_client": 0,
                                      "bytes_to_target": 0, "upstream_pauses": 0, "max_buffered": 0,
                                      "rcvbuf_effective": None}
        self._pump: asyncio.Task | None = None

    async def start(self, port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Client(self), "127.0.0.1", port, backlog=4096)
        self.port = self.server.sockets[0].getsockname()[1]
        self._pump = asyncio.ensure_future(self._pump_loop())
        return self.port

    async def _connect_upstream(self, pair: _Pair) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)  # before connect: small window
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.mss:  # announced in the SYN: the target's side segments (and sizes its send buffer) by it
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, self.mss)
            self.stats["rcvbuf_effective"] = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            sock.setblocking(False)
            await loop.sock_connect(sock, self.target)
            await loop.create_connection(lambda: _Upstream(pair), sock=sock)
        except OSError:
            sock.close()
            self.stats["upstream_failures"] += 1
            pair.close()

    async def _pump_loop(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            dt, last = now - last, now
            for pair in list(self.pairs):
                pair.pump(dt)

    def snapshot(self) -> dict[str, Any]:
        return {**self.stats, "open": len(self.pairs), "buffered": sum(len(p.buf) for p in self.pairs)}

    def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        if self.server is not None:
            self.server.close()
        for pair in list(self.pairs):
            pair.close()


async def _serve(pipe: Connection, target: tuple[str, int], rate: float, rcvbuf: int, buffer_limit: int) -> None:
    from scenarios_common import serve_pipe

    proxy = ThrottleProxy(target, rate, rcvbuf, buffer_limit)
    port = await proxy.start()
    pipe.send(("ready", port))

    async def handle(cmd: str, *args: Any) -> tuple:
        if cmd == "stats":
            return ("stats", proxy.snapshot())
        return ("error", f"unknown command {cmd!r}")

    try:
        await serve_pipe(pipe, handle)
    finally:
        proxy.close()


def _proxy_process(pipe: Connection, target: tuple[str, int], rate: float, rcvbuf: int, buffer_limit: int) -> None:
    run_worker(_serve, pipe, target, rate, rcvbuf, buffer_limit)


def start(target: tuple[str, int], rate: float, rcvbuf: int = 4096, buffer_limit: int = 4096):
    """Start the proxy in its own process (pinned to the generator core, dies with this process).

    Returns ``(pool, port)``: ``pool.all("stats")`` -> ``[("stats", {...})]``; ``pool.close()`` stops it.
    """
    from scenarios_common import WorkerPool

    pool = WorkerPool(_proxy_process, [(target, rate, rcvbuf, buffer_limit)])
    (_, port), = pool.recv_all(30)
    return pool, port


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="bandwidth-limited TCP proxy", epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, help="HOST:PORT to forward to")
    ap.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    ap.add_argument("--rate", type=float, default=8192, help="bytes/s toward each client (default 8192)")
    ap.add_argument("--rcvbuf", type=int, default=4096, help="SO_RCVBUF of each upstream socket")
    ap.add_argument("--buffer-limit", type=int, default=4096, help="bytes buffered per client before "
                    "the proxy stops reading from the target")
    args = ap.parse_args(argv)
    host, port = args.target.rsplit(":", 1)

    async def run() -> None:
        proxy = ThrottleProxy((host, int(port)), args.rate, args.rcvbuf, args.buffer_limit)
        print(f"listening on 127.0.0.1:{await proxy.start(args.port)} -> {args.target} at {args.rate:g} B/s",
              flush=True)
        while True:
            await asyncio.sleep(5)
            print(proxy.snapshot(), flush=True)

    import uvloop

    try:
        uvloop.run(run())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Self-test of tests/tcpproxy.py against a real echo server."""

from __future__ import annotations

import socket
import socketserver
import threading
import time

import pytest

from tests.tcpproxy import TcpProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while True:
            try:
                data = self.request.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.request.sendall(data)


@pytest.fixture
def echo_server():
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def _roundtrip(port: int, payload: bytes) -> tuple[socket.socket, bytes]:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return s, got


def _is_dropped(s: socket.socket) -> bool:
    """True when the peer closed or reset the connection."""
    s.settimeout(5)
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, ConnectionAbortedError):
        return True


def _wait(cond, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def test_proxy_forwards_cuts_and_pauses(echo_server):
    with TcpProxy("127.0.0.1", echo_server) as proxy:
        assert proxy.port > 0
        big = bytes(range(256)) * 4096  # 1 MiB: exercises flow control
        s1, got = _roundtrip(proxy.port, big)
        assert got == big
        s2, got = _roundtrip(proxy.port, b"hello")
        assert got == b"hello"
        assert _wait(lambda: proxy.connections == 2)

        assert proxy.cut() == 2
        assert _is_dropped(s1) and _is_dropped(s2)
        s1.close()
        s2.close()
        assert proxy.connections == 0

        # Still accepting after a cut.
        s3, got = _roundtrip(proxy.port, b"again")
        assert got == b"again"

        # Paused: new connections are dropped at once, existing ones keep working.
        proxy.pause()
        # (On loopback the reset can even beat connect() to the finish.)
        for _ in range(3):
            try:
                s4 = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
            except ConnectionError:
                continue
            try:
                s4.sendall(b"x")
            except OSError:
                pass
            assert _is_dropped(s4)
            s4.close()
        assert proxy.connections == 1
        s3.sendall(b"still")
        assert s3.recv(16) == b"still"

        proxy.resume()
        s5, got = _roundtrip(proxy.port, b"resumed")
        assert got == b"resumed"
        s3.close()
        s5.close()
    # Stopped: refused.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2).close()


def test_proxy_cut_sends_rst(echo_server):
    with TcpProxy("127.0.0.1", echo_server) as proxy:
        s, got = _roundtrip(proxy.port, b"ping")
        assert got == b"ping"
        proxy.cut()
        s.settimeout(5)
        with pytest.raises((ConnectionResetError, ConnectionAbortedError)):
            # A reset peer makes recv raise (or, once the RST is consumed, send raise).
            if s.recv(1) == b"":
                s.sendall(b"x")
                time.sleep(0.05)
                s.sendall(b"x")
        s.close()


async def test_proxy_from_async_test(echo_server):
    import asyncio

    proxy = TcpProxy("127.0.0.1", echo_server)
    proxy.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"async")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"async"
        assert await proxy.acut() == 1
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 5)
        writer.close()
    finally:
        await proxy.astop()


def test_blackhole_holds_everything_silently_and_heal_delivers_it(echo_server):
    with TcpProxy("127.0.0.1", echo_server) as proxy:
        s, _ = _roundtrip(proxy.port, b"before")
        proxy.blackhole()
        s.sendall(b"held")
        s.settimeout(0.5)
        with pytest.raises(TimeoutError):
            s.recv(100)  # nothing comes back, and the connection stays open
        late = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)  # accepted, held
        late.sendall(b"new")
        proxy.heal()
        s.settimeout(5)
        late.settimeout(5)
        assert s.recv(100) == b"held"
        assert late.recv(100) == b"new"
        s.close()
        late.close()

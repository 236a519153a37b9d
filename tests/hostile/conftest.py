"""Attacks on a real relay process, and how much of it they may take (docs/architecture.md,
"Where untrusted input is stopped"): RSS sampled from /proc while the attack runs."""

from __future__ import annotations

import base64
import os
import socket
import struct
import threading
import time

import pytest

MiB = 1 << 20
#: one connection's memory budget with the default limits (docs/architecture.md)
CONNECTION_BUDGET = int(1.8 * MiB)
#: what the process may grow by whatever the attack: allocator arenas, the interpreter warming up paths
ALLOWANCE = 40 * MiB


def rss(relay) -> int:
    with open(f"/proc/{relay.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class PeakRSS:
    """Samples a relay's RSS every 20 ms in a thread: ``peak - start`` is what an attack cost."""

    def __init__(self, relay) -> None:
        self.relay = relay
        self.start = rss(relay)
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, rss(self.relay))
            except (OSError, RuntimeError):
                return

    def growth(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss(self.relay))
        return self.peak - self.start


def cpu_seconds(relay) -> float:
    """The relay process's CPU time so far (utime + stime)."""
    with open(f"/proc/{relay.pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(relay, quiet: float = 0.3, limit: float = 30.0) -> None:
    """Until the relay process stops using CPU for ``quiet`` seconds: it has read what was sent to it."""
    deadline = time.monotonic() + limit
    last = cpu_seconds(relay)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = cpu_seconds(relay)
        if now - last < quiet * 0.05:
            return
        last = now


def frame(payload: bytes, opcode: int = 0x1, fin: bool = True) -> bytes:
    """A masked client frame (all-zero mask: the payload goes as is, which relay must accept)."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = bytes((b0, 0x80 | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, 0x80 | 127)) + struct.pack("!Q", n)
    return head + b"\0\0\0\0" + payload


def ws_socket(port: int, rcvbuf: int | None = None) -> socket.socket:
    """A blocking socket that has completed relay's WebSocket handshake (no token: none is needed yet)."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head[:80]
    return s


def send_for(s: socket.socket, data: bytes, seconds: float, limit: int) -> int:
    """Send ``data`` over and over for ``seconds`` or ``limit`` bytes; the bytes sent before relay closed."""
    sent, deadline = 0, time.monotonic() + seconds
    s.settimeout(0.5)
    while sent < limit and time.monotonic() < deadline:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            break
        except TimeoutError:  # relay is not reading (it paused this socket): keep trying until the end
            continue
        sent += len(data)
    return sent


@pytest.fixture
def no_tracebacks():
    """Relays given to this fixture must not have logged an ERROR or a traceback by the end of the test."""
    relays = []
    yield relays.append
    for r in relays:
        log = r.log()
        assert "Traceback" not in log and '"level":"error"' not in log, log[-3000:]

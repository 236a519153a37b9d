"""A TCP proxy for tests: forward 127.0.0.1:<port> to a target, and cut connections at will.

The proxy runs its own asyncio loop in a daemon thread, so sync tests and async
tests (on any loop) use it the same way::

    with TcpProxy("127.0.0.1", relay.ws_port) as proxy:     # or proxy.start() / proxy.stop()
        url = f"ws://127.0.0.1:{proxy.port}/connection/websocket"
        ...
        proxy.cut()      # drop every current connection abruptly (RST to both sides)
        proxy.pause()    # new connections are accepted and reset at once
        proxy.resume()   # ... and forwarded again
        proxy.blackhole()  # a silent network cut: nothing is forwarded, nothing is closed, nobody is told
        proxy.heal()       # ... forwarding again, what was held back first (as TCP retransmits after a cut)

Every control method blocks until the proxy loop has done the work (a few
milliseconds); async tests that prefer not to block their loop can await the
``a``-prefixed twins (``await proxy.acut()``).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from concurrent.futures import Future
from typing import Any
from collections.abc import Coroutine

__all__ = ["TcpProxy"]

_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, timeout 0: close() sends RST
_CHUNK = 65536


def _reset(writer: asyncio.StreamWriter | None) -> None:
    """Close abruptly: RST instead of FIN where the platform allows it."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        except OSError:
            pass
    writer.transport.abort()


class _Conn:
    __slots__ = ("client", "upstream", "tasks")

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task] = []

    def reset(self) -> None:
        _reset(self.client)
        _reset(self.upstream)
        for t in self.tasks:
            t.cancel()


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1",
                 listen_port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.port = listen_port
        self.paused = False
        self.accepted = 0   # connections accepted (including those reset while paused)
        self.cuts = 0       # connections dropped by cut()
        self._conns: set[_Conn] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._flowing: asyncio.Event | None = None  # cleared while blackholed

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> int:
        """Start listening; returns the port."""
        if self._thread is not None:
            return self.port
        self._loop = asyncio.new_event_loop()
        ready: Future = Future()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._flowing = asyncio.Event()
            self._flowing.set()
            try:
                self._server = self._loop.run_until_complete(
                    asyncio.start_server(self._handle, self.listen_host, self.port))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as e:  # noqa: BLE001 - report to start()
                ready.set_exception(e)
                return
            ready.set_result(self.port)
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=run, name=f"tcpproxy->{self.target_port}", daemon=True)
        self._thread.start()
        try:
            return ready.result(10)
        except BaseException:
            self._thread = None
            raise

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        try:
            self._call(self._astop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> "TcpProxy":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- control (blocking) ------------------------------------------------------------------

    def cut(self) -> int:
        """Drop every current connection (RST both sides); returns how many. Keeps accepting."""
        return self._call(self._acut())

    def pause(self) -> None:
        """New connections are accepted and reset at once until resume()."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def blackhole(self) -> None:
        """Stop forwarding in both directions without closing anything, as a network that drops every
        packet: each side's data waits in buffers (the sender's, then the kernel's), new connections are
        accepted and held, and no side learns anything. heal() forwards everything held, then carries on."""
        self._call(self._set_flowing(False))

    def heal(self) -> None:
        self._call(self._set_flowing(True))

    async def _set_flowing(self, on: bool) -> None:
        assert self._flowing is not None
        if on:
            self._flowing.set()
        else:
            self._flowing.clear()

    @property
    def connections(self) -> int:
        """How many connections are currently forwarded."""
        return len(self._conns)

    # -- control (awaitable, from any other loop) --------------------------------------------

    async def acut(self) -> int:
        return await asyncio.wrap_future(self._submit(self._acut()))

    async def astop(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.stop)

    # -- internals ---------------------------------------------------------------------------

    def _submit(self, coro: Coroutine) -> Future:
        if self._loop is None or self._thread is None:
            coro.close()
            raise RuntimeError("TcpProxy is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _call(self, coro: Coroutine) -> Any:
        return self._submit(coro).result(10)

    async def _acut(self) -> int:
        conns = list(self._conns)
        self._conns.clear()
        for c in conns:
            c.reset()
        self.cuts += len(conns)
        await asyncio.sleep(0)  # let the cancelled pumps unwind
        return len(conns)

    async def _astop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._acut()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2)
            except TimeoutError:
                pass

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.paused:
            _reset(writer)
            return
        conn = _Conn(writer)
        self._conns.add(conn)
        await self._flowing.wait()  # blackholed: the connection is held, as a SYN that gets no answer
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            self._conns.discard(conn)
            _reset(writer)
            return
        if conn not in self._conns:  # cut while connecting upstream
            _reset(up_writer)
            return
        conn.upstream = up_writer
        conn.tasks = [asyncio.create_task(self._pump(reader, up_writer, self._flowing)),
                      asyncio.create_task(self._pump(up_reader, writer, self._flowing))]
        try:
            await asyncio.gather(*conn.tasks, return_exceptions=True)
        finally:
            if conn in self._conns:  # ended by a peer, not by cut(): close gracefully
                self._conns.discard(conn)
                for w in (writer, up_writer):
                    if not w.is_closing():
                        w.close()

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, flowing: asyncio.Event) -> None:
        try:
            while True:
                data = await src.read(_CHUNK)
                if not flowing.is_set():
                    await flowing.wait()  # held while blackholed; no further read fills the kernel's buffers
                if not data:
                    break
                dst.write(data)
                await dst.drain()
            if dst.can_write_eof() and not dst.is_closing():
                dst.write_eof()  # half-close: pass the FIN on
        except (ConnectionError, OSError):
            _reset(dst)

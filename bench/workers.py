"""Generator worker processes, and what the picows clients in them do alike (every benchmark's load generator).

* :class:`WorkerPool`: the coordinator's side: worker processes started with ``multiprocessing`` (spawn), one
  pipe each, driven by ``(command, *args)`` tuples;
* :func:`serve_pipe`: the worker's side of that protocol, on the worker's event loop (the worker pins itself
  and dies with the coordinator: ``common.run_worker``);
* in a worker, for its picows clients: :func:`open_all` (many connections, a bounded number of handshakes under
  way), :func:`answer_close` (a close frame from the server) and :func:`disconnect_all`.

picows is imported by the functions that use it: the coordinator, which only holds a pool, does not load it.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["WorkerPool", "serve_pipe", "open_all", "answer_close", "disconnect_all"]


class WorkerPool:
    """Generator worker processes started with ``multiprocessing`` (spawn), one pipe each.

    ``target(pipe, *args_i)`` runs in worker i (it must pin itself, see :func:`serve_pipe`).
    """

    def __init__(self, target: Callable[..., None], args_per_worker: list[tuple]) -> None:
        ctx = mp.get_context("spawn")
        self.procs: list[mp.process.BaseProcess] = []
        self.pipes: list[Connection] = []
        for args in args_per_worker:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=target, args=(child, *args), daemon=True)
            p.start()
            child.close()
            self.procs.append(p)
            self.pipes.append(parent)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def recv_all(self, timeout: float) -> list[tuple]:
        deadline = time.monotonic() + timeout
        out = []
        for pipe in self.pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError("a load generator worker did not answer in time")
            out.append(pipe.recv())
        return out

    def all(self, *cmd: Any, timeout: float = 120.0) -> list[tuple]:
        """Send ``cmd`` to every worker, return their replies (blocking: use ``asyncio.to_thread``)."""
        for pipe in self.pipes:
            pipe.send(cmd)
        return self.recv_all(timeout)

    def each(self, cmds: list[tuple], timeout: float = 120.0) -> list[tuple]:
        """Send ``cmds[i]`` to worker i, return their replies."""
        for pipe, cmd in zip(self.pipes, cmds, strict=True):
            pipe.send(cmd)
        return self.recv_all(timeout)

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("exit",))
            except OSError:
                pass
        for pipe in self.pipes:
            try:
                if pipe.poll(10):
                    pipe.recv()
            except (OSError, EOFError):
                pass
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(5)
        self.procs, self.pipes = [], []


async def serve_pipe(pipe: Connection, handle: Callable[..., Awaitable[Any]]) -> None:
    """Worker side: answer each ``(cmd, *args)`` from ``pipe`` with ``await handle(cmd, *args)``.

    Commands are read on the event loop (``add_reader``), so the worker's connections keep
    running while it waits. Commands are handled one at a time (a long job, e.g. publishing
    for a step, should be started as a task by ``handle``, which then returns at once).
    ``("exit",)`` ends the loop after the reply ``("bye",)``.
    """
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue = asyncio.Queue()
    loop.add_reader(pipe.fileno(), lambda: inbox.put_nowait(pipe.recv()))
    os.set_blocking(pipe.fileno(), True)  # add_reader made it non-blocking; replies must not fail
    while True:
        cmd, *args = await inbox.get()
        if cmd == "exit":
            pipe.send(("bye",))
            return
        pipe.send(await handle(cmd, *args))


async def open_all(n: int, listener: Callable[[int, asyncio.Future], Any], url: str, concurrency: int = 64,
                   **options: Any) -> tuple[list, list[str]]:
    """Open ``n`` picows connections to ``url``, ``concurrency`` handshakes at a time: connection k's listener is
    ``listener(k, ready)``, open once it sets the future ``ready`` (30 s at most, like the handshake).
    ``options`` go to ``ws_connect``. Returns (the open listeners, one error line per failed connection)."""
    from picows import ws_connect

    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(concurrency)
    opened: list = []
    errors: list[str] = []

    async def one(k: int) -> None:
        async with sem:
            ready = loop.create_future()
            try:
                _, lis = await ws_connect(lambda: listener(k, ready), url, enable_auto_ping=False,
                                          websocket_handshake_timeout=30, **options)
                await asyncio.wait_for(ready, 30)
                opened.append(lis)
            except Exception as e:  # reported, the run decides whether to go on
                errors.append(f"{type(e).__name__}: {e}")

    await asyncio.gather(*(one(k) for k in range(n)))
    return opened, errors


def answer_close(transport: Any, frame: Any) -> int:
    """A close frame from the server: answered with the same code, the connection dropped; returns the code."""
    code = frame.get_close_code()
    transport.send_close(code)
    transport.disconnect()
    return int(getattr(code, "value", code))


async def disconnect_all(listeners: Iterable[Any], graceful: bool = False) -> None:
    """Disconnect every listener that has a transport, then give the loop 0.2 s to let them go."""
    for s in listeners:
        if s.transport is not None:
            s.transport.disconnect(graceful=graceful)
    await asyncio.sleep(0.2)

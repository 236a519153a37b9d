"""The "naive websockets relay" peer of BENCHMARKING.md: a broadcast relay on websockets + uvloop.

What it does, deliberately without any cleverness (the same as ``picows_relay.py``):

* every WebSocket client that connects to any path other than ``/pub`` is a
  subscriber;
* a client on ``/pub`` is the publisher and is not a subscriber;
* each text message received from the publisher is split on ``\\n`` (the
  publisher batches the messages of one tick in one frame) and each line is
  sent to every subscriber with ``websockets.broadcast(SUBSCRIBERS, line)``: one
  text frame and one socket write per message per subscriber, no coalescing.

It uses the current asyncio implementation (``websockets.asyncio.server``,
websockets >= 13) with its defaults except ``compression=None`` (the benchmark's
clients never offer permessage-deflate, so this only makes the choice explicit)
and a listen backlog of 4096: keepalive pings every 20 s (``ping_interval``) with
a 20 s ``ping_timeout``, ``max_queue`` 16, ``write_limit`` 32 KiB (not used by
``broadcast``, which writes whatever the buffers hold: no backpressure).

Run: ``taskset -c 0 .venv/bin/python bench/peers/websockets_relay.py --port 9000``.
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop
import websockets
from websockets.asyncio.server import ServerConnection, broadcast, serve

__all__ = ["SUBSCRIBERS", "handler", "main"]

#: every connected subscriber
SUBSCRIBERS: set[ServerConnection] = set()


async def handler(websocket: ServerConnection) -> None:
    """The publisher (path ``/pub``) broadcasts each line; anyone else is a subscriber."""
    if websocket.request is not None and websocket.request.path.rstrip("/") == "/pub":
        try:
            async for message in websocket:
                if isinstance(message, str):
                    for line in message.split("\n"):
                        if line:
                            broadcast(SUBSCRIBERS, line)
        except websockets.ConnectionClosed:
            pass
        return
    SUBSCRIBERS.add(websocket)
    try:
        async for _ in websocket:  # subscribers send nothing; keep reading until they leave
            pass
    except websockets.ConnectionClosed:
        pass
    finally:
        SUBSCRIBERS.discard(websocket)


async def _serve(host: str, port: int) -> None:
    async with serve(handler, host, port, compression=None, backlog=4096) as server:
        print(f"websockets {websockets.__version__} relay listening on ws://{host}:{port}/"
              " (publisher: /pub)", flush=True)
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9000)
    args = ap.parse_args()
    try:
        uvloop.run(_serve(args.host, args.port))
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass


if __name__ == "__main__":
    main()

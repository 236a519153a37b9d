"""The "naive picows relay" peer of BENCHMARKING.md: a broadcast relay on picows + uvloop.

What it does, deliberately without any cleverness:

* every WebSocket client that connects to any path other than ``/pub`` is a
  subscriber;
* a client on ``/pub`` is the publisher and is not a subscriber;
* each text message received from any client is split on ``\\n`` (so the
  publisher may batch several messages in one frame, as it does for relay, whose
  protocol allows up to 100 newline-separated commands per message), and each
  line is re-sent as its own text frame with a loop of
  ``transport.send(WSMsgType.TEXT, line)`` over every subscriber: one frame and
  one socket write per message per subscriber, no coalescing.

Run: ``taskset -c 0 .venv/bin/python bench/peers/picows_relay.py --port 9000``.
"""

from __future__ import annotations

import argparse

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

__all__ = ["Subscriber", "Publisher", "main"]

#: every connected subscriber's transport (dict: O(1) removal, insertion order kept)
SUBSCRIBERS: dict[WSTransport, None] = {}


def _broadcast(payload: bytes) -> None:
    """Send each line of ``payload`` to every subscriber, one frame per line."""
    subs = SUBSCRIBERS
    for line in payload.split(b"\n") if b"\n" in payload else (payload,):
        if not line:
            continue
        for t in subs:
            t.send(WSMsgType.TEXT, line)


class Publisher(WSListener):
    """The publisher (path ``/pub``): broadcasts what it sends, receives nothing."""

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            _broadcast(frame.get_payload_as_bytes())
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()


class Subscriber(Publisher):
    """A subscriber; whatever it sends is broadcast too (it is a plain broadcast relay)."""

    def on_ws_connected(self, transport: WSTransport) -> None:
        SUBSCRIBERS[transport] = None

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        SUBSCRIBERS.pop(transport, None)


def _listener(request: WSUpgradeRequest) -> WSListener:
    return Publisher() if request.path.rstrip(b"/") == b"/pub" else Subscriber()


async def _serve(host: str, port: int) -> None:
    server = await ws_create_server(_listener, host, port, backlog=4096, reuse_address=True)
    print(f"picows relay listening on ws://{host}:{port}/ (publisher: /pub)", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9000)
    args = ap.parse_args()
    try:
        uvloop.run(_serve(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

"""gevent-friendly clients for relay: its WebSocket JSON protocol, its raw TCP msgpack protocol and its
HTTP server API, for the Locust users in ``loadtests/users.py``.

Both protocol clients share ``RelayClient``: commands get an ``id``, a reader greenlet per connection
hands each reply to the greenlet waiting for it (``call``) and every push to ``on_push``; the server's
ping (an empty command ``{}``) is answered by the reader; the end of the connection (a WebSocket close
code, a TCP ``disconnect`` push, or a dropped socket) goes to ``on_close`` as a ``Disconnected``.
Sockets are the standard library's, which Locust's gevent monkey-patching makes cooperative; nothing
here imports asyncio. ``Stream`` keeps a recoverable subscription's position (offset, epoch) so a
reconnect can recover it and gaps can be counted as lost publications.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import gevent
import msgpack
import websocket
from gevent.event import AsyncResult
from gevent.lock import Semaphore

__all__ = ["RelayError", "Disconnected", "RelayClient", "WSClient", "TCPClient", "Stream", "ApiClient",
           "api_client", "connect_token"]

CALL_TIMEOUT = 10.0
# WebSocket close codes after which a client does not come back (a bug of ours, not a relay event)
_NO_RECONNECT_WS = frozenset({1002, 1003, 1007, 1009})


class RelayError(Exception):
    """An error reply (docs/protocol.md "Errors"), from a client command or the server API."""

    def __init__(self, code: int, message: str = "") -> None:
        self.code = code
        self.message = message
        super().__init__(f"error {code} {message}".rstrip())


class Disconnected(Exception):
    """The connection ended: ``code`` is the WebSocket close code or the TCP ``disconnect`` push's code,
    0 when the socket dropped without one."""

    def __init__(self, code: int = 0, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(self.label)

    @property
    def label(self) -> str:
        """The name the load test reports it under: '3001 shutdown', or the socket error."""
        return f"{self.code} {self.reason}".rstrip() if self.code else (self.reason or "connection lost")

    @property
    def reconnect(self) -> bool:
        """Whether a client comes back (3000-3499 and dropped sockets yes, 3500-3999 no)."""
        return not (3500 <= self.code < 4000 or 4500 <= self.code < 5000 or self.code in _NO_RECONNECT_WS)


def connect_token(user: str, secret: str, ttl: float = 6 * 3600) -> str:
    """An HS256 connect token, as the shop's backend would sign it."""
    from relay.auth import make_connect_token  # PyJWT only: no asyncio, no uvloop

    return make_connect_token(user, secret, ttl=ttl)


ReplyHook = Callable[[dict], None]


class RelayClient:
    """The command/reply logic shared by both transports; subclasses move the bytes."""

    transport = ""

    def __init__(self, on_push: Callable[[dict], None] | None = None,
                 on_close: Callable[[Disconnected], None] | None = None, name: str = "relay-loadtest") -> None:
        self.on_push = on_push
        self.on_close = on_close
        self.name = name
        self.client_id = ""
        self.closed = True
        self.ended: Disconnected | None = None  # why the connection ended
        self._ids = 0
        self._pending: dict[int, tuple[AsyncResult, ReplyHook | None]] = {}
        self._send_lock = Semaphore()
        self._reader: gevent.Greenlet | None = None
        self._closing = False
        self._disconnect: Disconnected | None = None  # a TCP disconnect push, before the socket closes

    # --- transport hooks -----------------------------------------------------------------------

    def _open(self, timeout: float) -> None:
        raise NotImplementedError

    def _write(self, msg: dict) -> None:
        raise NotImplementedError

    def _read(self) -> list[dict]:
        """The next messages; raises Disconnected (or a socket error) at the end."""
        raise NotImplementedError

    def _shutdown(self) -> None:
        raise NotImplementedError

    # --- commands ------------------------------------------------------------------------------

    def connect(self, token: str, timeout: float = CALL_TIMEOUT) -> dict:
        """Open the socket (and the WebSocket handshake), send ``connect``; the connect reply."""
        self._open(timeout)
        self.closed = False
        self._closing = False
        self.ended = None
        self._disconnect = None
        self._reader = gevent.spawn(self._read_loop)
        try:
            result = self.call("connect", {"token": token, "name": self.name}, timeout)
        except BaseException:
            self.close()
            raise
        self.client_id = result.get("client", "")
        return result

    def call(self, method: str, params: dict, timeout: float = CALL_TIMEOUT, hook: ReplyHook | None = None) -> dict:
        """Send one command and wait for its reply; the result, or RelayError / Disconnected / TimeoutError.

        ``hook`` runs in the reader greenlet as the reply arrives, before any message after it is
        handled (a subscribe reply's position must be known before the publications that follow it)."""
        if self.closed:
            raise self.ended or Disconnected(0, "not connected")
        self._ids += 1
        cid = self._ids
        waiter = AsyncResult()
        self._pending[cid] = (waiter, hook)
        try:
            self._send({"id": cid, method: params})
            reply = waiter.get(timeout=timeout)
        except gevent.Timeout:
            raise TimeoutError(f"{method}: no reply within {timeout:g} s") from None
        finally:
            self._pending.pop(cid, None)
        err = reply.get("error")
        if err is not None:
            raise RelayError(int(err.get("code", 0)), str(err.get("message", "")))
        return reply.get(method) or {}

    def send(self, method: str, params: dict) -> None:
        """Send a command without waiting for its reply (a farewell message before closing)."""
        if not self.closed:
            self._ids += 1
            self._send({"id": self._ids, method: params})

    def subscribe(self, channel: str, hook: ReplyHook | None = None, timeout: float = CALL_TIMEOUT,
                  **params: Any) -> dict:
        return self.call("subscribe", {"channel": channel, **params}, timeout, hook)

    def unsubscribe(self, channel: str) -> dict:
        return self.call("unsubscribe", {"channel": channel})

    def publish(self, channel: str, data: Any, timeout: float = CALL_TIMEOUT) -> dict:
        return self.call("publish", {"channel": channel, "data": data}, timeout)

    def history(self, channel: str, limit: int = 0, **params: Any) -> dict:
        return self.call("history", {"channel": channel, "limit": limit, **params})

    def close(self) -> None:
        """Close without reporting it to ``on_close`` (the user left)."""
        self._closing = True
        self._end(Disconnected(0, "closed by client"))
        try:
            self._shutdown()
        except OSError:
            pass
        if self._reader is not None and self._reader is not gevent.getcurrent():
            self._reader.kill(block=False)

    # --- internals -----------------------------------------------------------------------------

    def _send(self, msg: dict) -> None:
        try:
            with self._send_lock:
                self._write(msg)
        except (OSError, websocket.WebSocketException) as e:
            raise self.ended or Disconnected(0, f"send failed: {type(e).__name__}") from None

    def _read_loop(self) -> None:
        ended = Disconnected(0, "connection lost")
        try:
            while True:
                for msg in self._read():
                    self._dispatch(msg)
        except Disconnected as d:
            ended = d
        except (OSError, EOFError, ValueError, struct.error, websocket.WebSocketException) as e:
            ended = self._disconnect or Disconnected(0, f"connection lost: {type(e).__name__}")
        except gevent.GreenletExit:
            ended = Disconnected(0, "closed by client")
        finally:
            self._end(ended)
        if not self._closing and self.on_close is not None:
            self.on_close(ended)

    def _end(self, info: Disconnected) -> None:
        if self.closed and self.ended is not None:
            return
        self.closed = True
        self.ended = info
        pending, self._pending = self._pending, {}
        for waiter, _ in pending.values():
            if not waiter.ready():
                waiter.set_exception(info)
        try:
            self._shutdown()
        except OSError:
            pass

    def _dispatch(self, msg: dict) -> None:
        if not msg:  # the server's ping: answer with an empty command
            try:
                self._send({})
            except Disconnected:
                pass
            return
        cid = msg.get("id")
        if cid:
            entry = self._pending.get(cid)
            if entry is not None:
                waiter, hook = entry
                if hook is not None and "error" not in msg:
                    try:
                        hook(msg)
                    except Exception as e:  # a bug in a hook must not kill the connection silently
                        waiter.set_exception(e)
                        return
                waiter.set(msg)
            return
        push = msg.get("push")
        if push is None:
            return
        if "disconnect" in push:  # raw TCP: the reason, then the server closes the socket
            d = push["disconnect"] or {}
            self._disconnect = Disconnected(int(d.get("code", 0)), str(d.get("reason", "")))
        elif self.on_push is not None:
            self.on_push(push)


class WSClient(RelayClient):
    """relay's WebSocket JSON protocol (``ws://host:8000/connection/websocket``), via websocket-client."""

    transport = "ws"

    def __init__(self, url: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.url = url
        self.ws: websocket.WebSocket | None = None

    def _open(self, timeout: float) -> None:
        self.ws = websocket.create_connection(self.url, timeout=timeout, suppress_origin=True,
                                              enable_multithread=False, skip_utf8_validation=True)
        self.ws.settimeout(None)  # the reader waits as long as the connection lives

    def _write(self, msg: dict) -> None:
        assert self.ws is not None
        self.ws.send(json.dumps(msg, separators=(",", ":")))

    def _read(self) -> list[dict]:
        assert self.ws is not None
        opcode, frame = self.ws.recv_data_frame(False)
        if opcode == websocket.ABNF.OPCODE_TEXT:
            return [json.loads(line) for line in frame.data.split(b"\n") if line.strip()]
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            data = frame.data or b""
            code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
            raise Disconnected(code, data[2:].decode("utf-8", "replace"))
        return []

    def _shutdown(self) -> None:
        if self.ws is not None:
            self.ws.shutdown()


class TCPClient(RelayClient):
    """relay's raw TCP protocol: 4-byte big-endian length + one msgpack map per message."""

    transport = "tcp"

    def __init__(self, address: str, **kw: Any) -> None:
        super().__init__(**kw)
        host, _, port = address.removeprefix("tcp://").rpartition(":")
        self.addr = (host or "127.0.0.1", int(port))
        self.sock: socket.socket | None = None
        self._rfile: Any = None

    def _open(self, timeout: float) -> None:
        self.sock = socket.create_connection(self.addr, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(None)
        self._rfile = self.sock.makefile("rb", buffering=65536)

    def _write(self, msg: dict) -> None:
        assert self.sock is not None
        body = msgpack.packb(msg, use_bin_type=True)
        self.sock.sendall(struct.pack("!I", len(body)) + body)

    def _read(self) -> list[dict]:
        head = self._rfile.read(4)
        if len(head) < 4:
            raise self._disconnect or Disconnected(0, "connection lost: EOF")
        (n,) = struct.unpack("!I", head)
        body = self._rfile.read(n)
        if len(body) < n:
            raise self._disconnect or Disconnected(0, "connection lost: EOF")
        msg = msgpack.unpackb(body, raw=False)
        return [msg] if isinstance(msg, dict) else []

    def _shutdown(self) -> None:
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()


class Stream:
    """A subscription's place in its channel's stream: what to recover after a reconnect, and which
    publications never arrived (publication offsets of a recoverable channel have no holes)."""

    __slots__ = ("channel", "kind", "recoverable", "offset", "epoch", "subscribed")

    def __init__(self, channel: str, kind: str) -> None:
        self.channel = channel
        self.kind = kind
        self.recoverable = False
        self.offset = 0
        self.epoch = ""
        self.subscribed = False

    def params(self) -> dict:
        """Subscribe parameters: recover from where we are, once we have a position."""
        if self.recoverable and self.epoch:
            return {"recover": True, "offset": self.offset, "epoch": self.epoch}
        return {}

    def apply(self, result: dict) -> tuple[list[dict], int, bool]:
        """Take a subscribe reply: (publications recovered, publications known lost, unrecovered)."""
        pubs: list[dict] = []
        lost = 0
        unrecovered = False
        recovering = bool(result.get("was_recovering"))
        if recovering and result.get("recovered"):
            for pub in result.get("publications") or []:
                gap = self.accept(pub)
                if gap >= 0:
                    lost += gap
                    pubs.append(pub)
        elif recovering:
            unrecovered = True
            if result.get("epoch") == self.epoch:
                lost = max(0, int(result.get("offset", 0)) - self.offset)
        self.recoverable = bool(result.get("recoverable"))
        if self.recoverable:
            self.offset = max(self.offset, int(result.get("offset", 0))) if not unrecovered \
                else int(result.get("offset", 0))
            self.epoch = str(result.get("epoch", ""))
        self.subscribed = True
        return pubs, lost, unrecovered

    def accept(self, pub: dict) -> int:
        """A publication: -1 if it is one we had (a duplicate), else how many were missed before it."""
        off = pub.get("offset")
        if not self.recoverable or not isinstance(off, int) or off <= 0:
            return 0
        if off <= self.offset:
            return -1
        gap = off - self.offset - 1
        self.offset = off
        return gap


class ApiClient:
    """relay's HTTP server API (``POST <base>/api/<method>`` with ``X-API-Key``), keep-alive pooled."""

    def __init__(self, base_url: str, api_key: str, concurrency: int = 32, timeout: float = 10.0) -> None:
        from geventhttpclient import HTTPClient  # a Locust dependency, cooperative under gevent

        parts = urlsplit(base_url)
        self.http = HTTPClient(parts.hostname or "127.0.0.1", parts.port or 8002, ssl=parts.scheme == "https",
                               insecure=True, concurrency=concurrency, connection_timeout=5.0,
                               network_timeout=timeout)
        path = parts.path.rstrip("/")
        self.prefix = path if path.endswith("/api") else path + "/api"
        self.headers = {"X-API-Key": api_key, "Content-Type": "application/json"}

    def call(self, method: str, params: dict) -> dict:
        """The result; RelayError for an error answer, OSError when relay cannot be reached."""
        resp = self.http.post(f"{self.prefix}/{method}", body=json.dumps(params, separators=(",", ":")),
                              headers=self.headers)
        try:
            body = resp.read()
        finally:
            resp.release()
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            raise RelayError(0, f"HTTP {resp.status_code}: not JSON") from None
        if isinstance(data, dict) and "error" in data:
            err = data["error"] or {}
            raise RelayError(int(err.get("code", 0)), str(err.get("message", "")))
        if resp.status_code != 200:
            raise RelayError(0, f"HTTP {resp.status_code}")
        return data.get("result") or {}

    def publish(self, channel: str, data: Any, **params: Any) -> dict:
        return self.call("publish", {"channel": channel, "data": data, **params})


_API: dict[tuple[str, str], ApiClient] = {}


def api_client(base_url: str, api_key: str) -> ApiClient:
    """One pooled API client per process and relay (every user of the process shares it)."""
    key = (base_url, api_key)
    if key not in _API:
        _API[key] = ApiClient(base_url, api_key)
    return _API[key]


def now_ms() -> float:
    return time.time() * 1000.0

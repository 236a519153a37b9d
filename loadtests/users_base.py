"""The base of the Locust users in ``loadtests/users.py``: how they time and retry their calls (server API
calls with backoff, temporary errors) and ``RelayUser``, the user that keeps one relay connection
(reconnects with jittered backoff, resubscribes and recovers, reports deliveries and losses).
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

import gevent
from gevent.event import Event
from locust import User

from loadtests import reporting
from loadtests.clients import (
    ApiClient,
    Disconnected,
    RelayClient,
    RelayError,
    Stream,
    TCPClient,
    WSClient,
    api_client,
    connect_token,
)
from loadtests.reporting import count, fail, ok

__all__ = ["TEMPORARY", "RelayUser", "api_call", "backoff", "ms", "options"]


def options(env: Any) -> Any:
    return env.parsed_options


TEMPORARY = frozenset({100, 111})  # internal error (retry), too many requests


def backoff(attempt: int, lo: float, hi: float) -> float:
    """Full jitter: uniform over [0, min(hi, lo * 2^attempt)]."""
    return random.uniform(0, min(hi, lo * (2 ** min(attempt, 30))))


def ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def api_call(api: ApiClient, name: str, method: str, params: dict, retry_for: float = 0.0,
             stopping: Any = None) -> dict | None:
    """One server API call reported as API ``name``; retried (same idempotency key for publishes) while
    relay is unreachable or answers 100, for up to ``retry_for`` seconds. None when it failed."""
    deadline = time.monotonic() + retry_for
    attempt = 0
    while True:
        t0 = time.perf_counter()
        try:
            result = api.call(method, params)
        except Exception as e:
            if stopping is not None and stopping():
                return None  # the user is leaving: not a failure of relay
            if isinstance(e, RelayError):
                fail("API", e, ms(t0), name)
                if e.code not in (0, 100) or time.monotonic() >= deadline:
                    return None
            else:  # connection refused or reset, timeout: relay restarting
                fail("API", e, ms(t0), name)
                if time.monotonic() >= deadline:
                    return None
        else:
            ok("API", name, ms(t0))
            return result
        if stopping is not None and stopping():
            return None
        gevent.sleep(backoff(attempt, 0.1, 2.0))
        attempt += 1


# --- users holding a relay connection ----------------------------------------------------------------


class RelayUser(User):
    """A user with one relay connection that it keeps: reconnects, resubscribes and recovers."""

    abstract = True
    transport = "ws"

    def on_start(self) -> None:
        self.opts = options(self.environment)
        self.user_id = f"{self.role}-{uuid.uuid4().hex[:12]}"
        self.client: RelayClient | None = None
        self.streams: dict[str, Stream] = {}
        self.online = Event()
        self.stopping = False
        self._reconnector: gevent.Greenlet | None = None
        self.api = api_client(self.opts.relay_api, self.opts.relay_api_key)

    role = "user"

    # --- connection ---

    def _new_client(self) -> RelayClient:
        kw = {"on_push": self._on_push, "on_close": self._on_close, "name": "relay-loadtest"}
        if self.transport == "tcp":
            return TCPClient(self.opts.relay_tcp, **kw)
        return WSClient(self.opts.relay_ws, **kw)

    def _token(self) -> str:
        return connect_token(self.user_id, self.opts.relay_secret)

    def _connect(self, quiet: bool = False) -> RelayClient:
        """A connected client, reported as CONNECT; ``quiet``: a refused socket is not a failure (the
        reconnect loop retries it and reports RECONNECT)."""
        client = self._new_client()
        t0 = time.perf_counter()
        try:
            client.connect(self._token())
        except RelayError as e:
            fail("CONNECT", e, ms(t0), self.transport)
            raise
        except Exception as e:  # refused, reset, closed, timed out
            if not quiet:
                fail("CONNECT", e, ms(t0), self.transport)
            raise
        ok("CONNECT", self.transport, ms(t0))
        return client

    def open(self) -> None:
        self.client = self._connect()
        self.online.set()

    def begin(self, channels: list[tuple[str, str]]) -> bool:
        """Connect and subscribe to ``channels`` ((channel, kind) pairs); if relay is not reachable,
        keep trying in the background like after a disconnect. Whether it is connected now."""
        for channel, kind in channels:
            self.streams.setdefault(channel, Stream(channel, kind))
        try:
            self.open()
            for stream in list(self.streams.values()):
                try:
                    self.subscribe(stream.channel, stream.kind)
                except RelayError:
                    pass  # reported; the stream is dropped
            return True
        except (Disconnected, TimeoutError, OSError, RelayError):
            if self.client is not None:
                self.client.close()
            self.online.clear()
            self._start_reconnect()
            return False

    def _start_reconnect(self, name: str = "") -> None:
        if self._reconnector is None or self._reconnector.dead:
            self._reconnector = gevent.spawn(self.reconnect, time.perf_counter(), name or self.transport)

    def subscribe(self, channel: str, kind: str, client: RelayClient | None = None) -> Stream:
        """Subscribe (recovering when the stream has a position), reported as SUBSCRIBE ``kind``;
        a temporary error (100, 111) is reported and tried again, as the SDKs do."""
        stream = self.streams.get(channel) or Stream(channel, kind)
        self.streams[channel] = stream
        client = client or self.client
        attempt = 0
        while True:
            t0 = time.perf_counter()
            try:
                client.subscribe(channel, hook=lambda msg: self._subscribed(stream, msg.get("subscribe") or {}),
                                 **stream.params())
            except RelayError as e:
                if self.stopping:
                    raise
                fail("SUBSCRIBE", e, ms(t0), kind)
                if e.code in TEMPORARY and attempt < 6 and not self.stopping:
                    gevent.sleep(backoff(attempt, 0.1, 2.0))
                    attempt += 1
                    continue
                self.streams.pop(channel, None)
                raise
            except (Disconnected, TimeoutError) as e:
                if not isinstance(e, Disconnected) and not self.stopping:
                    fail("SUBSCRIBE", e, ms(t0), kind)
                raise
            ok("SUBSCRIBE", kind, ms(t0))
            return stream

    def publish(self, channel: str, data: dict, name: str) -> bool:
        """PUBLISH ``name``: the time to relay's acknowledgement. A message whose connection went while it
        was on its way is sent again once reconnected (the time includes the wait); a temporary error
        (100, 111) is retried; a message whose session ended meanwhile (the user left and a new one
        took its place) is dropped as abandoned_publishes, not a failure. Whether it was acknowledged."""
        t0 = time.perf_counter()
        attempt = 0
        me = self.user_id
        while True:
            client = self.client
            if attempt and (self.user_id != me or channel not in self.streams):
                # while we waited, the shopper left and came back as someone else (churn): the old
                # chat is gone and this message with it, which is not a failure of relay
                count("abandoned_publishes")
                return False
            try:
                if client is None:
                    raise Disconnected(0, "not connected")
                client.publish(channel, data)
            except (Disconnected, RelayError, TimeoutError) as e:
                if self.stopping:
                    return False  # our own close as the user leaves: not a failure of relay
                if isinstance(e, Disconnected):
                    if attempt < 3 and self.online.wait(self.opts.give_up) and not self.stopping:
                        attempt += 1
                        continue
                elif isinstance(e, RelayError) and e.code in TEMPORARY and attempt < 6:
                    fail("PUBLISH", e, ms(t0), name)
                    gevent.sleep(backoff(attempt, 0.1, 2.0))
                    attempt += 1
                    continue
                fail("PUBLISH", e, ms(t0), name)
                return False
            ok("PUBLISH", name, ms(t0))
            return True

    def unsubscribe(self, channel: str) -> None:
        self.streams.pop(channel, None)
        if self.client is not None and not self.client.closed:
            try:
                self.client.unsubscribe(channel)
            except (RelayError, Disconnected, TimeoutError):
                pass

    def _subscribed(self, stream: Stream, result: dict) -> None:
        """In the reader, as the subscribe reply arrives: position, recovered publications, losses."""
        pubs, missing, unrecovered = stream.apply(result)
        if result.get("was_recovering"):
            count("recoveries")
            if result.get("recovered"):
                count("recovered_publications", len(pubs))
        reporting.lost(stream.kind, missing, unrecovered)
        for pub in pubs:
            self._publication(stream, pub, live=False)

    def _on_push(self, push: dict) -> None:
        stream = self.streams.get(push.get("channel", ""))
        if stream is None:
            return
        pub = push.get("pub")
        if pub is not None:
            gap = stream.accept(pub)
            if gap < 0:
                count("duplicates")
                return
            reporting.lost(stream.kind, gap)
            self._publication(stream, pub, live=True)
        elif "unsubscribe" in push:
            stream.subscribed = False
            code = int((push["unsubscribe"] or {}).get("code", 0))
            count(f"server_unsubscribe:{code}")
            if code >= 2500 and not self.stopping:  # insufficient state: resubscribe and recover
                gevent.spawn(self._resubscribe, stream)

    def _resubscribe(self, stream: Stream) -> None:
        try:
            self.subscribe(stream.channel, stream.kind)
        except (RelayError, Disconnected, TimeoutError):
            pass

    def _publication(self, stream: Stream, pub: dict, live: bool) -> None:
        data = pub.get("data")
        if not isinstance(data, dict):
            return
        ts = data.get("ts")
        if isinstance(ts, (int, float)):
            ok("DELIVER" if live else "RECOVER", stream.kind, max(0.0, (time.time() - ts) * 1000.0))
        count("deliveries" if live else "recovered")
        self.on_publication(stream, data, live)

    def on_publication(self, stream: Stream, data: dict, live: bool) -> None:
        pass

    def _on_close(self, d: Disconnected) -> None:
        """In the dying reader: report the close and start coming back."""
        if self.stopping:
            return
        self.online.clear()
        count(f"disconnects:{d.label}")
        if not d.reconnect or d.code == 0:
            fail("DISCONNECT", d, 0.0, self.transport)
        self._start_reconnect()

    def reconnect(self, t0: float, name: str) -> bool:
        """Backoff, connect, resubscribe every stream with recovery; RECONNECT ``name`` from ``t0``."""
        deadline = time.monotonic() + self.opts.give_up
        attempt = 0
        while not self.stopping:
            gevent.sleep(backoff(attempt, self.opts.backoff_min, self.opts.backoff_max))
            attempt += 1
            count("reconnect_attempts")
            client = None
            try:
                client = self._connect(quiet=True)
                for stream in list(self.streams.values()):
                    try:
                        self.subscribe(stream.channel, stream.kind, client)
                    except RelayError:
                        pass  # reported as a SUBSCRIBE failure; the stream is dropped
            except Exception:  # refused, reset, closed, an error reply (reported): try again
                if client is not None:
                    client.close()
            else:
                if self.stopping:
                    client.close()
                    return False
                if client.closed:  # dropped again while resubscribing
                    continue
                self.client = client
                self.online.set()
                self._reconnector = None  # from here on, a new close starts a new reconnect
                count("reconnects")
                ok("RECONNECT", name, ms(t0))
                self.on_reconnected()
                return True
            if time.monotonic() >= deadline:
                fail("RECONNECT", "gave up", ms(t0), f"{name}: not back within {self.opts.give_up:g} s")
                count("reconnect_give_ups")
                return False
        return False

    def on_reconnected(self) -> None:
        pass

    def leave(self) -> None:
        pass

    def on_stop(self) -> None:
        self.stopping = True
        if getattr(self, "_reconnector", None) is not None:
            self._reconnector.kill(block=False)
        if getattr(self, "client", None) is not None:
            try:
                self.leave()
            except (Disconnected, OSError):
                pass
            self.client.close()

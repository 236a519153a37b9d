"""Locust users that speak relay's real protocols (the scenarios in ``loadtests/scenarios/`` mix them).

- ``ShopperWS`` / ``ShopperTCP``: a shopper on WebSocket (JSON) or raw TCP (msgpack). Connects with a
  token it signs, subscribes to its personal ``orders:<me>#<me>`` channel and the sale announcements
  channel, opens a 1:1 chat ``chat:<me>-<n>#<me>,<responder>`` with an agent or a bot (the shop backend
  assigns it through the server API) and asks a question every ``--chat-interval`` seconds.
- ``Agent``: a human agent on WebSocket holding many chats at once; answers after ``--agent-think`` s.
- ``Bot``: the chatbot service: reads chats on WebSocket, answers through the HTTP server API.
- ``OrderBackend``: publishes order-status updates to the personal channels of shoppers online
  (each gets one every ``--order-interval`` s on average), through the HTTP server API.
- ``Announcer``: publishes the sale announcement every ``--announce-interval`` s (server API).

Every client user reconnects after a close it may come back from (3000-3499, a dropped socket) with
jittered exponential backoff (``--backoff-min`` .. ``--backoff-max``), resubscribes with ``recover``
from its last offset and epoch, and reports the time as RECONNECT. With ``--churn-interval`` shoppers
also leave and come back on their own (half of them as a new shopper). What is measured and how it
is named is in ``loadtests/reporting.py``.

How many agents, bots and backends run follows the number of shoppers (``-u``), so that one set of
parameters scales from a smoke run to the full sale: see ``plan()``.
"""

from __future__ import annotations

import math
import os
import random
import time
import uuid
from typing import Any

import gevent
from gevent.event import Event
from locust import User, constant, events, task
from locust.runners import WorkerRunner

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

__all__ = ["DEFAULTS", "ShopperWS", "ShopperTCP", "Agent", "Bot", "OrderBackend", "Announcer", "plan",
           "options"]

# Parameter defaults; a scenario module updates them before Locust parses its command line.
DEFAULTS: dict[str, Any] = {
    "scenario_name": "flash_sale",
    "relay_ws": "ws://127.0.0.1:8000/connection/websocket",
    "relay_tcp": "127.0.0.1:8001",
    "relay_api": "http://127.0.0.1:8002",
    "tcp_share": 0.25,          # shoppers on raw TCP (the rest on WebSocket)
    "agent_share": 0.3,         # chats with a human agent (the rest with the bot)
    "chats_per_agent": 10,      # agents = shoppers * agent_share / chats_per_agent
    "shoppers_per_bot": 2000,   # chatbot connections
    "shoppers_per_backend": 2000,  # order-status publishers
    "chat_interval": 20.0,      # mean seconds between a shopper's chat messages
    "order_interval": 30.0,     # mean seconds between order-status updates of one shopper
    "announce_interval": 3.0,   # seconds between sale announcements
    "agent_think": 3.0,         # mean seconds an agent takes to answer
    "ramp": 0.0,                # seconds over which shoppers arrive (0: the scenario's default)
    "churn_interval": 0.0,      # mean seconds between a shopper's leave-and-return (0: none)
    "backoff_min": 0.25,        # reconnect backoff: full jitter over [0, min(max, min * 2^attempt)]
    "backoff_max": 10.0,
    "give_up": 120.0,           # seconds a client keeps trying to reconnect
    "sale_channel": "sale:flash",
    "summary_file": "",
}

_FLOATS = ("tcp_share", "agent_share", "chat_interval", "order_interval", "announce_interval", "agent_think",
           "ramp", "churn_interval", "backoff_min", "backoff_max", "give_up")
_INTS = ("chats_per_agent", "shoppers_per_bot", "shoppers_per_backend")


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    g = parser  # Locust's parser: include_in_web_ui / is_secret are its own keywords
    g.add_argument("--scenario-name", default=DEFAULTS["scenario_name"], include_in_web_ui=False)
    g.add_argument("--relay-ws", default=DEFAULTS["relay_ws"], help="relay WebSocket URL")
    g.add_argument("--relay-tcp", default=DEFAULTS["relay_tcp"], help="relay raw TCP host:port")
    g.add_argument("--relay-api", default=DEFAULTS["relay_api"], help="relay API base URL (http://host:8002)")
    g.add_argument("--relay-secret", env_var="LOADTEST_SECRET", default=os.environ.get("LOADTEST_SECRET", ""),
                   is_secret=True, help="token_hmac_secret (env LOADTEST_SECRET): users sign their tokens")
    g.add_argument("--relay-api-key", env_var="LOADTEST_API_KEY", default=os.environ.get("LOADTEST_API_KEY", ""),
                   is_secret=True, help="server API key (env LOADTEST_API_KEY)")
    for name in _FLOATS:
        g.add_argument("--" + name.replace("_", "-"), type=float, default=DEFAULTS[name])
    for name in _INTS:
        g.add_argument("--" + name.replace("_", "-"), type=int, default=DEFAULTS[name])
    g.add_argument("--sale-channel", default=DEFAULTS["sale_channel"])
    g.add_argument("--summary-file", default=DEFAULTS["summary_file"], include_in_web_ui=False,
                   help="where the master writes the JSON summary run.py checks")


def options(env: Any) -> Any:
    return env.parsed_options


def plan(shoppers: int, opts: Any) -> dict[str, int]:
    """Fixed users for ``shoppers``: agents for their share of chats, a bot, backends, one announcer."""
    agent_share = min(max(opts.agent_share, 0.0), 1.0)
    return {
        "Agent": math.ceil(shoppers * agent_share / max(1, opts.chats_per_agent)) if agent_share > 0 else 0,
        "Bot": math.ceil(shoppers * (1 - agent_share) / max(1, opts.shoppers_per_bot)) if agent_share < 1 else 0,
        "OrderBackend": max(1, math.ceil(shoppers / max(1, opts.shoppers_per_backend))),
        "Announcer": 1,
    }


@events.init.add_listener
def _plan(environment: Any, **_: Any) -> None:
    """On the master (or the single process): fixed user counts and the WS/TCP mix from the parameters."""
    opts = environment.parsed_options
    if opts is None or isinstance(environment.runner, WorkerRunner):
        return
    counts = plan(int(opts.num_users or 1), opts)
    for cls in (Agent, Bot, OrderBackend, Announcer):
        cls.fixed_count = counts[cls.__name__]
        if cls.fixed_count == 0:
            cls.weight = 0
    share = min(max(opts.tcp_share, 0.0), 1.0)
    ShopperTCP.weight = round(share * 100)
    ShopperWS.weight = 100 - ShopperTCP.weight


def fixed_users(opts: Any) -> int:
    return sum(plan(int(opts.num_users or 1), opts).values())


TEMPORARY = frozenset({100, 111})  # internal error (retry), too many requests


def _backoff(attempt: int, lo: float, hi: float) -> float:
    """Full jitter: uniform over [0, min(hi, lo * 2^attempt)]."""
    return random.uniform(0, min(hi, lo * (2 ** min(attempt, 30))))


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def _api_call(api: ApiClient, name: str, method: str, params: dict, retry_for: float = 0.0,
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
                fail("API", e, _ms(t0), name)
                if e.code not in (0, 100) or time.monotonic() >= deadline:
                    return None
            else:  # connection refused or reset, timeout: relay restarting
                fail("API", e, _ms(t0), name)
                if time.monotonic() >= deadline:
                    return None
        else:
            ok("API", name, _ms(t0))
            return result
        if stopping is not None and stopping():
            return None
        gevent.sleep(_backoff(attempt, 0.1, 2.0))
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
            fail("CONNECT", e, _ms(t0), self.transport)
            raise
        except Exception as e:  # refused, reset, closed, timed out
            if not quiet:
                fail("CONNECT", e, _ms(t0), self.transport)
            raise
        ok("CONNECT", self.transport, _ms(t0))
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
                fail("SUBSCRIBE", e, _ms(t0), kind)
                if e.code in TEMPORARY and attempt < 6 and not self.stopping:
                    gevent.sleep(_backoff(attempt, 0.1, 2.0))
                    attempt += 1
                    continue
                self.streams.pop(channel, None)
                raise
            except (Disconnected, TimeoutError) as e:
                if not isinstance(e, Disconnected) and not self.stopping:
                    fail("SUBSCRIBE", e, _ms(t0), kind)
                raise
            ok("SUBSCRIBE", kind, _ms(t0))
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
                    fail("PUBLISH", e, _ms(t0), name)
                    gevent.sleep(_backoff(attempt, 0.1, 2.0))
                    attempt += 1
                    continue
                fail("PUBLISH", e, _ms(t0), name)
                return False
            ok("PUBLISH", name, _ms(t0))
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
            gevent.sleep(_backoff(attempt, self.opts.backoff_min, self.opts.backoff_max))
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
                ok("RECONNECT", name, _ms(t0))
                self.on_reconnected()
                return True
            if time.monotonic() >= deadline:
                fail("RECONNECT", "gave up", _ms(t0), f"{name}: not back within {self.opts.give_up:g} s")
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


class Shopper(RelayUser):
    abstract = True
    role = "shopper"

    def on_start(self) -> None:
        super().on_start()
        self.chat: Stream | None = None
        self.chat_with = ""
        self.seq = 0
        self.asked: dict[int, float] = {}
        self._churner: gevent.Greenlet | None = None
        self.start_session()
        if self.opts.churn_interval > 0:
            self._churner = gevent.spawn(self._churn_loop)

    def start_session(self) -> None:
        me = self.user_id
        if self.begin([(f"orders:{me}#{me}", "orders"), (self.opts.sale_channel, "sale")]):
            self.open_chat()

    def on_reconnected(self) -> None:
        if self.chat is None:
            gevent.spawn(self.open_chat)

    def open_chat(self) -> None:
        """Ask the shop backend for an agent (or the bot), subscribe to the 1:1 chat, get it assigned."""
        want = "agent" if random.random() < self.opts.agent_share else "bot"
        responder = pick_responder(self.api, want) or pick_responder(self.api, "bot" if want == "agent" else "agent")
        if responder is None:
            count("chats_without_responder")
            return
        kind, rid = responder
        self.chat_n = getattr(self, "chat_n", 0) + 1
        me = self.user_id
        channel = f"chat:{me}-{self.chat_n}#{me},{rid}"
        try:
            self.chat = self.subscribe(channel, "chat")
        except (RelayError, Disconnected, TimeoutError):
            return  # reported; tried again after a reconnect
        self.chat_with = kind
        _api_call(self.api, "assign chat", "publish",
                  {"channel": f"inbox:{rid}#{rid}", "data": {"type": "assign", "chat": channel, "shopper": me,
                                                            "ts": time.time()}},
                  retry_for=30.0, stopping=lambda: self.stopping)
        count(f"chats:{kind}")

    def wait_time(self) -> float:
        return random.uniform(0.5, 1.5) * self.opts.chat_interval

    @task
    def ask(self) -> None:
        """A chat message: PUBLISH chat (acknowledged), then the answer's CHAT time."""
        if self.chat is None or not self.online.is_set():
            return
        self.seq += 1
        sent = time.time()
        data = {"type": "q", "from": self.user_id, "seq": self.seq, "ts": sent, "text": "is my order on its way?"}
        self.asked[self.seq] = sent
        if not self.publish(self.chat.channel, data, "chat"):
            self.asked.pop(data["seq"], None)

    def on_publication(self, stream: Stream, data: dict, live: bool) -> None:
        if stream.kind == "chat" and data.get("type") == "a":
            q = self.asked.pop(data.get("re"), None)
            if q is not None:
                ok("CHAT", self.chat_with, max(0.0, (time.time() - q) * 1000.0))

    def leave(self) -> None:
        if self.chat is not None and self.client is not None and not self.client.closed:
            self.client.send("publish", {"channel": self.chat.channel,
                                         "data": {"type": "bye", "from": self.user_id, "ts": time.time()}})

    def _churn_loop(self) -> None:
        """Leave and come back: half the time the same shopper (reconnect + recover), else a new one."""
        while not self.stopping:
            gevent.sleep(random.expovariate(1.0 / self.opts.churn_interval))
            if self.stopping or not self.online.is_set():
                continue
            count("churn")
            same = random.random() < 0.5
            old = self.client
            self.online.clear()
            if not same:
                self.leave()
            old.close()
            gevent.sleep(random.uniform(0.2, 1.0))  # offline
            if self.stopping:
                return
            if same:
                self._reconnector = gevent.getcurrent()  # a close meanwhile does not start a second loop
                self.reconnect(time.perf_counter(), f"{self.transport} churn")
                if self._reconnector is gevent.getcurrent():
                    self._reconnector = None
            else:
                self.user_id = f"{self.role}-{uuid.uuid4().hex[:12]}"
                self.streams = {}
                self.chat = None
                self.asked.clear()
                self.start_session()

    def on_stop(self) -> None:
        if getattr(self, "_churner", None) is not None:
            self._churner.kill(block=False)
        super().on_stop()


class ShopperWS(Shopper):
    transport = "ws"
    weight = 3


class ShopperTCP(Shopper):
    transport = "tcp"
    weight = 1


# --- who answers chats -------------------------------------------------------------------------------

_ROSTER: dict[str, tuple[float, list[str]]] = {}


def pick_responder(api: ApiClient, kind: str) -> tuple[str, str] | None:
    """A random online agent or bot, as the shop backend finds them: presence of support:agents/bots
    (one API call per kind every 2 s per process)."""
    now = time.monotonic()
    cached = _ROSTER.get(kind)
    if cached is None or now - cached[0] > 2.0:
        result = _api_call(api, "presence", "presence", {"channel": f"support:{kind}s"})
        users = sorted({c.get("user", "") for c in ((result or {}).get("presence") or {}).values()} - {""})
        cached = _ROSTER[kind] = (now, users)
    return (kind, random.choice(cached[1])) if cached[1] else None


class Responder(RelayUser):
    """Agents and bots: present on support:<kind>s, get chats through inbox:<me>#<me>, answer them."""

    abstract = True
    wait_time = constant(5)
    kind = "agent"

    def on_start(self) -> None:
        super().on_start()
        self.chats: dict[str, float] = {}  # channel -> last activity
        self.answered: set[tuple[str, int]] = set()
        me = self.user_id
        self.begin([(f"inbox:{me}#{me}", "inbox"), (f"support:{self.kind}s", "support")])

    def on_publication(self, stream: Stream, data: dict, live: bool) -> None:
        kind = stream.kind
        if kind == "inbox" and data.get("type") == "assign":
            gevent.spawn(self._take_chat, str(data.get("chat", "")))
        elif kind == "chat":
            self.chats[stream.channel] = time.monotonic()
            t = data.get("type")
            if t == "q" and data.get("from") != self.user_id:
                gevent.spawn(self._answer, stream.channel, data)
            elif t == "bye":
                gevent.spawn(self.unsubscribe, stream.channel)
                self.chats.pop(stream.channel, None)

    def _take_chat(self, channel: str) -> None:
        if not channel or channel in self.streams or not self.online.is_set():
            return
        try:
            self.subscribe(channel, "chat")
        except (RelayError, Disconnected, TimeoutError):
            return
        self.chats[channel] = time.monotonic()
        count(f"{self.kind}_chats")
        # questions asked before we joined: read the chat's history once
        try:
            hist = self.client.history(channel, limit=-1)
        except (RelayError, Disconnected, TimeoutError):
            return
        for pub in hist.get("publications") or []:
            data = pub.get("data")
            if isinstance(data, dict) and data.get("type") == "q":
                gevent.spawn(self._answer, channel, data)

    def _answer(self, channel: str, q: dict) -> None:
        key = (channel, int(q.get("seq", 0)))
        if key in self.answered:
            return
        self.answered.add(key)
        self.think()
        if self.stopping or channel not in self.streams:
            return
        self.reply(channel, {"type": "a", "from": self.user_id, "re": q.get("seq"), "ts": time.time(),
                             "text": "it ships today"})

    def think(self) -> None:
        pass

    def reply(self, channel: str, data: dict) -> None:
        raise NotImplementedError

    @task
    def tidy(self) -> None:
        """Leave chats idle for 10 minutes (the shopper is gone)."""
        cutoff = time.monotonic() - 600
        for channel, last in list(self.chats.items()):
            if last < cutoff:
                self.chats.pop(channel, None)
                self.unsubscribe(channel)


class Agent(Responder):
    """A human agent: many chats at once on one WebSocket, answers after thinking."""

    role = "agent"
    kind = "agent"
    fixed_count = 1

    def think(self) -> None:
        gevent.sleep(random.uniform(0.5, 1.5) * self.opts.agent_think)

    def reply(self, channel: str, data: dict) -> None:
        self.publish(channel, data, "agent answer")


class Bot(Responder):
    """The chatbot service: reads chats on WebSocket, answers at once through the server API."""

    role = "bot"
    kind = "bot"
    fixed_count = 1

    def reply(self, channel: str, data: dict) -> None:
        _api_call(self.api, "bot answer", "publish",
                  {"channel": channel, "data": data, "idempotency_key": uuid.uuid4().hex},
                  retry_for=30.0, stopping=lambda: self.stopping)


# --- backends on the server API ------------------------------------------------------------------------


class ApiUser(User):
    abstract = True

    def on_start(self) -> None:
        self.opts = options(self.environment)
        self.api = api_client(self.opts.relay_api, self.opts.relay_api_key)
        self.stopping = False
        self.seq = 0
        self._began = time.monotonic()

    def on_stop(self) -> None:
        self.stopping = True

    def publish(self, name: str, channel: str, data: dict) -> None:
        """At-least-once: retried with the same idempotency key while relay is away (a restart)."""
        self.seq += 1
        data = {**data, "seq": self.seq, "ts": time.time()}
        _api_call(self.api, name, "publish", {"channel": channel, "data": data, "idempotency_key": uuid.uuid4().hex},
                  retry_for=60.0, stopping=lambda: self.stopping)


_ONLINE: list = [0.0, []]  # when listed, orders channels with subscribers


class OrderBackend(ApiUser):
    """Order-status updates to shoppers online (found with the server API's ``channels``)."""

    fixed_count = 1
    STATUSES = ("paid", "packed", "shipped", "out for delivery", "delivered")

    def wait_time(self) -> float:
        # each backend serves up to --shoppers-per-backend of the shoppers online
        n = max(1, min(len(_ONLINE[1]), self.opts.shoppers_per_backend))
        return random.expovariate(1.0 / min(max(self.opts.order_interval / n, 0.005), 5.0))

    @task
    def order_status(self) -> None:
        now = time.monotonic()
        if now - _ONLINE[0] > 2.0:
            _ONLINE[0] = now
            result = _api_call(self.api, "channels", "channels", {"pattern": "orders:*"})
            if result is not None:
                _ONLINE[1] = list((result.get("channels") or {}).keys())
        if not _ONLINE[1]:
            return
        channel = random.choice(_ONLINE[1])
        self.publish("order status", channel, {"type": "order", "status": random.choice(self.STATUSES)})


class Announcer(ApiUser):
    """The sale announcement, every --announce-interval seconds."""

    fixed_count = 1

    def wait_time(self) -> float:  # constant pacing: one announcement per interval however long it took
        return max(0.0, self.opts.announce_interval - (time.monotonic() - self._began))

    @task
    def announce(self) -> None:
        self._began = time.monotonic()
        self.publish("sale announcement", self.opts.sale_channel,
                     {"type": "sale", "text": "flash deal: 40 % off headphones for the next 10 minutes"})

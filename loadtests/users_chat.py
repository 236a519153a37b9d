"""The chat side of the Locust users in ``loadtests/users.py``: shoppers (``ShopperWS``, ``ShopperTCP``)
and who answers their chats (``Agent``, ``Bot``), found through presence as the shop backend does.
"""

from __future__ import annotations

import random
import time
import uuid

import gevent
from locust import constant, task

from loadtests.clients import ApiClient, Disconnected, RelayError, Stream
from loadtests.reporting import count, ok
from loadtests.users_base import RelayUser, api_call

__all__ = ["Shopper", "ShopperWS", "ShopperTCP", "pick_responder", "Responder", "Agent", "Bot"]


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
        api_call(self.api, "assign chat", "publish",
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
        result = api_call(api, "presence", "presence", {"channel": f"support:{kind}s"})
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
        api_call(self.api, "bot answer", "publish",
                 {"channel": channel, "data": data, "idempotency_key": uuid.uuid4().hex},
                 retry_for=30.0, stopping=lambda: self.stopping)

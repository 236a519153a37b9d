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

This module is the one the scenarios import: the parameters (``DEFAULTS``, the command line options)
and the plan, with the users from ``users_chat.py`` (shoppers, agents, the bot), ``users_api.py``
(backends on the server API) and ``users_base.py`` (the kept relay connection, retried calls).
"""

from __future__ import annotations

import math
import os
from typing import Any

from locust import events
from locust.runners import WorkerRunner

from loadtests.users_api import Announcer, OrderBackend
from loadtests.users_base import options
from loadtests.users_chat import Agent, Bot, ShopperTCP, ShopperWS

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

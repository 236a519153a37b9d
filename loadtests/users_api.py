"""The backends of the Locust users in ``loadtests/users.py``: ``OrderBackend`` and ``Announcer``
publish through relay's HTTP server API (at least once: retried with the same idempotency key).
"""

from __future__ import annotations

import random
import time
import uuid

from locust import User, task

from loadtests.clients import api_client
from loadtests.users_base import api_call, options

__all__ = ["ApiUser", "OrderBackend", "Announcer"]


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
        api_call(self.api, name, "publish", {"channel": channel, "data": data, "idempotency_key": uuid.uuid4().hex},
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
            result = api_call(self.api, "channels", "channels", {"pattern": "orders:*"})
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

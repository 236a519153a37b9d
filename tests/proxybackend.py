"""A real HTTP backend for event-proxy tests: an aiohttp app on a free port in the test's loop.

Each hook answers what the test put in ``backend.answer[hook]``: a dict (sent as the JSON
reply), a callable ``(body, headers) -> dict`` (may be async), or a :class:`Misbehave`
(an HTTP status, a delay, raw bytes). Every request is recorded in ``backend.seen[hook]``
as ``(body, headers)``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from relay.testing import free_port

HOOKS = ("connect", "refresh", "subscribe", "sub_refresh", "publish", "rpc")


@dataclass
class Misbehave:
    status: int = 200
    delay: float = 0.0
    raw: bytes | None = None
    reply: dict | None = None


class ProxyBackend:
    def __init__(self) -> None:
        self.port = free_port()
        self.answer: dict[str, Any] = {h: {"result": {}} for h in HOOKS}
        self.seen: dict[str, list[tuple[dict, dict]]] = defaultdict(list)
        self.in_flight = 0
        self.max_in_flight = 0
        self._runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def endpoints(self) -> dict[str, str]:
        """The [proxy] table pointing every hook here (rpc: /rpc, plus /rpc/orders for orders.*)."""
        return {"connect_endpoint": self.url("/connect"), "refresh_endpoint": self.url("/refresh"),
                "subscribe_endpoint": self.url("/subscribe"), "sub_refresh_endpoint": self.url("/sub_refresh"),
                "publish_endpoint": self.url("/publish"), "rpc_endpoint": self.url("/rpc"),
                "rpc_routes": {"orders.*": self.url("/rpc/orders")}}

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path.strip("/")
        hook = path.split("/", 1)[0]
        body = orjson.loads(await request.read())
        body["_path"] = "/" + path
        self.seen[hook].append((body, dict(request.headers)))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            answer = self.answer[hook]
            if callable(answer):
                answer = answer(body, dict(request.headers))
                if inspect.isawaitable(answer):
                    answer = await answer
            if isinstance(answer, Misbehave):
                if answer.delay:
                    await asyncio.sleep(answer.delay)
                if answer.raw is not None:
                    return web.Response(body=answer.raw, status=answer.status, content_type="application/json")
                return web.Response(body=orjson.dumps(answer.reply or {"result": {}}), status=answer.status,
                                    content_type="application/json")
            return web.Response(body=orjson.dumps(answer), content_type="application/json")
        finally:
            self.in_flight -= 1

    async def start(self) -> ProxyBackend:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

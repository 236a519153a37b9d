"""A real HTTP server that records webhook calls (support chat escalations), in the test's loop.

``async with Webhook([503]) as hook:`` answers 503 to the first POST to ``hook.url``, then 200;
``hook.bodies`` holds every request body, decoded.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from relay.testing import free_port

__all__ = ["Webhook"]


class Webhook:
    def __init__(self, statuses: list[int] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/escalate"
        self.statuses = list(statuses or [])
        self.bodies: list[dict] = []
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.bodies.append(orjson.loads(await request.read()))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    async def __aenter__(self) -> Webhook:
        app = web.Application()
        app.router.add_post("/escalate", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

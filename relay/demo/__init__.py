"""Demo mode (``demo = true``, off by default): a browser chat page at ``/demo`` and a
publisher that pushes order-status updates and sale announcements, so ``make run``
shows relay doing its job. The page issues guest tokens, which is why it must
never be on in production."""

from __future__ import annotations

import asyncio
import itertools
import secrets
from importlib import resources

from aiohttp import web

from relay.auth import make_connect_token

__all__ = ["add_demo_routes", "demo_publisher"]

STATUSES = ["paid", "packed", "shipped", "out for delivery", "delivered"]


def add_demo_routes(app: web.Application, node) -> None:
    page = resources.files(__package__).joinpath("index.html").read_text()

    async def demo(request: web.Request) -> web.Response:
        user = request.query.get("user") or f"guest-{secrets.token_hex(3)}"
        token = make_connect_token(user, node.cfg.token_hmac_secret, ttl=3600)
        ws = f"ws://{request.host.split(':')[0]}:{node.cfg.ws_port}{node.cfg.ws_path}"
        html = page.replace("{{TOKEN}}", token).replace("{{USER}}", user).replace("{{WS_URL}}", ws)
        return web.Response(text=html, content_type="text/html")

    app.router.add_get("/demo", demo)


async def demo_publisher(node, interval: float = 5.0) -> None:
    """Every ``interval`` seconds: an order-status push and, every third time, a sale announcement."""
    for i in itertools.count():
        await asyncio.sleep(interval)
        await node.publish("orders:demo", {"order": 1042, "status": STATUSES[i % len(STATUSES)]})
        if i % 3 == 0:
            await node.publish("sale:flash", {"text": f"Flash sale #{i // 3 + 1}: 20% off for 10 minutes"})

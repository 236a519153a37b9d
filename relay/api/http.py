"""Centrifugo-compatible HTTP server API (``POST /api/<method>``) plus ``/healthz``, ``/readyz`` and
``/metrics``.

Requests carry the key in ``X-API-Key`` (or ``Authorization: apikey <key>``).
Answers are ``{"result": {...}}`` or ``{"error": {"code": N, "message": "..."}}``
with HTTP 200, as Centrifugo does, so its API clients (``cent``) work unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
from typing import Any
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from relay.brokers.base import BrokerUnavailable
from relay.codes import DISCONNECTS, ERRORS, ClientError, Disconnect
from relay.config import MAX_PACE_MS
from relay.core import LANES

__all__ = ["build_api_app", "API_METHODS"]

log = logging.getLogger("relay.api")

Handler = Callable[[Any, dict], Awaitable[dict]]


def _str(p: dict, key: str, required: bool = True) -> str:
    v = p.get(key, "")
    if not isinstance(v, str) or (required and not v):
        raise ERRORS.BAD_REQUEST
    return v


def _channel(node, p: dict) -> str:
    ch = _str(p, "channel")
    if not node.valid_channel(ch):
        raise ERRORS.BAD_REQUEST
    if node.cfg.channel_options(ch) is None:
        raise ERRORS.UNKNOWN_CHANNEL
    return ch


def _publish_args(p: dict) -> dict:
    if "b64data" in p and "data" not in p:
        try:
            base64.b64decode(p["b64data"], validate=True)
        except Exception:
            raise ERRORS.BAD_REQUEST from None
        raise ClientError(107, "bad request: binary data (b64data) is not supported by the JSON protocol")
    if "data" not in p:
        raise ERRORS.BAD_REQUEST
    tags = p.get("tags") or None
    if tags is not None and (not isinstance(tags, dict)
                             or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items())):
        raise ERRORS.BAD_REQUEST
    key = p.get("idempotency_key") or None
    if key is not None and not isinstance(key, str):
        raise ERRORS.BAD_REQUEST
    lane = p.get("lane")  # relay's extension: this publication's priority lane (docs/lanes.md)
    if lane is not None and lane not in LANES:
        raise ClientError(107, f"bad request: lane must be one of {', '.join(LANES)}")
    pace = p.get("pace_ms")  # relay's extension: spread this publication's fan-out (docs/pacing.md)
    if pace is not None and (type(pace) is not int or not 0 <= pace <= MAX_PACE_MS):
        raise ClientError(107, f"bad request: pace_ms must be an integer between 0 and {MAX_PACE_MS}")
    return {"tags": tags, "skip_history": bool(p.get("skip_history", False)), "idempotency_key": key,
            "lane": None if lane is None else LANES[lane], "pace_ms": pace}


async def api_publish(node, p: dict) -> dict:
    channel = _channel(node, p)
    pos = await node.publish(channel, p["data"] if "data" in p else None, **_publish_args(p))
    return {"offset": pos.offset, "epoch": pos.epoch} if pos.epoch else {}


async def api_broadcast(node, p: dict) -> dict:
    channels = p.get("channels")
    if not isinstance(channels, list) or not channels:
        raise ERRORS.BAD_REQUEST
    args = _publish_args(p)
    responses: list[dict | None] = []
    valid: list[tuple[int, str]] = []
    for ch in channels:
        try:
            if not isinstance(ch, str):
                raise ERRORS.BAD_REQUEST
            valid.append((len(responses), _channel(node, {"channel": ch})))
            responses.append(None)
        except ClientError as e:
            responses.append({"error": e.to_dict()})
    # one broker round trip per shard for the whole broadcast
    results = await node.publish_many([(ch, p["data"]) for _, ch in valid], **args)
    if results and all(r is ERRORS.OVERLOADED for r in results):
        raise ERRORS.OVERLOADED  # 429 with Retry-After, like publish
    for (i, _), res in zip(valid, results, strict=True):
        if isinstance(res, ClientError):
            responses[i] = {"error": res.to_dict()}
        else:
            responses[i] = {"result": {"offset": res.offset, "epoch": res.epoch} if res.epoch else {}}
    return {"responses": responses}


async def api_presence(node, p: dict) -> dict:
    channel = _channel(node, p)
    if not node.cfg.channel_options(channel).presence:
        raise ERRORS.NOT_AVAILABLE
    return {"presence": await node.presence.presence(channel)}


async def api_presence_stats(node, p: dict) -> dict:
    channel = _channel(node, p)
    if not node.cfg.channel_options(channel).presence:
        raise ERRORS.NOT_AVAILABLE
    clients, users = await node.presence.presence_stats(channel)
    return {"num_clients": clients, "num_users": users}


async def api_history(node, p: dict) -> dict:
    channel = _channel(node, p)
    if node.cfg.channel_options(channel).history_size <= 0:
        raise ERRORS.NOT_AVAILABLE
    return await node.history(channel, p)


async def api_history_remove(node, p: dict) -> dict:
    channel = _channel(node, p)
    await node.broker.remove_history(channel)
    return {}


async def _on_connections(node, op: str, **params: Any) -> dict:
    """Apply a server operation to a user's connections on every node (relay/node/serverops.py)."""
    try:
        await node.server_ops.send(op, **params)
    except BrokerUnavailable:
        raise ERRORS.INTERNAL from None
    return {}


async def api_unsubscribe(node, p: dict) -> dict:
    channel = _channel(node, p)
    return await _on_connections(node, "unsubscribe", user=_str(p, "user", required=False), channel=channel,
                                 client=_str(p, "client", required=False))


async def api_disconnect(node, p: dict) -> dict:
    user = _str(p, "user", required=False)
    d = DISCONNECTS.FORCE_NO_RECONNECT
    spec = p.get("disconnect")
    if spec is not None:
        if not isinstance(spec, dict) or type(spec.get("code")) is not int or not 3000 <= spec["code"] < 5000:
            raise ERRORS.BAD_REQUEST
        d = Disconnect(spec["code"], str(spec.get("reason", "")))
    keep = p.get("whitelist") or []
    if not isinstance(keep, list) or not all(isinstance(c, str) for c in keep):
        raise ERRORS.BAD_REQUEST
    return await _on_connections(node, "disconnect", user=user, code=d.code, reason=d.reason,
                                 client=_str(p, "client", required=False), whitelist=keep)


async def api_subscribe(node, p: dict) -> dict:
    """Subscribe a user's connections to a channel (a server-side subscription: Centrifugo's subscribe push)."""
    channel = _channel(node, p)
    since = p.get("recover_since")
    pos = None
    if since is not None:
        if not isinstance(since, dict) or type(since.get("offset", 0)) is not int or since.get("offset", 0) < 0 \
                or not isinstance(since.get("epoch", ""), str):
            raise ClientError(107, "bad request: recover_since must be {offset: int >= 0, epoch: string}")
        pos = (since.get("offset", 0), since.get("epoch", ""))
    return await _on_connections(node, "subscribe", user=_str(p, "user", required=False), channel=channel,
                                 client=_str(p, "client", required=False), data=p.get("data"), since=pos)


async def api_refresh(node, p: dict) -> dict:
    """Refresh a user's connections: a new expiry (expire_at, unix seconds; 0 or absent: never) or ``expired``
    (3005: the client reconnects with a new token)."""
    expired = p.get("expired", False)
    expire_at = p.get("expire_at") or None
    if not isinstance(expired, bool) or (expire_at is not None and (type(expire_at) is not int or expire_at < 0)):
        raise ClientError(107, "bad request: expired must be a boolean, expire_at unix seconds")
    return await _on_connections(node, "refresh", user=_str(p, "user", required=False),
                                 client=_str(p, "client", required=False), expired=expired, expire_at=expire_at,
                                 info=p.get("info"))


async def api_batch(node, p: dict) -> dict:
    """Many commands in one request: ``{"commands": [{"publish": {...}}, ...], "parallel": bool}`` ->
    ``{"replies": [{"publish": {...}} | {"error": {...}}, ...]}`` in command order (Centrifugo's batch; the
    replies are the answer itself, not wrapped in "result")."""
    cmds = p.get("commands")
    if not isinstance(cmds, list) or not isinstance(p.get("parallel", False), bool):
        raise ClientError(107, "bad request: commands must be a list, parallel a boolean")
    limit = node.cfg.api_max_batch_commands
    if len(cmds) > limit:
        raise ClientError(107, f"bad request: at most {limit} commands in a batch (api_max_batch_commands)")

    async def one(cmd: Any) -> dict:
        if not isinstance(cmd, dict) or len(cmd) != 1:
            return {"error": ClientError(107, "bad request: a command is {method: params}").to_dict()}
        ((name, params),) = cmd.items()
        handler = API_METHODS.get(name) if name != "batch" else None
        if handler is None:
            return {"error": ERRORS.METHOD_NOT_FOUND.to_dict()}
        if not isinstance(params, dict):
            return {"error": ClientError(107, "bad request: params must be an object").to_dict()}
        try:
            return {name: await handler(node, params)}
        except ClientError as e:
            return {"error": e.to_dict()}
        except Exception:
            log.exception("server API method %s failed in a batch", name)
            return {"error": ERRORS.INTERNAL.to_dict()}

    if not p.get("parallel"):
        return {"replies": [await one(cmd) for cmd in cmds]}
    sem = asyncio.Semaphore(node.cfg.api_batch_concurrency)

    async def bounded(cmd: Any) -> dict:
        async with sem:
            return await one(cmd)

    return {"replies": list(await asyncio.gather(*(bounded(cmd) for cmd in cmds)))}


async def api_channels(node, p: dict) -> dict:
    return {"channels": node.channels(_str(p, "pattern", required=False))}


async def api_info(node, p: dict) -> dict:
    return {"nodes": [node.info()]}


API_METHODS: dict[str, Handler] = {
    "publish": api_publish,
    "broadcast": api_broadcast,
    "presence": api_presence,
    "presence_stats": api_presence_stats,
    "history": api_history,
    "history_remove": api_history_remove,
    "subscribe": api_subscribe,
    "unsubscribe": api_unsubscribe,
    "disconnect": api_disconnect,
    "refresh": api_refresh,
    "channels": api_channels,
    "info": api_info,
    "batch": api_batch,
}


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def build_api_app(node, readiness: Callable[[], Awaitable[str]]) -> web.Application:
    """``readiness()`` answers 'ready' or why not ('starting', 'draining', 'broker unreachable')."""
    cfg = node.cfg
    expected = cfg.api_key.encode()

    def authorized(request: web.Request) -> bool:
        if not expected:
            return False
        key = request.headers.get("X-API-Key", "")
        if not key:
            auth = request.headers.get("Authorization", "")
            if auth.lower().startswith("apikey "):
                key = auth[7:].strip()
        return bool(key) and hmac.compare_digest(key.encode(), expected)

    async def api(request: web.Request) -> web.Response:
        name = request.match_info["method"]
        method = name if name in API_METHODS else "unknown"
        response, result = await call(request, name)
        node.stats.api_requests[(method, result)] += 1
        return response

    async def call(request: web.Request, name: str) -> tuple[web.Response, str]:
        if not authorized(request):
            node.stats.auth_failure("api_key")
            return _json({"error": ERRORS.UNAUTHORIZED.to_dict()}, status=401), "unauthorized"
        handler = API_METHODS.get(name)
        if handler is None:
            return _json({"error": ERRORS.METHOD_NOT_FOUND.to_dict()}, status=404), "error"
        body = await request.read()
        try:
            params = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError:
            return _json({"error": ClientError(107, "bad request: invalid JSON").to_dict()}, status=400), "bad_request"
        if not isinstance(params, dict):
            return _json({"error": ClientError(107, "bad request: body must be an object").to_dict()},
                         status=400), "bad_request"
        try:
            result = await handler(node, params)
            return _json(result if name == "batch" else {"result": result}), "ok"
        except ClientError as e:
            if e is ERRORS.OVERLOADED:  # publisher backpressure: come back later, nothing was accepted
                response = _json({"error": e.to_dict()}, status=429)
                response.headers["Retry-After"] = node.backpressure.retry_after_header()
                return response, "overloaded"
            return _json({"error": e.to_dict()}), "error"
        except Exception:
            log.exception("server API method %s failed", name)
            return _json({"error": ERRORS.INTERNAL.to_dict()}), "internal_error"

    async def healthz(request: web.Request) -> web.Response:
        # liveness of the process; the broker's shards as its own checks last saw them (local state)
        health = node.broker.health()
        return _json({"status": "ok", "broker": {shard: "up" if up else "down" for shard, up in health.items()}})

    async def readyz(request: web.Request) -> web.Response:
        state = await readiness()
        return _json({"status": state}, status=200 if state == "ready" else 503)

    async def metrics(request: web.Request) -> web.Response:
        exporter = node.metrics
        if exporter is None:
            return _json({"error": ERRORS.NOT_AVAILABLE.to_dict()}, status=404)
        state = await readiness()
        exporter.sync(ready=state == "ready")
        body, content_type = exporter.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    @web.middleware
    async def header_limits(request: web.Request, handler):
        # the same limits as the WebSocket handshake (aiohttp's own defaults are looser)
        raw = request.raw_headers
        if len(raw) > cfg.max_handshake_headers or sum(len(k) + len(v) + 4 for k, v in raw) > cfg.max_handshake_size:
            return _json({"error": ClientError(107, "bad request: request headers too large").to_dict()}, status=431)
        return await handler(request)

    app = web.Application(client_max_size=cfg.api_max_body_size, middlewares=[header_limits])
    app.router.add_post("/api/{method}", api)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if cfg.metrics:
        app.router.add_get("/metrics", metrics)
    if cfg.admin:
        from relay.api.admin import add_admin_routes

        add_admin_routes(app, node, readiness, authorized, API_METHODS["publish"])
    return app

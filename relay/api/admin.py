"""The read-only admin page: ``GET /admin`` (the page), ``GET /admin/stats`` (its figures) and
``POST /admin/publish`` (its test-publish form).

The figures are the ones ``/metrics`` exposes, read back from the same exposition (so with
``--workers`` they are summed over every worker, exactly as Prometheus sees them), reduced
to what an operator watches during a sale: connections, channels, publications and
deliveries (the page turns the counters into rates), slow-consumer disconnects, the
active core. Both data routes need the API key (``X-API-Key`` or ``Authorization: apikey
<key>``) or an admin token (``Authorization: Bearer <token>``, from ``relay token --admin``);
the page itself is a static shell that holds no data.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from relay.auth import TokenExpired, TokenInvalid
from relay.codes import ERRORS, ClientError

__all__ = ["add_admin_routes", "summarize", "TOP_CHANNELS"]

TOP_CHANNELS = 10  #: channels listed on the page, most subscribers first (this process's hub)


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json",
                        headers={"Cache-Control": "no-store"})


def _samples(exposition: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def _quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` of a cumulative histogram (le, count)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    want = q * buckets[-1][1]
    for le, count in buckets:
        if count >= want:
            return le
    return None


def summarize(exposition: str) -> dict[str, Any]:
    """The page's figures from a Prometheus text exposition of relay's metrics."""
    m = _samples(exposition)

    def total(name: str) -> float:
        return sum(v for _, v in m.get(name, ()))

    def by(name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for labels, v in m.get(name, ()):
            out[labels.get(label, "")] = out.get(labels.get(label, ""), 0) + v
        return out

    def one(name: str) -> float | None:
        vals = [v for _, v in m.get(name, ())]
        return vals[0] if vals else None

    def label_of(name: str, label: str) -> str | None:
        for labels, v in m.get(name, ()):
            if v:
                return labels.get(label)
        return None

    buckets = sorted(((float(lb["le"]), v) for lb, v in m.get("relay_fanout_latency_seconds_bucket", ())),
                     key=lambda x: x[0])
    commands = m.get("relay_client_commands_total", ())
    return {
        "core": label_of("relay_core_info", "implementation"),
        "version": label_of("relay_build_info", "version"),
        "ready": one("relay_ready"),
        "broker_up": one("relay_broker_up"),
        "connections": total("relay_connections"),
        "connections_by_transport": by("relay_connections", "transport"),
        "connections_max": one("relay_connections_max"),
        "accepted_total": total("relay_connections_accepted_total"),
        "subscriptions": total("relay_subscriptions"),
        "channels": total("relay_channels"),
        "publications_total": total("relay_publications_total"),
        "publications_by_source": by("relay_publications_total", "source"),
        "deliveries_total": total("relay_deliveries_total"),
        "deliveries_by_transport": by("relay_deliveries_total", "transport"),
        "socket_writes_total": total("relay_socket_writes_total"),
        "slow_consumer_disconnects_total": total("relay_slow_consumer_disconnects_total"),
        "disconnects_by_code": by("relay_disconnects_total", "code"),
        "client_commands_total": sum(v for _, v in commands),
        "client_command_errors_total": sum(v for lb, v in commands if lb.get("result") != "ok"),
        "api_requests_total": total("relay_api_requests_total"),
        "auth_failures_total": total("relay_auth_failures_total"),
        "outbound_queue_bytes": total("relay_outbound_queue_bytes"),
        "resident_memory_bytes": total("relay_resident_memory_bytes"),
        "worker_restarts_total": total("relay_worker_restarts_total"),
        "fanout_p50_seconds": _quantile(buckets, 0.5),
        "fanout_p99_seconds": _quantile(buckets, 0.99),
    }


def add_admin_routes(app: web.Application, node, readiness: Callable[[], Awaitable[str]],
                     api_key_ok: Callable[[web.Request], bool], publish: Callable[[Any, dict], Awaitable[dict]]
                     ) -> None:
    """``api_key_ok`` checks the API key of a request; ``publish`` is the server API's publish method."""
    page = resources.files(__package__).joinpath("admin.html").read_bytes()

    def allowed(request: web.Request) -> bool:
        if api_key_ok(request):
            return True
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            try:
                node.tokens.verify_admin(auth[7:].strip())
                return True
            except (TokenInvalid, TokenExpired):
                pass
        node.stats.auth_failure("admin")
        return False

    async def admin_page(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", headers={"Cache-Control": "no-cache"})

    async def stats(request: web.Request) -> web.Response:
        if not allowed(request):
            return _json({"error": ERRORS.UNAUTHORIZED.to_dict()}, status=401)
        exporter = node.metrics
        if exporter is None:
            return _json({"error": {"code": 108, "message": "metrics are off (metrics = false): the admin page "
                                                            "reads the figures of /metrics"}}, status=404)
        state = await readiness()
        exporter.sync(ready=state == "ready")
        body, _ = exporter.exposition()
        figures = summarize(body.decode())
        chans = sorted(node.channels().items(), key=lambda kv: -kv[1]["num_clients"])[:TOP_CHANNELS]
        return _json({"ts": time.time(), "node": node.name, "state": state, "figures": figures,
                      "top_channels": [{"channel": c, "subscribers": v["num_clients"]} for c, v in chans]})

    async def test_publish(request: web.Request) -> web.Response:
        if not allowed(request):
            return _json({"error": ERRORS.UNAUTHORIZED.to_dict()}, status=401)
        try:
            params = orjson.loads(await request.read() or b"{}")
        except orjson.JSONDecodeError:
            return _json({"error": ClientError(107, "bad request: invalid JSON").to_dict()}, status=400)
        if not isinstance(params, dict):
            return _json({"error": ClientError(107, "bad request: body must be an object").to_dict()}, status=400)
        try:
            result = await publish(node, params)
        except ClientError as e:
            return _json({"error": e.to_dict()}, status=400)
        node.stats.api_requests[("publish", "ok")] += 1
        return _json({"result": result})

    app.router.add_get("/admin", admin_page)
    app.router.add_get("/admin/stats", stats)
    app.router.add_post("/admin/publish", test_publish)

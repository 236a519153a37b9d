"""The event proxy: HTTP hooks from relay to the shop's backend, in Centrifugo's HTTP proxy format.

A backend written for Centrifugo's proxy works against relay unchanged: every hook is a
``POST`` of a JSON object (``client``, ``transport``, ``protocol``, ``encoding``, ``user``,
``meta`` and the hook's own fields) carrying the client's allow-listed handshake headers,
answered by ``{"result": {...}}``, ``{"error": {"code", "message"}}`` (the client gets that
error) or ``{"disconnect": {"code", "reason"}}`` (the client is disconnected).

Failure is always a decision, never a hang. Each hook has ``max_in_flight`` slots, a queue
of ``queue_size`` requests that wait at most ``queue_deadline`` for one, and a request
``timeout``; a request that finds the queue full or waits too long is *shed*
(:class:`ProxyFailure` ``overloaded``), and a timeout, a refused connection, a non-200
status or a reply that is not exactly what the hook may answer is a :class:`ProxyFailure`
of its kind. The session turns these into Centrifugo's temporary errors (the SDKs retry
with backoff) or, for a connect storm, a disconnect with jittered retry advice.

A reply is validated before relay acts on it: unknown fields, wrong types, a body over
``max_response_size`` or undecodable ``b64`` data are refused as ``malformed`` (logged,
counted); a backend cannot add fields relay would silently ignore, nor name a user in a
hook that is not about who the user is.

The HTTP client is aiohttp's: already relay's HTTP server, well kept, asyncio-native, with
a keep-alive connection pool and per-request timeouts.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from relay.codes import ClientError, Disconnect
from relay.config import PROXY_HOOKS, ProxyOptions
from relay.ops.histogram import LocalHistogram

__all__ = ["EventProxy", "ProxyFailure", "HookStats", "FAILURE_KINDS", "parse_reply", "RESULT_FIELDS",
           "forward_headers"]

log = logging.getLogger("relay.proxy")

#: why a hook request failed (the ``kind`` label of relay_proxy_errors_total)
FAILURE_KINDS = ("timeout", "unreachable", "status", "malformed", "overloaded")

_ANY = object()
#: what each hook's ``result`` may hold, and the type of each field (``_ANY``: any JSON value)
RESULT_FIELDS: dict[str, dict[str, Any]] = {
    "connect": {"user": str, "expire_at": int, "info": _ANY, "b64info": str, "data": _ANY, "b64data": str,
                "channels": list, "subs": dict, "meta": dict},
    "refresh": {"expired": bool, "expire_at": int, "info": _ANY, "b64info": str},
    "subscribe": {"info": _ANY, "b64info": str, "data": _ANY, "b64data": str, "override": dict,
                  "expire_at": int},
    "sub_refresh": {"expired": bool, "expire_at": int, "info": _ANY, "b64info": str},
    "publish": {"data": _ANY, "b64data": str, "skip_history": bool},
    "rpc": {"data": _ANY, "b64data": str},
}
#: error codes a backend may answer (Centrifugo's client error range) and disconnect codes
ERROR_CODES = range(100, 2000)
DISCONNECT_CODES = range(3000, 5000)


class ProxyFailure(Exception):
    """A hook request gave no usable answer; ``kind`` is one of FAILURE_KINDS."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


@dataclass
class HookStats:
    """One hook's pool and figures (read by the metrics exporter)."""

    name: str
    slots: asyncio.Semaphore
    waiting: int = 0
    in_flight: int = 0
    requests: int = 0
    latency: LocalHistogram = field(default_factory=LocalHistogram)
    errors: Counter = field(default_factory=Counter)


def forward_headers(headers: dict[str, str], allow: list[str], cookies: list[str]) -> dict[str, str]:
    """The handshake headers (lower-cased names) the backend may see, under their configured names;
    the Cookie header keeps only the allow-listed cookies when ``cookies`` is set."""
    out: dict[str, str] = {}
    for name in allow:
        value = headers.get(name.lower())
        if value is None:
            continue
        if name.lower() == "cookie" and cookies:
            keep = set(cookies)
            parts = [c.strip() for c in value.replace(", ", "; ").split(";")]
            value = "; ".join(c for c in parts if c.split("=", 1)[0].strip() in keep)
            if not value:
                continue
        out[name] = value
    return out


def _decode_b64(value: str, what: str) -> Any:
    try:
        return orjson.loads(base64.b64decode(value, validate=True))
    except (ValueError, orjson.JSONDecodeError):
        raise ProxyFailure("malformed", f"{what} is not base64 of JSON (relay's clients speak JSON)") from None


def parse_reply(hook: str, body: bytes) -> dict[str, Any]:
    """The validated ``result`` of a hook reply (``b64*`` fields decoded into their plain names).

    Raises the ClientError or Disconnect the backend answered, or ProxyFailure("malformed")."""
    try:
        reply = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ProxyFailure("malformed", "not JSON") from None
    if not isinstance(reply, dict):
        raise ProxyFailure("malformed", "not a JSON object")
    keys = set(reply) - {"result", "error", "disconnect"}
    if keys:
        raise ProxyFailure("malformed", f"unknown fields {sorted(keys)}")
    answers = [k for k in ("result", "error", "disconnect") if reply.get(k) is not None]
    if len(answers) > 1:
        raise ProxyFailure("malformed", f"both {answers[0]} and {answers[1]}")
    if "error" in answers:
        err = reply["error"]
        if not isinstance(err, dict) or set(err) - {"code", "message", "temporary"}:
            raise ProxyFailure("malformed", "error must be {code, message[, temporary]}")
        code, message = err.get("code"), err.get("message", "")
        if type(code) is not int or code not in ERROR_CODES or not isinstance(message, str):
            raise ProxyFailure("malformed", f"error code must be an integer in 100-1999, got {code!r}")
        raise ClientError(code, message[:256], temporary=err.get("temporary") is True)
    if "disconnect" in answers:
        d = reply["disconnect"]
        if not isinstance(d, dict) or set(d) - {"code", "reason", "reconnect"}:
            raise ProxyFailure("malformed", "disconnect must be {code, reason}")
        code, reason = d.get("code"), d.get("reason", "")
        if type(code) is not int or code not in DISCONNECT_CODES or not isinstance(reason, str):
            raise ProxyFailure("malformed", f"disconnect code must be an integer in 3000-4999, got {code!r}")
        raise Disconnect(code, reason[:120])
    result = reply.get("result", {})
    if not isinstance(result, dict):
        raise ProxyFailure("malformed", "result must be an object")
    allowed = RESULT_FIELDS[hook]
    for key, value in result.items():
        tp = allowed.get(key)
        if tp is None:
            raise ProxyFailure("malformed", f"unknown result field {key!r} for the {hook} hook")
        if value is None:
            continue
        if tp is not _ANY and (type(value) is not tp):
            raise ProxyFailure("malformed", f"result.{key} must be {tp.__name__}, got {type(value).__name__}")
    out = {k: v for k, v in result.items() if v is not None}
    for key in ("b64data", "b64info"):
        if key in out:
            out[key[3:]] = _decode_b64(out.pop(key), f"result.{key}")
    if "expire_at" in out and out["expire_at"] < 0:
        raise ProxyFailure("malformed", "result.expire_at must be >= 0")
    if hook == "connect":
        chans = out.get("channels", [])
        if not all(isinstance(c, str) for c in chans):
            raise ProxyFailure("malformed", "result.channels must be a list of strings")
        subs = out.get("subs", {})
        if not all(isinstance(v, dict) and not set(v) - {"info", "b64info", "data", "b64data", "override"}
                   for v in subs.values()):
            raise ProxyFailure("malformed", "result.subs must map channels to {info, data, override}")
        for ch, sub in subs.items():
            for key in ("b64data", "b64info"):
                if isinstance(sub.get(key), str):
                    sub[key[3:]] = _decode_b64(sub.pop(key), f"result.subs[{ch!r}].{key}")
    return out


class EventProxy:
    """The hooks of one node: a keep-alive HTTP pool, and per hook its slots, queue and figures."""

    def __init__(self, opts: ProxyOptions) -> None:
        self.opts = opts
        self.hooks = {h: HookStats(h, asyncio.Semaphore(opts.max_in_flight)) for h in PROXY_HOOKS}
        self._http: aiohttp.ClientSession | None = None

    def enabled(self, hook: str) -> bool:
        if hook == "rpc":
            return bool(self.opts.rpc_endpoint or self.opts.rpc_routes)
        return bool(self.opts.endpoint(hook))

    def rpc_endpoint(self, method: str) -> str | None:
        for pattern, url in self.opts.rpc_routes.items():
            if fnmatch.fnmatchcase(method, pattern):
                return url
        return self.opts.rpc_endpoint or None

    def forward(self, headers: dict[str, str]) -> dict[str, str]:
        return forward_headers(headers, self.opts.http_headers, self.opts.cookies)

    def shed_advice(self) -> float:
        """Seconds a shed client is told to wait: shed_retry_after, jittered 0.5-1.5x."""
        return self.opts.shed_retry_after * random.uniform(0.5, 1.5)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            connector = aiohttp.TCPConnector(limit=self.opts.max_in_flight * len(self.hooks), limit_per_host=0,
                                             keepalive_timeout=30.0, ttl_dns_cache=300)
            self._http = aiohttp.ClientSession(connector=connector, raise_for_status=False,
                                               timeout=aiohttp.ClientTimeout(total=self.opts.timeout),
                                               skip_auto_headers=("User-Agent",))
        return self._http

    async def call(self, hook: str, body: dict[str, Any], headers: dict[str, str] | None = None,
                   endpoint: str | None = None) -> dict[str, Any]:
        """POST ``body`` to the hook's endpoint; its validated result (see parse_reply)."""
        h = self.hooks[hook]
        try:
            await self._admit(h)
        except ProxyFailure as e:
            h.errors[e.kind] += 1
            raise
        h.in_flight += 1
        h.requests += 1
        t0 = time.perf_counter()
        try:
            raw = await self._post(endpoint or self.opts.endpoint(hook), body, headers or {})
            return parse_reply(hook, raw)
        except ProxyFailure as e:
            h.errors[e.kind] += 1
            log.warning("proxy %s failed: %s", hook, e, extra={"event": f"proxy_{e.kind}", "hook": hook,
                                                                "client": body.get("client", "")})
            raise
        finally:
            h.latency.observe(time.perf_counter() - t0)
            h.in_flight -= 1
            h.slots.release()

    async def _admit(self, h: HookStats) -> None:
        if not h.slots.locked():
            await h.slots.acquire()
            return
        if h.waiting >= self.opts.queue_size:
            raise ProxyFailure("overloaded", "queue full")
        h.waiting += 1
        try:
            await asyncio.wait_for(h.slots.acquire(), self.opts.queue_deadline)
        except TimeoutError:
            raise ProxyFailure("overloaded", "no free slot within queue_deadline") from None
        finally:
            h.waiting -= 1

    async def _post(self, url: str, body: dict[str, Any], headers: dict[str, str]) -> bytes:
        limit = self.opts.max_response_size
        try:
            async with self._session().post(url, data=orjson.dumps(body),
                                            headers={**headers, "Content-Type": "application/json"}) as resp:
                if resp.status != 200:
                    raise ProxyFailure("status", f"HTTP {resp.status}")
                raw = await resp.content.read(limit + 1)
                if len(raw) > limit:
                    raise ProxyFailure("malformed", f"reply over max_response_size ({limit} bytes)")
                return raw
        except TimeoutError:
            raise ProxyFailure("timeout", f"no reply within {self.opts.timeout:g}s") from None
        except (aiohttp.ClientError, OSError) as e:
            raise ProxyFailure("unreachable", f"{type(e).__name__}: {e}") from None

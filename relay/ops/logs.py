"""Structured logs: one event per line, JSON for machines or text for a terminal, rate-limited.

Code logs through the standard ``logging`` module and names the event and its ids in
``extra``::

    log.info("client disconnected", extra={"event": "disconnect", "client": cid, "user": u, "code": 3008})

JSON lines carry ``ts``, ``level``, ``logger``, ``event``, ``msg`` and those ids (plus ``node``
and ``worker``). Every line passes a token bucket per event kind (``log_rate`` per second,
``log_burst`` at once), so a flood of bad clients cannot fill the disk; the next line let
through says how many were ``dropped``, and ``relay_log_lines_dropped_total`` counts them.
Anything shaped like a JWT is masked before a line is written, whatever logged it.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["setup", "JsonFormatter", "TextFormatter", "RateLimitFilter", "PeerFaultFilter", "dropped_total"]

# the attributes every LogRecord has; anything else came in through ``extra``
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")

_dropped = 0


def dropped_total() -> int:
    return _dropped


def _mask(text: str, secrets: tuple[str, ...]) -> str:
    text = _JWT.sub("[token]", text)
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, "[secret]")
    return text


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def __init__(self, static: dict[str, Any], secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.static = static
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", None) or record.name.rpartition(".")[2],
            "msg": record.getMessage(),
        }
        line.update(self.static)
        for k, v in _extras(record).items():
            if k != "event":
                line[k] = v
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return _mask(orjson.dumps(line, default=str).decode(), self.secrets)


class TextFormatter(logging.Formatter):
    def __init__(self, prefix: str = "", secrets: tuple[str, ...] = ()) -> None:
        super().__init__("%(asctime)s %(levelname)s " + prefix + "%(name)s: %(message)s")
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ids = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        return _mask(f"{text} [{ids}]" if ids else text, self.secrets)


class RateLimitFilter(logging.Filter):
    """A token bucket per event kind (the ``event`` extra, else the message's format string)."""

    def __init__(self, rate: float, burst: int) -> None:
        super().__init__()
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[Any, list[float]] = {}  # key -> [tokens, last, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        global _dropped
        key = (record.name, getattr(record, "event", None) or record.msg)
        now = time.monotonic()
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) > 10_000:  # many distinct messages: start over rather than grow
                self._buckets.clear()
            b = self._buckets[key] = [self.burst, now, 0]
        b[0] = min(self.burst, b[0] + (now - b[1]) * self.rate)
        b[1] = now
        if b[0] < 1:
            b[2] += 1
            _dropped += 1
            return False
        b[0] -= 1
        if b[2]:
            record.dropped = int(b[2])
            b[2] = 0
        return True


class PeerFaultFilter(logging.Filter):
    """aiohttp's server logs a malformed request (400) and a peer that went away mid-body with an ERROR and a
    traceback; both are the peer's doing and answered already. They become one INFO line each, event
    ``http_bad_request`` (rate-limited like every event), so an ERROR in relay's log always means relay."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        from aiohttp.http_exceptions import HttpProcessingError

        if isinstance(exc, (HttpProcessingError, ConnectionError)):
            peer = record.getMessage().partition(" from ")[2]
            reason = " ".join(x.strip() for x in str(exc).strip().splitlines())[:200]
            record.msg = f"bad HTTP request{' from ' + peer if peer else ''}: {type(exc).__name__}: {reason}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.event = "http_bad_request"
        return True


def setup(cfg: Any, worker: int | None = None) -> None:
    """Configure the root logger from ``cfg`` (log_level, log_format, log_rate, log_burst)."""
    fmt = cfg.log_format
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    secrets = tuple(s for s in (cfg.api_key, cfg.token_hmac_secret) if len(s) >= 4)
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        static: dict[str, Any] = {"node": cfg.node_name} if cfg.node_name else {}
        if worker is not None:
            static["worker"] = worker
        handler.setFormatter(JsonFormatter(static, secrets))
    else:
        handler.setFormatter(TextFormatter(f"w{worker} " if worker is not None else "", secrets))
    handler.addFilter(RateLimitFilter(cfg.log_rate, cfg.log_burst))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(cfg.log_level.upper())
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, PeerFaultFilter) for f in server.filters):
        server.addFilter(PeerFaultFilter())

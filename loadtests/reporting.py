"""What the load test reports, and the summary ``loadtests/run.py`` checks thresholds against.

Every measurement is a Locust request event (``ok`` / ``fail``), so it lands in Locust's statistics,
CSV and HTML reports:

============  ===========================================  =======================================
type          name                                         time
============  ===========================================  =======================================
CONNECT       ``ws`` / ``tcp``                             socket + handshake + connect reply
SUBSCRIBE     channel kind (``orders``, ``sale``, ...)     subscribe command to its reply
PUBLISH       ``chat`` (shopper), ``agent answer``         publish command to its reply (the ack)
DELIVER       channel kind                                 ``ts`` in the publication to its push
RECOVER       channel kind                                 the same, for publications recovered on
                                                           resubscribe (they waited for the client)
CHAT          ``agent`` / ``bot``                          shopper's question to the answer's push
RECONNECT     ``ws`` / ``tcp`` (``... churn``)             disconnect to every channel resubscribed
API           what the backend did (``order status`` ...)  HTTP server API call
DISCONNECT    close code and reason (``3501 bad request``)  failures only: a close the client does
                                                           not come back from, or a dropped socket
============  ===========================================  =======================================

A failure is reported under the relay error or close code as its name (``103 permission denied``,
``3001 shutdown``), or the socket error's type. Lost publications (offset gaps on recoverable channels,
after recovery) are DELIVER failures named ``lost`` and are counted, with other events, in counters that
workers send to the master (``report_to_master`` / ``worker_report``). At the end the master (or the
single process) writes ``--summary-file``: the counters, Locust's statistics per entry and per request
type, and latency percentiles from 1 % wide buckets (Locust rounds times under 100 ms to whole ms).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from locust import events
from locust.runners import WorkerRunner

from loadtests.clients import Disconnected, RelayError
from loadtests.histogram import LogHistogram

__all__ = ["ok", "fail", "count", "lost", "failure_name", "COUNTERS", "LogHistogram", "write_summary"]

COUNTERS: Counter[str] = Counter()
_HIST: dict[str, LogHistogram] = {}


def failure_name(e: BaseException) -> str:
    """The name a failure is reported under: the relay error or close code, or the error's type."""
    if isinstance(e, RelayError):
        return f"{e.code} {e.message}".rstrip()
    if isinstance(e, Disconnected):
        return e.label
    if isinstance(e, TimeoutError):
        return "timeout"
    return type(e).__name__


def ok(request_type: str, name: str, ms: float) -> None:
    events.request.fire(request_type=request_type, name=name, response_time=ms, response_length=0,
                        exception=None, context={})


def fail(request_type: str, error: BaseException | str, ms: float = 0.0, what: str = "") -> None:
    """A failed ``request_type`` named by ``error``; ``what`` (e.g. the channel kind) goes in its message."""
    if isinstance(error, str):
        name, message = error, what or error
    else:
        name, message = failure_name(error), f"{what}: {error}" if what else str(error)
    exc = Exception(message)
    events.request.fire(request_type=request_type, name=name, response_time=ms, response_length=0,
                        exception=exc, context={})


def count(key: str, n: int = 1) -> None:
    COUNTERS[key] += n


def lost(kind: str, n: int, unrecovered: bool = False) -> None:
    """``n`` publications of a ``kind`` channel never reached the client (offset gap after recovery)."""
    if n > 0:
        COUNTERS["lost_messages"] += n
        COUNTERS[f"lost_messages:{kind}"] += n
        fail("DELIVER", "lost", 0.0, f"{kind}: {n} publication(s) never arrived")
    if unrecovered:
        COUNTERS["unrecovered"] += 1
        fail("RECOVER", "unrecovered", 0.0, f"{kind}: position not recovered")


@events.request.add_listener
def _histogram(request_type: str, name: str, response_time: float, exception: Any = None, **_: Any) -> None:
    if exception is None and response_time is not None:
        for key in (request_type, f"{request_type} {name}"):
            h = _HIST.get(key)
            if h is None:
                h = _HIST[key] = LogHistogram()
            h.add(response_time)


@events.report_to_master.add_listener
def _to_master(client_id: str, data: dict) -> None:
    data["relay_loadtest"] = {"counters": dict(COUNTERS), "hist": {k: h.buckets for k, h in _HIST.items()}}
    COUNTERS.clear()
    _HIST.clear()


@events.worker_report.add_listener
def _from_worker(client_id: str, data: dict) -> None:
    part = data.get("relay_loadtest")
    if not part:
        return
    COUNTERS.update(part.get("counters", {}))
    for k, buckets in part.get("hist", {}).items():
        _HIST.setdefault(k, LogHistogram()).merge(buckets)


def _entry(e: Any) -> dict:
    return {"requests": e.num_requests, "failures": e.num_failures,
            "median_ms": e.median_response_time, "avg_ms": round(e.avg_response_time, 3),
            "p95_ms": e.get_response_time_percentile(0.95), "p99_ms": e.get_response_time_percentile(0.99),
            "max_ms": round(e.max_response_time or 0, 3)}


def write_summary(environment: Any, path: str, scenario: str, started: float) -> dict:
    """The summary file ``run.py`` reads: counters, statistics, failures, latency percentiles."""
    stats = environment.stats
    by_type: dict[str, dict] = {}
    for e in stats.entries.values():
        t = by_type.setdefault(e.method, {"requests": 0, "failures": 0})
        t["requests"] += e.num_requests
        t["failures"] += e.num_failures
    summary = {
        "scenario": scenario,
        "started": started,
        "ended": time.time(),
        "counters": dict(sorted(COUNTERS.items())),
        "total": _entry(stats.total),
        "by_type": by_type,
        "entries": {f"{e.method} {e.name}": _entry(e) for e in stats.entries.values()},
        "latency": {k: h.summary() for k, h in sorted(_HIST.items())},
        "failures": [{"type": f.method, "name": f.name, "error": str(f.error), "occurrences": f.occurrences}
                     for f in stats.errors.values()],
    }
    with open(path, "w") as f:
        json.dump(summary, f, indent=1)
    return summary


_STARTED = [time.time()]


@events.test_start.add_listener
def _started(environment: Any, **_: Any) -> None:
    _STARTED[0] = time.time()


@events.quitting.add_listener
def _quitting(environment: Any, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    opts = environment.parsed_options
    path = getattr(opts, "summary_file", "") if opts is not None else ""
    if path:
        write_summary(environment, path, getattr(opts, "scenario_name", ""), _STARTED[0])

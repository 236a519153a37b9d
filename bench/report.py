"""The benchmark report: the newest results of each kind -> docs/benchmarks.md and PNG plots.

Reads the newest ``bench/results/<kind>-<timestamp>.json`` of each kind that has figures (a file
without any, e.g. from a failed smoke test, is passed over), or the files given on the command
line, and writes one Markdown report with

* the machine description and how to reproduce every figure (exact commands);
* the goals of issue 6 checked against the figures: PASS / FAIL / NOT MEASURED;
* the ratios from the same run: relay / peer server CPU per delivery, deliveries/s at
  saturation, p99 at 80 % of relay's saturation;
* one table per scenario with relay and every peer side by side;
* plots (matplotlib, Agg): latency against offered load, CPU per delivery, idle memory.

Kinds: ``fanout``, ``idle``, ``latency``, ``chats``, ``connrate``, ``redis``, ``recovery``, ``lanes``,
``backpressure``, ``pacing``. The result
files are written by different scripts and their shapes evolve, so every kind is read by a
small ``extract_<kind>`` function that looks keys up by a few accepted names; a kind that
is missing or cannot be read becomes "not measured in this run", never a crash.

Run: ``.venv/bin/python bench/report.py`` (``--out``, ``--results-dir``, ``--no-plots``,
or result files as arguments).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import re
import shlex
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report_format import (P99_BOUND_MS, RELAY, fmt_ms, fmt_rate, fmt_us, fmt_x,  # noqa: E402
                           server_order)
from report_plots import PLOT_NAMES, write_plots  # noqa: E402

__all__ = ["KINDS", "Run", "Goal", "find_latest", "load_runs", "extract", "check_goals", "render",
           "write_plots", "PLOT_NAMES", "main"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
DEFAULT_OUT = ROOT / "docs" / "benchmarks.md"

#: every kind of result, in report order, with its script and section title
KINDS = ("fanout", "latency", "latency-quota", "chats", "connrate", "idle", "redis", "recovery", "lanes",
         "backpressure", "pacing")
SCRIPTS = {"fanout": "fanout.py", "idle": "idle.py", "latency": "latency.py", "latency-quota": "latency.py",
           "chats": "chats.py", "connrate": "connrate.py", "redis": "redis_scaling.py", "recovery": "recovery.py",
           "lanes": "lanes.py", "backpressure": "backpressure.py", "pacing": "pacing.py"}
TITLES = {"fanout": "Fan-out", "latency": "Latency against offered load",
          "latency-quota": "Saturation on the same CPU budget (every server capped at a share of one core)",
          "chats": "Many 1:1 chats", "connrate": "Connection rate", "idle": "Idle memory per connection",
          "redis": "relay on Redis", "recovery": "Reconnect storm: coalesced recovery",
          "lanes": "Priority lanes: chats under a bulk flood, 5 % slow clients",
          "backpressure": "Publisher backpressure: a publish flood at several times capacity",
          "pacing": "Paced broadcasts: 1:1 chats during a broadcast to a very large channel"}

NOT_MEASURED = "not measured in this run"

LOAD_FRACTION = 0.8          #: P99_BOUND_MS (report_format.py) holds at this fraction of its saturation rate
CPU_GOALS = (("picows", 0.5), ("websockets", 0.3))  #: relay CPU per delivery <= factor x peer

PASS, FAIL, NOT_MEASURED_V = "PASS", "FAIL", "NOT MEASURED"

_FILE = re.compile(r"^(?P<kind>.+?)-(?P<stamp>\d{8}-\d{6})\.json$")


# ------------------------------------------------------------------------------------------------
# finding and loading result files
# ------------------------------------------------------------------------------------------------

@dataclass
class Run:
    """One results file: its kind, path, parsed JSON (None if unreadable) and why not."""

    kind: str
    path: Path
    data: dict[str, Any] | None
    error: str | None = None

    @property
    def stamp(self) -> str:
        m = _FILE.match(self.path.name)
        return m.group("stamp") if m else ""

    @property
    def when(self) -> str:
        try:
            return _dt.datetime.strptime(self.stamp, "%Y%m%d-%H%M%S").strftime("%Y-%m-%d %H:%M:%S")
        except ValueError:
            return "?"

    @property
    def args(self) -> dict[str, Any]:
        a = (self.data or {}).get("args")
        return a if isinstance(a, dict) else {}

    @property
    def quick(self) -> bool:
        return bool(self.args.get("quick"))


def kind_of(path: Path) -> str | None:
    """``fanout`` for ``fanout-20261126-050701.json``; None for other names."""
    m = _FILE.match(path.name)
    return m.group("kind") if m else None


def find_candidates(results_dir: Path = RESULTS_DIR) -> dict[str, list[Path]]:
    """Every result file in ``results_dir`` by kind, newest first (by the timestamp in its name)."""
    found: dict[str, list[tuple[str, float, Path]]] = {}
    if not results_dir.is_dir():
        return {}
    for p in results_dir.glob("*.json"):
        m = _FILE.match(p.name)
        if m:
            found.setdefault(m.group("kind"), []).append((m.group("stamp"), p.stat().st_mtime, p))
    return {k: [x[2] for x in sorted(v, key=lambda x: x[:2], reverse=True)] for k, v in found.items()}


def find_latest(results_dir: Path = RESULTS_DIR) -> dict[str, Path]:
    """The newest result file of each kind in ``results_dir``."""
    return {k: v[0] for k, v in find_candidates(results_dir).items()}


def newest_usable(results_dir: Path = RESULTS_DIR) -> dict[str, Run]:
    """Per kind, the newest file this report can read figures from (else the newest, to say why not).

    Test runs of the benchmark scripts (a server that does not exist, an interrupted run, the test
    suite's ``--quick`` smoke runs) also write result files; they must not hide the last real run of
    their kind: a ``--quick`` run is used only when the kind has no usable full run.
    """
    runs: dict[str, Run] = {}
    for kind, paths in find_candidates(results_dir).items():
        first: Run | None = None
        loaded = [next(iter(load_runs([p]).values())) for p in paths]
        full = [r for r in loaded if not _quick(r)]
        for run in full + [r for r in loaded if _quick(r)]:
            first = first or run
            try:
                if kind in EXTRACT and run.data is not None and EXTRACT[kind](run.data) is not None:
                    runs[kind] = run
                    break
            except Exception:  # an odd file is passed over here, and explained if nothing else is usable
                continue
        else:
            if first is not None:
                runs[kind] = first
    return runs


def _quick(run: Run) -> bool:
    args = run.data.get("args") if isinstance(run.data, dict) else None
    return isinstance(args, dict) and args.get("quick") is True


def load_runs(paths: Iterable[Path]) -> dict[str, Run]:
    """Parse each file; the kind comes from a ``kind`` key or the file name. Later files win."""
    runs: dict[str, Run] = {}
    for p in paths:
        p = Path(p)
        try:
            data = json.loads(p.read_text())
            if not isinstance(data, dict):
                raise ValueError("top level is not an object")
        except (OSError, ValueError) as e:
            kind = kind_of(p) or p.stem
            runs[kind] = Run(kind, p, None, f"unreadable: {e}")
            continue
        kind = data.get("kind") if isinstance(data.get("kind"), str) else (kind_of(p) or p.stem)
        runs[kind] = Run(kind, p, data)
    return runs


# ------------------------------------------------------------------------------------------------
# small readers: every key is looked up by a few accepted names
# ------------------------------------------------------------------------------------------------

def pick(d: Any, *names: str, default: Any = None) -> Any:
    """The first of ``names`` (dotted paths into nested dicts) that is present and not None."""
    for name in names:
        cur = d
        for part in name.split("."):
            if isinstance(cur, dict) and part in cur:
                cur = cur[part]
            else:
                cur = None
                break
        if cur is not None:
            return cur
    return default


def num(v: Any) -> float | None:
    """``v`` as a finite float, else None (bools, strings and NaN are not numbers here)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def pnum(d: Any, *names: str) -> float | None:
    return num(pick(d, *names))


def result_rows(data: dict[str, Any], *names: str) -> list[dict[str, Any]]:
    """The list of per-step dicts of a results file (``results`` by default)."""
    rows = pick(data, *(names or ("results",)))
    if isinstance(rows, dict):  # {server: [rows]} is accepted too
        flat = []
        for server, srows in rows.items():
            for r in srows if isinstance(srows, list) else []:
                if isinstance(r, dict):
                    flat.append({"server": server, **r})
        return flat
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


LAT_P50 = ("latency_ms.p50", "p50_ms", "p50")
LAT_P99 = ("latency_ms.p99", "p99_ms", "p99")
LAT_P999 = ("latency_ms.p99_9", "latency_ms.p999", "latency_ms.p99.9", "p99_9_ms", "p999_ms", "p99_9", "p999")
LAT_MAX = ("latency_ms.max", "max_ms")
CPU_US = ("server_cpu_us_per_delivery", "cpu_us_per_delivery", "relay_cpu_us_per_delivery")
CPU_SI_US = ("server_cpu_incl_softirq_us_per_delivery", "cpu_incl_softirq_us_per_delivery")


def _latency_p999(r: dict[str, Any]) -> float | None:
    lat = r.get("latency_ms")
    if isinstance(lat, dict) and num(lat.get("p99.9")) is not None:  # a key with a dot in it
        return num(lat["p99.9"])
    return pnum(r, *LAT_P999)


def flags(r: dict[str, Any]) -> list[str]:
    """Short marks qualifying a step: SAT, GEN, LOSS, DISC, NOISY, DIED, ERR."""
    out = []
    if r.get("saturated") or r.get("at_saturation"):
        out.append("SAT")
    if r.get("generator_limited"):
        out.append("GEN")
    drain = r.get("drain") if isinstance(r.get("drain"), dict) else {}
    loss = num(r.get("loss"))
    if loss is not None and loss > 0 and not drain.get("timed_out") and not r.get("saturated"):
        out.append("LOSS")
    if num(r.get("lost_connections")):
        out.append("DISC")
    if r.get("noisy"):
        out.append("NOISY")
    if r.get("server_alive") is False:
        out.append("DIED")
    if num(r.get("publish_errors")) or num(r.get("errors")):
        out.append("ERR")
    for m in r.get("marks") or []:  # marks the benchmark printed itself: keep the ones not covered above
        m = str(m)
        short = _MARKS.get(re.split(r"[=( ]", m, maxsplit=1)[0], m)
        if short not in out and not short.startswith("NOISY"):
            out.append(short)
    return out


_MARKS = {"GENERATOR-LIMITED": "GEN", "SATURATED": "SAT", "LOSS": "LOSS", "DISCONNECTS": "DISC",
          "PUBLISH-ERRORS": "ERR", "SERVER-DIED": "DIED", "NOISY": "NOISY"}


@dataclass
class Step:
    """One server at one step of one scenario, normalised across kinds."""

    server: str
    group: str                 #: the table a step belongs to (a case), "" for one table
    label: str                 #: the step's row label
    order: float               #: sort key within the group (offered rate)
    rate: float | None = None  #: offered rate in the kind's unit
    deliveries_per_s: float | None = None
    p50: float | None = None
    p99: float | None = None
    p999: float | None = None
    max_ms: float | None = None
    cpu_us: float | None = None
    cpu_si_us: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    skipped: str | None = None


def _step(r: dict[str, Any], group: str, label: str, rate: float | None, **extra: Any) -> Step:
    return Step(server=str(pick(r, "server", "peer", "name", default="?")), group=group, label=label,
                order=rate if rate is not None else math.inf, rate=rate,
                deliveries_per_s=pnum(r, "deliveries_per_s", "delivered_per_s"),
                p50=pnum(r, *LAT_P50), p99=pnum(r, *LAT_P99), p999=_latency_p999(r), max_ms=pnum(r, *LAT_MAX),
                cpu_us=pnum(r, *CPU_US), cpu_si_us=pnum(r, *CPU_SI_US), extra=extra, flags=flags(r),
                skipped=(str(r["skipped"]) if r.get("skipped") else None))


# ------------------------------------------------------------------------------------------------
# per-kind extraction: results JSON -> normalised figures (adjust here when a shape changes)
# ------------------------------------------------------------------------------------------------

def extract_fanout(data: dict[str, Any]) -> dict[str, Any] | None:
    """Steps of ``fanout.py``: one group per case, one row per msgs/s x batch."""
    cases = data.get("cases") if isinstance(data.get("cases"), dict) else {}
    steps = []
    for r in result_rows(data):
        case = str(pick(r, "case", default=""))
        rate = pnum(r, "msgs_per_s", "offered_per_s", "rate")
        batch = pnum(r, "batch") or 1
        label = f"{fmt_rate(rate)} msg/s, {batch:g}/frame"
        s = _step(r, case, label, rate, batch=batch, subscribers=pnum(r, "subscribers"), loss=pnum(r, "loss"))
        s.order = (rate or 0) * 1000 + batch
        steps.append(s)
    if not _usable(steps):
        return None
    titles = {k: str(pick(v, "title", default="")) for k, v in cases.items() if isinstance(v, dict)}
    return {"steps": steps, "titles": titles}


def _saturation_summary(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A per-server summary the latency script may write itself ({server: {...}} or a list)."""
    raw = pick(data, "saturation", "summary.servers", "summary", "servers_summary", "per_server")
    out: dict[str, dict[str, Any]] = {}
    if isinstance(raw, dict):
        for k, v in raw.items():
            if isinstance(v, dict):
                out[str(k)] = v
    elif isinstance(raw, list):
        for v in raw:
            if isinstance(v, dict) and pick(v, "server", "peer"):
                out[str(pick(v, "server", "peer"))] = v
    return out


def saturation_of(steps: list[Step], given: dict[str, Any] | None = None) -> dict[str, Any]:
    """One server's saturation: deliveries/s, whether it was reached, p99 at 80 % and which step.

    Taken from the script's own summary when it has one; otherwise the highest deliveries/s
    the server reached (``reached``: some step was marked saturated; if none was, the figure
    is a lower bound), and the p99 of the heaviest unsaturated step at or below 80 % of it.
    """
    given = given or {}
    ran = sorted((s for s in steps if not s.skipped and s.deliveries_per_s), key=lambda s: s.order)
    top = max(ran, key=lambda s: (s.deliveries_per_s or 0, "SAT" in s.flags), default=None)
    sat = pnum(given, "saturation_deliveries_per_s", "deliveries_per_s_at_saturation", "saturation_rate",
               "saturation_per_s", "saturation")
    reached_given = pick(given, "saturation_reached", "reached", "saturated")
    out: dict[str, Any] = {
        "deliveries_per_s": sat if sat is not None else (top.deliveries_per_s if top else None),
        # a figure from the script's summary is its saturation unless it says otherwise
        "reached": (bool(reached_given) if reached_given is not None else True) if sat is not None
        else any("SAT" in s.flags for s in ran),
        "step": None if sat is not None or top is None else top.label,
        "from_summary": sat is not None,
        "generator_limited": bool(pick(given, "saturation_generator_limited"))
        or pick(given, "ramp_end") == "generator-limited" or bool(top and "GEN" in top.flags and sat is None),
        "ramp_end": pick(given, "ramp_end"),
        "reasons": pick(given, "saturation_reasons", default=[]),
    }
    at80 = given.get("at_80pct") if isinstance(given.get("at_80pct"), dict) else {}
    p99_80 = pnum(at80, "p99_ms", "p99") if at80 else pnum(given, "p99_at_80pct_ms", "p99_at_80_ms", "p99_80_ms")
    if p99_80 is not None:
        out["p99_at_80"] = p99_80
        out["at_80_rate"] = pnum(at80, "offered_deliveries_per_s", "deliveries_per_s") if at80 else None
        if at80:
            out["p99_at_80_step"] = (
                f"{fmt_rate(pnum(at80, 'deliveries_per_s'))} deliv/s ({fmt_rate(pnum(at80, 'msgs_per_s'))} msg/s), "
                "a fresh server" + (" (that step was itself saturated)" if at80.get("at_saturation") else "")
                + (" GENERATOR-LIMITED" if at80.get("generator_limited") else ""))
        else:
            out["p99_at_80_step"] = str(pick(given, "p99_at_80pct_step", default="as computed by the benchmark"))
    elif out["deliveries_per_s"]:
        near = step_at(ran, LOAD_FRACTION * out["deliveries_per_s"])
        out["p99_at_80"] = near.p99 if near else None
        out["p99_at_80_step"] = near.label if near else None
    return out


def step_at(steps: list[Step], target: float) -> Step | None:
    """The heaviest unsaturated step whose deliveries/s are at or below ``target`` (+2 %)."""
    ok = [s for s in steps if s.deliveries_per_s is not None and s.deliveries_per_s <= target * 1.02
          and "SAT" not in s.flags and not s.skipped]
    return max(ok, key=lambda s: s.deliveries_per_s or 0, default=None)


def extract_latency(data: dict[str, Any]) -> dict[str, Any] | None:
    """Ramp steps of ``latency.py`` (offered deliveries/s per server) and each server's saturation.

    The extra step each server runs at 80 % of its own saturation (``phase`` ``at_80pct``) is not a
    ramp step: it is read from the summary (``at_80pct``), not put in the table.
    """
    steps = []
    for r in result_rows(data, "results", "steps"):
        if pick(r, "phase", default="ramp") != "ramp":
            continue
        rate = pnum(r, "offered_deliveries_per_s", "offered_per_s", "offered_rate", "offered", "msgs_per_s", "rate")
        unit = "deliv/s" if pick(r, "offered_deliveries_per_s") is not None else "/s"
        steps.append(_step(r, "", f"{fmt_rate(rate)} {unit} offered", rate, msgs_per_s=pnum(r, "msgs_per_s"),
                           reasons=pick(r, "saturation_reasons", default=[])))
    if not _usable(steps):
        return None
    given = _saturation_summary(data)
    servers = server_order(s.server for s in steps)
    sat = {srv: saturation_of([s for s in steps if s.server == srv], given.get(srv)) for srv in servers}
    skipped = data.get("skipped_servers") if isinstance(data.get("skipped_servers"), dict) else {}
    versions = data.get("server_versions") if isinstance(data.get("server_versions"), dict) else {}
    return {"steps": steps, "saturation": sat, "skipped": {str(k): str(v) for k, v in skipped.items()},
            "versions": {str(k): str(v) for k, v in versions.items()}, "cpu_quota": num(pick(data, "args.cpu_quota"))}


def _usable(steps: list[Step]) -> bool:
    """Some step names its server and has a figure (a list of odd dicts is not a result)."""
    return any(s.server != "?" and (s.deliveries_per_s is not None or s.extra.get("achieved") is not None)
               for s in steps)


def extract_chats(data: dict[str, Any]) -> dict[str, Any] | None:
    """Steps of ``chats.py``: many 1:1 channels, publications/s offered."""
    steps = []
    for r in result_rows(data, "results", "steps"):
        rate = pnum(r, "offered_msgs_per_s", "offered_per_s", "msgs_per_s", "publications_per_s", "rate")
        channels = pnum(r, "chats", "channels")
        steps.append(_step(r, str(pick(r, "case", default="")), f"{fmt_rate(rate)} msg/s", rate,
                           channels=channels, loss=pnum(r, "loss")))
    return {"steps": steps} if _usable(steps) else None


def extract_connrate(data: dict[str, Any]) -> dict[str, Any] | None:
    """Steps of ``connrate.py``: connections/s offered and accepted, connect time p50/p99, CPU per connection."""
    steps = []
    for r in result_rows(data, "results", "steps"):
        rate = pnum(r, "offered_per_s", "connections_per_s_offered", "offered_connections_per_s", "offered", "rate")
        s = _step(r, str(pick(r, "case", default="")), f"{fmt_rate(rate)} conn/s", rate)
        s.p50 = pnum(r, "connect_ms.p50", *LAT_P50)
        s.p99 = pnum(r, "connect_ms.p99", *LAT_P99)
        s.p999 = pnum(r, "connect_ms.p99_9", *LAT_P999)
        s.extra["achieved"] = pnum(r, "accepted_per_s", "achieved_per_s", "connected_per_s", "connections_per_s")
        s.extra["cpu_per_conn"] = pnum(r, "server_cpu_us_per_connection", "cpu_us_per_connection")
        s.extra["failed"] = pnum(r, "failed_in_window", "failed", "failures_total", "connect_errors")
        s.extra["rss_kib"] = pnum(r, "server_rss_per_open_connection_kib")
        s.flags = [f for f in s.flags if f != "ERR" and not f.startswith("FAILURES")]  # failures have a column
        steps.append(s)
    return {"steps": steps} if _usable(steps) else None


def extract_idle(data: dict[str, Any]) -> dict[str, Any] | None:
    """Per server: RSS per idle connection at N connections."""
    rows = []
    for r in result_rows(data):
        per = pnum(r, "rss_per_connection_bytes", "bytes_per_connection")
        rows.append({"server": str(pick(r, "server", "peer", default="?")), "per_conn_bytes": per,
                     "connections": pnum(r, "connections"), "requested": pnum(r, "requested"),
                     "channel": pick(r, "channel"), "flags": (["DISC"] if num(r.get("lost_connections")) else [])
                     + (["DIED"] if r.get("server_alive") is False else [])})
    return {"rows": rows} if any(r["server"] == RELAY and r["per_conn_bytes"] for r in rows) else None


def extract_redis(data: dict[str, Any]) -> dict[str, Any] | None:
    """Steps of ``redis_scaling.py``: one group per case, deployments side by side."""
    steps = []
    for r in result_rows(data):
        rate = pnum(r, "msgs_per_s", "publications_per_s")
        s = _step(r, str(pick(r, "case", default="")), f"{fmt_rate(rate)} pub/s", rate,
                  redis_us_per_pub=pnum(r, "redis_cpu_us_per_publication"), workers=pnum(r, "workers"))
        s.cpu_us = pnum(r, "relay_cpu_us_per_delivery", *CPU_US)
        steps.append(s)
    return {"steps": steps} if steps and any(s.deliveries_per_s for s in steps) else None


def extract_recovery(data: dict[str, Any]) -> dict[str, Any] | None:
    """Modes of ``recovery.py`` (coalesced, baseline): history reads per recovering client, time to recover all."""
    rows = []
    for r in result_rows(data):
        per = pnum(r, "history_reads_per_client", "reads_per_client")
        if per is None:
            continue
        reads = r.get("history_reads") if isinstance(r.get("history_reads"), dict) else {}
        rows.append({"mode": str(pick(r, "mode", default="?")), "coalesce": r.get("recovery_coalesce"),
                     "clients": pnum(r, "clients"), "channels": pnum(r, "channels"), "reads_per_client": per,
                     "reads": sum(v for k, v in reads.items() if k in ("recover", "position") and num(v) is not None),
                     "all_s": pnum(r, "all_recovered_s"), "p50": pnum(r, "recovery_ms.p50"),
                     "p99": pnum(r, "recovery_ms.p99"), "cpu_us": pnum(r, "server_cpu_us_per_recovery"),
                     "ok": pnum(r, "recovered_ok"),
                     "bad": sum(pnum(r, k) or 0 for k in ("not_recovered", "wrong", "failed"))})
    if not any(x["coalesce"] is True for x in rows):
        return None
    return {"rows": rows, "goal": pnum(data, "summary.goal_reads_per_client") or 0.01}


def extract_lanes(data: dict[str, Any]) -> dict[str, Any] | None:
    """The two modes of ``lanes.py`` (lanes on, lanes off) and its own comparison."""
    modes = []
    for r in result_rows(data):
        fast, slow = r.get("fast"), r.get("slow")
        if not isinstance(fast, dict) or not isinstance(slow, dict) or not isinstance(r.get("lanes"), bool):
            continue
        modes.append(r)
    if not any(m["lanes"] for m in modes):
        return None
    return {"modes": sorted(modes, key=lambda m: not m["lanes"]),
            "summary": data.get("summary") if isinstance(data.get("summary"), dict) else {}}


def extract_backpressure(data: dict[str, Any]) -> dict[str, Any] | None:
    """Runs of ``backpressure.py``: per flood case, backpressure on and off (the baseline)."""
    rows = [r for r in result_rows(data) if r.get("mode") in ("on", "off") and num(r.get("rss_peak_bytes"))]
    if not any(r["mode"] == "on" for r in rows):
        return None
    return {"rows": rows, "capacity": pick(data, "summary.capacity_per_s"),
            "ceiling": pick(data, "summary.ceiling_bytes"), "queue_limit": pick(data, "summary.queue_limit_bytes")}


def extract_pacing(data: dict[str, Any]) -> dict[str, Any] | None:
    """The two runs of ``pacing.py`` (unpaced, paced): chat latency per window, arrival spread and histogram."""
    runs = {r.get("mode"): r for r in result_rows(data) if isinstance(r.get("chat_ms"), dict)
            and isinstance(r.get("bins"), list)}
    if "paced" not in runs or "unpaced" not in runs:
        return None
    return {"runs": [runs["unpaced"], runs["paced"]],
            "summary": data.get("summary") if isinstance(data.get("summary"), dict) else {},
            "capped": data.get("subscribers_capped_by"),
            # results before relay workers were added ran one process on the memory broker
            "workers": int(num(data.get("relay_workers")) or 1), "broker": data.get("broker") or "memory"}


EXTRACT: dict[str, Callable[[dict[str, Any]], dict[str, Any] | None]] = {
    "fanout": extract_fanout, "latency": extract_latency, "latency-quota": extract_latency, "chats": extract_chats,
    "connrate": extract_connrate, "idle": extract_idle, "redis": extract_redis, "recovery": extract_recovery,
    "lanes": extract_lanes, "backpressure": extract_backpressure, "pacing": extract_pacing,
}


def extract(runs: dict[str, Run]) -> tuple[dict[str, dict[str, Any] | None], dict[str, str]]:
    """Figures per kind and, for kinds without figures, why (missing file, unreadable, odd shape)."""
    figures: dict[str, dict[str, Any] | None] = {}
    why: dict[str, str] = {}
    for kind in KINDS:
        run = runs.get(kind)
        figures[kind] = None
        if run is None:
            why[kind] = f"no `{kind}-*.json` result file"
        elif run.data is None:
            why[kind] = f"`{run.path.name}` {run.error}"
        else:
            try:
                figures[kind] = EXTRACT[kind](run.data)
            except Exception as e:  # an unexpected shape must not stop the report
                why[kind] = f"`{run.path.name}` has an unexpected shape ({type(e).__name__}: {e})"
                continue
            if figures[kind] is None:
                why[kind] = f"`{run.path.name}` has no figures this report can read"
    return figures, why


# ------------------------------------------------------------------------------------------------
# ratios and goals
# ------------------------------------------------------------------------------------------------

@dataclass
class Ratio:
    group: str
    label: str
    peer: str
    relay: float
    other: float
    flags: tuple[str, ...] = ()  #: marks of either server at that step

    @property
    def value(self) -> float:
        return self.relay / self.other


def cpu_ratios(steps: list[Step], peer: str, cpu: str = "cpu_us") -> list[Ratio]:
    """relay / ``peer`` CPU per delivery at every step (same group and label) both ran."""
    by = {(s.group, s.label, s.server): s for s in steps if not s.skipped}
    out = []
    for (group, label, server), s in by.items():
        p = by.get((group, label, peer))
        a, b = getattr(s, cpu), getattr(p, cpu) if p else None
        if server == RELAY and a and b:
            out.append(Ratio(group, label, peer, a, b, tuple(dict.fromkeys(s.flags + p.flags))))
    return out


@dataclass
class Goal:
    name: str
    verdict: str
    detail: str


def _where(r: Ratio, figures: dict[str, Any] | None = None) -> str:
    title = ((figures or {}).get("titles") or {}).get(r.group, "")
    case = f"case {r.group}" + (f" ({title})" if title else "") if r.group else ""
    return ", ".join(x for x in (case, r.label) if x)


def goal_cpu(fanout: dict[str, Any] | None, peer: str, factor: float) -> Goal:
    """relay's CPU per delivery <= ``factor`` x ``peer``'s at every fan-out step both ran."""
    name = f"relay's server CPU per delivery ≤ {factor:g}× the naive {peer} relay"
    if not fanout:
        return Goal(name, NOT_MEASURED_V, "no fan-out results")
    ratios = cpu_ratios(fanout["steps"], peer)
    if not ratios:
        return Goal(name, NOT_MEASURED_V, f"no fan-out step ran both relay and {peer}")
    ok = [r for r in ratios if r.value <= factor]
    worst = max(ratios, key=lambda r: r.value)
    best = min(ratios, key=lambda r: r.value)
    verdict = PASS if len(ok) == len(ratios) else FAIL
    cases = ", ".join(dict.fromkeys(r.group for r in ratios))
    detail = (f"fan-out (case{'s' if ',' in cases else ''} {cases}), utime+stime per delivery; holds at "
              f"{len(ok)} of {len(ratios)} step{'s' if len(ratios) > 1 else ''} both ran. ")
    if len(ratios) == 1:
        detail += f"{_where(worst, fanout)}: {worst.value:.2f}× ({worst.relay:.2f} vs {worst.other:.2f} µs)."
    else:
        detail += (f"Worst: {_where(worst, fanout)}: {worst.value:.2f}× ({worst.relay:.2f} vs {worst.other:.2f} µs)."
                   f" Best: {_where(best, fanout)}: {best.value:.2f}× ({best.relay:.2f} vs {best.other:.2f} µs).")
    marked = [r for r in ratios if set(r.flags) & {"SAT", "GEN", "NOISY", "LOSS", "DIED"}]
    if marked:
        which = f"{len(marked)} of these steps carry" if len(ratios) > 1 else "The step carries"
        detail += f" {which} marks ({', '.join(sorted({f for r in marked for f in r.flags}))}): see the fan-out table."
    if ok and verdict == FAIL:
        groups = sorted({r.group for r in ok})
        detail += (f" Passes at: {'; '.join(_where(r, fanout) for r in ok)}." if len(ok) <= 4
                   else f" Passes in case(s) {', '.join(groups)}.")
    return Goal(name, verdict, detail)


def goal_saturation(latency: dict[str, Any] | None, peer: str = "nats") -> Goal:
    """relay's deliveries/s at saturation > ``peer``'s, same cores (latency benchmark)."""
    name = f"relay's deliveries/s at saturation above {peer}-server's WebSocket listener, same cores"
    if not latency:
        return Goal(name, NOT_MEASURED_V, "no latency-against-offered-load results")
    sat = latency["saturation"]
    if peer not in sat or not sat[peer]["deliveries_per_s"] or not sat.get(RELAY, {}).get("deliveries_per_s"):
        why = "; ".join(f"{k} skipped: {v}" for k, v in latency.get("skipped", {}).items() if k in (RELAY, peer))
        return Goal(name, NOT_MEASURED_V, f"the latency run has no saturation figure for relay and {peer}"
                    + (f" ({why})" if why else ""))
    r, p = sat[RELAY], sat[peer]
    rv, pv = r["deliveries_per_s"], p["deliveries_per_s"]

    def how(x: dict[str, Any]) -> str:
        if x["reached"]:
            return ""
        return f" (not saturated{': ' + x['ramp_end'] if x.get('ramp_end') else ''}; a lower bound)"

    budget = (f", every server capped at {latency['cpu_quota']:g} of one core" if latency.get("cpu_quota")
              else "")
    desc = (f"relay {fmt_rate(rv)}/s{how(r)} vs {peer} {fmt_rate(pv)}/s{how(p)} ({rv / pv:.2f}×; latency "
            f"benchmark{budget}: the highest deliveries/s each reached up to its saturated step, 1 message per "
            "frame)")
    gen = [n for n, x in ((RELAY, r), (peer, p)) if x.get("generator_limited")]
    if gen:
        desc += f"; GENERATOR-LIMITED at the top step of {' and '.join(gen)}"
    if rv > pv:  # relay did at least rv; the peer's figure is its ceiling only if it saturated
        if p["reached"]:
            return Goal(name, PASS, desc)
        return Goal(name, NOT_MEASURED_V, desc + f"; {peer} did not saturate, so its ceiling is unknown")
    if r["reached"]:  # relay's ceiling is at or below what the peer did
        return Goal(name, FAIL, desc)
    return Goal(name, NOT_MEASURED_V, desc + "; relay did not saturate, so its ceiling is unknown")


def goal_p99(latency: dict[str, Any] | None) -> Goal:
    """relay's p99 at 80 % of its own saturation < 50 ms."""
    name = f"relay's p99 at {LOAD_FRACTION:.0%} of its own saturation < {P99_BOUND_MS:g} ms"
    if not latency or RELAY not in latency["saturation"]:
        return Goal(name, NOT_MEASURED_V, "no latency-against-offered-load results")
    s = latency["saturation"][RELAY]
    if s.get("p99_at_80") is None:
        return Goal(name, NOT_MEASURED_V, "no relay step at or below 80 % of its saturation rate")
    detail = (f"p99 {fmt_ms(s['p99_at_80'])} ms at step {s['p99_at_80_step']}; saturation "
              f"{fmt_rate(s['deliveries_per_s'])} deliveries/s (latency benchmark)")
    if not s["reached"]:
        return Goal(name, NOT_MEASURED_V, detail.replace("; saturation", "; relay did not saturate"
                                                         f" ({s.get('ramp_end') or 'no step saturated'}), so that "
                                                         "step is 80 % of the highest rate run, not of its saturation,"
                                                         " which is at least"))
    return Goal(name, PASS if s["p99_at_80"] < P99_BOUND_MS else FAIL, detail)


def check_goals(figures: dict[str, dict[str, Any] | None]) -> list[Goal]:
    """The goals of issue 6, each PASS / FAIL / NOT MEASURED with the figures it rests on."""
    return ([goal_cpu(figures.get("fanout"), peer, f) for peer, f in CPU_GOALS]
            + [goal_saturation(figures.get("latency-quota") or figures.get("latency")),
               goal_p99(figures.get("latency"))])


# ------------------------------------------------------------------------------------------------
# Markdown
# ------------------------------------------------------------------------------------------------

def table(header: list[str], rows: list[list[str]]) -> list[str]:
    def esc(c: str) -> str:
        return str(c).replace("|", "\\|").replace("\n", " ")

    return (["| " + " | ".join(map(esc, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
            + ["| " + " | ".join(map(esc, r)) + " |" for r in rows])


def _marks(s: Step) -> str:
    return (" " + " ".join(s.flags)) if s.flags else ""


def side_by_side(steps: list[Step], cell: Callable[[Step], str], first: str = "step") -> dict[str, list[str]]:
    """One table per group: a row per step label, a column per server."""
    out: dict[str, list[str]] = {}
    for group in dict.fromkeys(s.group for s in steps):
        gsteps = [s for s in steps if s.group == group]
        servers = server_order(s.server for s in gsteps)
        labels = sorted(dict.fromkeys(s.label for s in gsteps),
                        key=lambda lab: min(s.order for s in gsteps if s.label == lab))
        by = {(s.label, s.server): s for s in gsteps}
        rows = []
        for lab in labels:
            row = [lab]
            for srv in servers:
                s = by.get((lab, srv))
                row.append("–" if s is None else f"skipped ({s.skipped})" if s.skipped else cell(s))
            rows.append(row)
        out[group] = table([first] + servers, rows)
    return out


def _cell_delivery(s: Step) -> str:
    return (f"{fmt_rate(s.deliveries_per_s)}/s · p99 {fmt_ms(s.p99)} ms · {fmt_us(s.cpu_us)} µs"
            + (f" ({fmt_us(s.cpu_si_us)} +softirq)" if s.cpu_si_us and s.cpu_us and s.cpu_si_us > s.cpu_us * 1.005
               else "") + _marks(s))


FLAG_LEGEND = ("Marks: SAT saturated (latency grew through the window or a backlog outlived the drain), "
               "GEN generator-limited (the load generator's core was ≥ 90 % busy: deliveries/s and latency are "
               "the generator's, CPU per delivery still holds), LOSS deliveries stopped short, DISC the server "
               "closed connections, NOISY other tenants used > 5 % of a benchmark core, DIED the server exited, "
               "ERR publish or connect errors; other marks as the benchmark printed them; – not run.")


def _notes(run: Run) -> str:
    a = run.args
    bits = [f"`{run.path.name}` ({run.when})"]
    if run.quick:
        bits.append("**--quick run: small and short, for smoke testing, not for quoting**")
    if a.get("duration") is not None:
        bits.append(f"{a['duration']:g} s windows" if isinstance(a["duration"], int | float) else "")
    return "Source: " + ", ".join(b for b in bits if b) + "."


def _value(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower() if isinstance(v, bool) else "–"
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, list | tuple):
        return ", ".join(_value(x) for x in v) or "–"
    return str(v)


def _summary_items(label: str, v: Any, depth: int = 0) -> list[str]:
    if isinstance(v, dict):
        if all(not isinstance(x, dict | list) or _scalars(x) for x in v.values()) and depth:
            return [f"{label}: " + "; ".join(f"{_label(k)} {_value(x)}" for k, x in v.items())]
        return [line for k, x in v.items()
                for line in _summary_items(f"{label} › {k}" if label else _label(k), x, depth + 1)]
    if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
        return [line for x in v for line in _summary_items(label, x, depth + 1)]
    return [f"{label}: {_value(v)}"]


def _label(key: str) -> str:
    return key.replace("p99_9", "p99.9").replace("_", " ")


def _scalars(v: Any) -> bool:
    return isinstance(v, list) and all(not isinstance(x, dict | list) for x in v)


def summary_lines(data: dict[str, Any]) -> list[str]:
    """The benchmark's own ``summary`` (figures, per-server dicts, lists of ratios), as a bullet list."""
    s = data.get("summary")
    if not isinstance(s, dict) or not s:
        return []
    items = [i for i in _summary_items("", s) if not i.endswith(": –") or "saturat" in i]
    return ["The benchmark's own summary:", ""] + [f"* {i}" for i in items] + [""]


def section_fanout(run: Run, f: dict[str, Any]) -> list[str]:
    out = [_notes(run), "",
           "Each cell: deliveries/s received · p99 latency · server CPU (utime+stime) per delivery; the "
           "figure with the server core's softirq time follows when it differs.", ""]
    subs = {}
    for s in f["steps"]:
        if s.extra.get("subscribers"):
            subs.setdefault(s.group, s.extra["subscribers"])
    for group, lines in side_by_side(f["steps"], _cell_delivery).items():
        title = f["titles"].get(group, "")
        n = f", {subs[group]:,.0f} subscribers" if group in subs else ""
        out += [f"**Case {group}**{': ' + title if title else ''}{n}", ""] + lines + [""]
    return out


def section_latency(run: Run, f: dict[str, Any]) -> list[str]:
    data = run.data or {}
    subs = pick(data, "args.subscribers")
    out = [_notes(run), ""]
    if f.get("cpu_quota"):
        out += [f"Every server runs in a cgroup capped at **{f['cpu_quota']:g} of one core** (CFS quota, 5 ms "
                "period), so that the load generator's one core can saturate it: deliveries/s at saturation then "
                "compare the servers on the same CPU budget. Throttling and the queues of a CPU-bound server add "
                "latency, so the p99 figures of this run are not the latency at load: that is the previous "
                "section's.", ""]
    if subs:
        out += [f"{subs:,} subscribers on one channel, one message per publisher frame, the offered rate rising "
                "step by step on the same connections until the server saturates.", ""]
    defs = pick(data, "definitions.saturated_step")
    if defs:
        out += [f"A step is saturated at: {defs}.", ""]
    if f.get("versions"):
        out += ["Servers: " + ", ".join(f"{k} ({v})" for k, v in f["versions"].items()) + ".", ""]
    if f.get("skipped"):
        out += ["Not run: " + "; ".join(f"{k}: {v}" for k, v in f["skipped"].items()) + ".", ""]
    out += ["Each cell: deliveries/s · p50 / p99 / p99.9 latency (ms) · server CPU per delivery.", ""]

    def cell(s: Step) -> str:
        return (f"{fmt_rate(s.deliveries_per_s)}/s · {fmt_ms(s.p50)} / {fmt_ms(s.p99)} / {fmt_ms(s.p999)} ms"
                f" · {fmt_us(s.cpu_us)} µs" + _marks(s))

    for group, lines in side_by_side(f["steps"], cell, "offered").items():
        out += ([f"**{group}**", ""] if group else []) + lines + [""]
    rows = []
    for srv, s in f["saturation"].items():
        if s["reached"]:
            how = "; ".join(map(str, s.get("reasons") or [])) or (f"at {s['step']}" if s.get("step") else "saturated")
        else:
            how = f"not reached ({s.get('ramp_end') or 'no step saturated'}): a lower bound"
        if s.get("generator_limited"):
            how += " GENERATOR-LIMITED"
        rows.append([srv, fmt_rate(s["deliveries_per_s"]), how, fmt_ms(s.get("p99_at_80")),
                     s.get("p99_at_80_step") or "–"])
    out += ["Saturation per server (the highest deliveries/s reached up to and including the saturated step) and "
            "the p99 at 80 % of it:", ""]
    out += table(["server", "deliveries/s at saturation", "saturated by", "p99 at 80 % (ms)", "the 80 % step"], rows)
    return out


def section_chats(run: Run, f: dict[str, Any]) -> list[str]:
    out = [_notes(run), "",
           "Each cell: deliveries/s (to the chat's other member) · p50 / p99 / p99.9 latency (ms) · server CPU "
           "per delivery.", ""]

    def cell(s: Step) -> str:
        return (f"{fmt_rate(s.deliveries_per_s)}/s · {fmt_ms(s.p50)} / {fmt_ms(s.p99)} / {fmt_ms(s.p999)} ms"
                f" · {fmt_us(s.cpu_us)} µs" + _marks(s))

    chans = next((s.extra["channels"] for s in f["steps"] if s.extra.get("channels")), None)
    if chans:
        out += [f"{chans:,.0f} two-member channels.", ""]
    for group, lines in side_by_side(f["steps"], cell).items():
        out += ([f"**{group}**", ""] if group else []) + lines + [""]
    return out + summary_lines(run.data or {})


def section_connrate(run: Run, f: dict[str, Any]) -> list[str]:
    out = [_notes(run), "",
           "Each cell (rows: connections/s offered): connections/s accepted · connect time p50 / p99 (ms) · server "
           "CPU per connection · failed connects.", ""]
    defs = pick(run.data or {}, "definitions.connection")
    if isinstance(defs, dict):
        out += ["What a connection is: " + "; ".join(f"{k}: {v}" for k, v in defs.items()) + ".", ""]

    def cell(s: Step) -> str:
        e = s.extra
        return (f"{fmt_rate(e.get('achieved'))}/s · {fmt_ms(s.p50)} / {fmt_ms(s.p99)} ms · "
                f"{fmt_us(e.get('cpu_per_conn'))} µs · {fmt_rate(e.get('failed')) if e.get('failed') else '0'} failed"
                + _marks(s))

    for group, lines in side_by_side(f["steps"], cell, "offered").items():
        out += ([f"**{group}**", ""] if group else []) + lines + [""]
    return out + summary_lines(run.data or {})


def section_idle(run: Run, f: dict[str, Any]) -> list[str]:
    rows = f["rows"]
    relay = next((r for r in rows if r["server"] == RELAY), None)
    body = []
    for r in sorted(rows, key=lambda r: server_order(x["server"] for x in rows).index(r["server"])):
        per = r["per_conn_bytes"]
        ratio = (relay["per_conn_bytes"] / per) if relay and per and r is not relay else None
        conns = f"{r['connections']:,.0f}" if r["connections"] is not None else "–"
        if r["requested"] and r["connections"] is not None and r["connections"] < r["requested"]:
            conns += f" of {r['requested']:,.0f}"
        body.append([r["server"], conns, "–" if per is None else f"{per / 1024:.2f}", fmt_x(ratio),
                     " ".join(r["flags"])])
    ch = relay.get("channel") if relay else None
    note = (f" relay's connections are connected and subscribed (channel `{ch}`)." if ch else "")
    return [_notes(run) + note, ""] + table(
        ["server", "idle connections", "RSS per connection (KiB)", "relay ÷ server", "marks"], body)


def section_redis(run: Run, f: dict[str, Any]) -> list[str]:
    out = [_notes(run), "",
           "Deployments side by side (the peer is relay on its memory broker). Each cell: deliveries/s · p99 · "
           "relay CPU per delivery (all processes) · Redis CPU per publication.", ""]

    def cell(s: Step) -> str:
        r = s.extra.get("redis_us_per_pub")
        return (f"{fmt_rate(s.deliveries_per_s)}/s · p99 {fmt_ms(s.p99)} ms · {fmt_us(s.cpu_us)} µs"
                + (f" · Redis {fmt_us(r)} µs/pub" if r else "") + _marks(s))

    for group, lines in side_by_side(f["steps"], cell).items():
        out += [f"**Case {group}**", ""] + lines + [""]
    return out


def section_recovery(run: Run, f: dict[str, Any]) -> list[str]:
    rows = f["rows"]
    out = [_notes(run), "",
           "Every client cut at once, publications made while they are away, then all reconnect together and "
           "recover (relay on Redis). The baseline is the same storm with `recovery_coalesce = false`, in the same "
           "run.", ""]
    body = [[r["mode"], f"{r['clients']:,.0f} / {r['channels']:,.0f}", f"{r['reads']:,.0f}",
             f"{r['reads_per_client']:.4f}", "–" if r["all_s"] is None else f"{r['all_s']:.2f} s",
             f"{fmt_ms(r['p50'])} / {fmt_ms(r['p99'])} ms", fmt_us(r["cpu_us"]),
             f"{r['ok']:,.0f}" + (f" ({r['bad']:,.0f} NOT)" if r["bad"] else "")] for r in rows]
    out += table(["mode", "clients / channels", "broker history reads", "reads per recovering client",
                  "all recovered in", "recovery p50 / p99", "relay CPU per client (µs)",
                  "recovered every missed publication"], body) + [""]
    co = next(r for r in rows if r["coalesce"] is True)  # extract_recovery guarantees one
    base = next((r for r in rows if r["coalesce"] is False), None)
    goal = f["goal"]
    verdict = PASS if co["reads_per_client"] <= goal and not co["bad"] else FAIL
    line = (f"Goal (issue 11): at most {goal:g} broker history reads per recovering client with coalescing: "
            f"**{verdict}** ({co['reads_per_client']:.4f}")
    if base and co["reads_per_client"]:
        line += (f"; {base['reads_per_client']:.4f} without, {base['reads_per_client'] / co['reads_per_client']:.0f}× "
                 "more, in the same run")
    return out + [line + ").", ""] + summary_lines(run.data or {})


def section_lanes(run: Run, f: dict[str, Any]) -> list[str]:
    data = run.data or {}
    a = run.args
    modes = f["modes"]
    out = [_notes(run), ""]
    if a:
        out += [f"{a.get('clients', 0):,} clients, {a.get('slow_fraction', 0):.0%} of them behind a proxy that "
                f"passes {num(a.get('slow_rate')) or 0:,.0f} B/s toward each; a flood of {a.get('bulk_rate')} bulk "
                f"publications/s × {a.get('bulk_size')} B to every client (`prices`, lane bulk) and "
                f"{a.get('chat_rate')} chat/s to each client's own channel (`chat`, history and recovery). "
                f"Queue cap {(num(a.get('queue_max')) or 0) / 1024:.0f} KiB, bulk limit "
                f"{(num(a.get('bulk_limit')) or 0) / 1024:.0f} KiB. Slow clients behave like an SDK: resubscribe "
                "after 2500, retry after 111, reconnect and recover their chat after a close. Lanes off is the "
                "baseline, in the same run.", ""]

    def lat(d: Any) -> str:
        d = d if isinstance(d, dict) else {}
        return f"{fmt_ms(pnum(d, 'p50'))} / {fmt_ms(pnum(d, 'p99'))} / {fmt_ms(pnum(d, 'max'))} ms"

    def loss(c: dict[str, Any]) -> str:
        lost, pub = pnum(c, "chats_lost"), pnum(c, "chats_published_in_window")
        if lost is None or not pub:
            return "–"
        return f"{lost:,.0f} of {pub:,.0f}" + (f" ({lost / pub:.2%})" if lost else "")

    def row(label: str, cell: Callable[[dict[str, Any]], str]) -> list[str]:
        return [label] + [cell(m) for m in modes]

    rows = [
        row("fast clients: chat latency p50 / p99 / max", lambda m: lat(m["fast"].get("chat_latency_ms"))),
        row("fast clients: chats lost", lambda m: loss(m["fast"])),
        row("slow clients: **chats lost**", lambda m: loss(m["slow"])),
        row("slow clients: chats recovered after a reconnect",
            lambda m: f"{pnum(m['slow'], 'chats_recovered') or 0:,.0f}"),
        row("slow clients: live chat latency p50 / p99 / max", lambda m: lat(m["slow"].get("chat_latency_ms"))),
        row("slow clients: recovered chat latency p50 / p99 / max",
            lambda m: lat(m["slow"].get("recovered_chat_latency_ms"))),
        row("slow clients: disconnected (relay's 3008 slow)",
            lambda m: f"{pnum(m['slow'], 'disconnects', 'closes_3008') or 0:,.0f} "
                      f"({pnum(m, 'relay_metrics.run.relay_slow_consumer_disconnects_total') or 0:,.0f})"),
        row("slow clients: 2500 unsubscribes / 111 replies",
            lambda m: f"{pnum(m['slow'], 'unsub_2500') or 0:,.0f} / {pnum(m['slow'], 'err_111') or 0:,.0f}"),
        row("bulk per client per second: fast / slow",
            lambda m: f"{_value(pnum(m['fast'], 'bulk_per_client_per_s'))} / "
                      f"{_value(pnum(m['slow'], 'bulk_per_client_per_s'))}"),
        row("relay CPU per delivery", lambda m: f"{fmt_us(pnum(m, 'server_cpu_us_per_delivery'))} µs"),
        row("relay_lane_drops_total", lambda m: f"{pnum(m, 'relay_metrics.run.relay_lane_drops_total') or 0:,.0f}"),
        row("relay_outbound_queue_bytes, highest seen",
            lambda m: f"{(pnum(m, 'relay_metrics.outbound_queue_bytes_max') or 0) / 1024:,.0f} KiB"),
        row("marks", lambda m: " ".join(str(x).split("(")[0] for x in m.get("marks") or []) or "–"),
    ]
    out += table([""] + [str(m.get("mode", "?")) for m in modes], rows) + [""]
    s = f["summary"]
    if "goal_slow_chat_loss_zero_with_lanes" in s:
        out += [f"Goal (issue 11): slow clients lose no chat with lanes on: "
                f"**{PASS if s['goal_slow_chat_loss_zero_with_lanes'] else FAIL}**.", ""]
    notes = data.get("notes")
    if isinstance(notes, list):
        out += [f"* {n}" for n in notes] + [""]
    return out


def section_backpressure(run: Run, f: dict[str, Any]) -> list[str]:
    a, rows = run.args, f["rows"]
    mib = 1 << 20
    ceiling = num(f.get("ceiling"))
    out = [_notes(run), ""]
    out += [f"{a.get('subscribers', 0):,} WebSocket subscribers on {a.get('channels', '?')} channels read as fast "
            f"as they can (\"stalled\" cases: they stop reading during the flood and catch up after it); one "
            f"publisher, {a.get('conns', '?')} keep-alive HTTP connections, `{a.get('method', '?')}` of "
            f"{a.get('payload', '?')} B, honouring 429 Retry-After per connection. Capacity (backpressure off, the "
            f"highest rate the subscribers kept up with): {_value(num(f.get('capacity')))} requests/s. On: "
            f"`backpressure_queue_bytes` {(num(f.get('queue_limit')) or 0) / mib:.0f} MiB and "
            f"`backpressure_memory_bytes` {(ceiling or 0) / mib:.0f} MiB (the ceiling); off: every limit 0. A fresh "
            "relay per run, `client_queue_max_size` 1 GiB in both. Kernel send queues: bytes in relay's TCP send "
            "queues (/proc/net/tcp), which relay's RSS does not show.", ""]
    body = []
    for r in rows:
        rss = f"{r['rss_peak_bytes'] / mib:,.0f}"
        if r["mode"] == "on" and r.get("ceiling_bytes"):
            rss += " (under)" if r.get("under_ceiling") else " (**OVER**)"
        drain = r.get("drain_s")
        body.append([str(r.get("case", "?")), r["mode"], f"{fmt_rate(num(r.get('offered_per_s')))}/s",
                     f"{fmt_rate(num(r.get('accepted_per_s')))}/s", f"{fmt_rate(num(r.get('refused_per_s')))}/s",
                     rss, f"{(num(r.get('kernel_send_queue_peak_bytes')) or 0) / mib:,.0f}",
                     f"{r.get('deliveries', 0):,}",
                     f"{r.get('missing')} / {r.get('duplicates')} / {r.get('unexpected')}",
                     "timeout" if drain is None else f"{drain:.2f} s", str(r.get("slow_disconnects_3008", "–")),
                     f"{num(r.get('relay_cpu_pct_flood')) or 0:.0f} %",
                     f"{num(r.get('generator_cpu_pct')) or 0:.0f} %"])
    out += table(["case", "backpressure", "offered req/s", "accepted", "refused (429)", "peak RSS (MiB)",
                  "kernel send queues (MiB)", "deliveries", "missing / dup / unexpected", "drain", "3008",
                  "relay CPU", "gen CPU"], body) + [""]
    on = [r for r in rows if r["mode"] == "on"]
    ok = bool(on) and all(r.get("under_ceiling") and not r.get("missing") and not r.get("duplicates")
                          for r in on)
    out += [f"Goal (issue 11): with backpressure on, peak RSS under the ceiling and every accepted publication "
            f"delivered: **{PASS if ok else FAIL}**. (With it off, \"missing\" counts what the subscribers had not "
            f"received when the drain timed out: the backlog the baseline built.)", ""]
    return out + summary_lines(run.data or {})


def _histogram_rows(bins: list[Any], bin_ms: float, rows: int = 20, width: int = 40) -> list[str]:
    """A ``bin_ms`` arrival histogram as at most ``rows`` text rows (merged bins; the highest bin of each row)."""
    counts = [int(num(b) or 0) for b in bins]
    if not counts or not max(counts):
        return []
    per, top = max(1, math.ceil(len(counts) / rows)), max(counts)
    out = []
    for i in range(0, len(counts), per):
        chunk = counts[i:i + per]
        out.append(f"{i * bin_ms / 1000:5.1f}–{(i + len(chunk)) * bin_ms / 1000:<5.1f} s {sum(chunk):>8,}  "
                   f"max {max(chunk):>7,}  " + "#" * max(1 if max(chunk) else 0, round(width * max(chunk) / top)))
    return out


def section_pacing(run: Run, f: dict[str, Any]) -> list[str]:
    a, (un, pa) = run.args, f["runs"]
    n = int(num(pa.get("subscribers")) or 0)
    bin_ms = num(pa.get("bin_ms")) or 100.0
    out = [_notes(run), ""]
    w = f.get("workers", 1)
    where = (f"one relay process (CPU 0, {f.get('broker', 'memory')} broker)" if w == 1 else
             f"one relay node with {w} worker processes on one core (CPU 0, SO_REUSEPORT, Redis broker with "
             f"redis-server on the same core; each worker paces its own subscribers)")
    out += [f"{n:,} WebSocket subscribers of one channel and {a.get('chats', '?')} 1:1 chats "
            f"({_value(num(a.get('chat_rate')))} msg/s in all, client publishes) on {where}; one broadcast "
            f"through the server API at once, then one paced over "
            f"{int(num(pa.get('pace_ms')) or 0):,} ms, same connections. Chat latency per window relative to the "
            f"publish: before ({_value(num(a.get('quiet')))} s), during (the window + 1 s, both runs), after."
            + (f" **Not 100,000 subscribers**: capped by the {f['capped']}." if f.get("capped") else ""), ""]

    def lat(r: dict[str, Any], w: str) -> str:
        d = r["chat_ms"].get(w) if isinstance(r["chat_ms"].get(w), dict) else {}
        return f"{fmt_ms(pnum(d, 'p50'))} / {fmt_ms(pnum(d, 'p99'))} / {fmt_ms(pnum(d, 'max'))} ms"

    def arr(r: dict[str, Any]) -> str:
        return " / ".join(fmt_ms(pnum(r, f"arrival_ms.{k}")) for k in ("p1", "p50", "p99", "max")) + " ms"

    def gc(r: dict[str, Any]) -> str:
        g = r.get("relay_gc")
        if not isinstance(g, dict):
            return "not logged"
        long = [x for w in ("during",) for x in (g.get(w) or {}).get("long") or []]
        return ", ".join(f"gen{x[1]} {x[2]:.0f} ms" for x in long) or "none ≥ 10 ms"

    rows = [["chat p50 / p99 / max, before", lat(un, "before"), lat(pa, "before")],
            ["chat p50 / p99 / max, **during**", lat(un, "during"), lat(pa, "during")],
            ["chat p50 / p99 / max, after", lat(un, "after"), lat(pa, "after")],
            ["arrival p1 / p50 / p99 / max", arr(un), arr(pa)],
            [f"**peak arrivals per {bin_ms:g} ms**", f"{pnum(un, 'peak_per_bin') or 0:,.0f}",
             f"{pnum(pa, 'peak_per_bin') or 0:,.0f}"],
            ["got it exactly once", *(f"{pnum(r, 'received_once') or 0:,.0f} of {n:,}"
                                      + ("" if r.get("every_subscriber_once") else " (**NOT all**)")
                                      for r in (un, pa))],
            ["relay deliveries" + (" (all workers)" if w > 1 else ""),
             *(f"{pnum(r, 'relay_deliveries_broadcast') or 0:,.0f}"
               + (f" ± {pnum(r, 'relay_deliveries_tolerance'):,.0f}" if pnum(r, 'relay_deliveries_tolerance') else "")
               for r in (un, pa))],
            ["relay CPU in the during window", *(f"{pnum(r, 'relay_cpu_during_s') or 0:.2f} s"
                                                 + (f" (+ redis {pnum(r, 'redis_cpu_during_s'):.2f} s)"
                                                    if pnum(r, 'redis_cpu_during_s') is not None else "")
                                                 for r in (un, pa))],
            ["relay GC pauses during", gc(un), gc(pa)],
            ["marks", *(" ".join(str(m).split("(")[0] for m in r.get("marks") or []) or "–" for r in (un, pa))]]
    out += table(["", "unpaced", f"paced ({int(num(pa.get('pace_ms')) or 0):,} ms)"], rows) + [""]
    for r in (un, pa):
        hist = _histogram_rows(r["bins"], bin_ms)
        if hist:
            out += [f"Arrivals of the {r['mode']} broadcast, per {bin_ms:g} ms from the publish (rows merge bins; "
                    "max = the highest bin in the row):", "", "```"] + hist + ["```", ""]
    s = f["summary"]
    if "paced_spread_over_half_window" in s:
        out += [f"Claim (issue 11): the paced arrivals spread over more than half the window: "
                f"**{PASS if s['paced_spread_over_half_window'] else FAIL}**; every subscriber got each broadcast "
                f"once: **{PASS if s.get('every_subscriber_once') else FAIL}**.", ""]
    return out


SECTIONS: dict[str, Callable[[Run, dict[str, Any]], list[str]]] = {
    "fanout": section_fanout, "latency": section_latency, "latency-quota": section_latency, "chats": section_chats,
    "connrate": section_connrate, "idle": section_idle, "redis": section_redis, "recovery": section_recovery,
    "lanes": section_lanes, "backpressure": section_backpressure, "pacing": section_pacing,
}

_MACHINE_ROWS = (("CPU", ("cpu_model",)), ("cores", ("cpus",)), ("kernel", ("kernel",)),
                 ("Python", ("python",)), ("relay", ("relay", "relay_core")),
                 ("pinning", ("server_cpu", "generator_cpu")))
_MACHINE_SKIP = {"nofile_limit", "layout"}


def machine_lines(runs: dict[str, Run]) -> list[str]:
    """The machine description, merged over the files (values that differ are listed per kind)."""
    machines = {k: r.data["machine"] for k, r in runs.items()
                if r.data and isinstance(r.data.get("machine"), dict)}
    if not machines:
        return [NOT_MEASURED + ": no result file has a machine description."]

    def val(key: str) -> str:
        vals: dict[str, list[str]] = {}
        for kind, m in machines.items():
            if m.get(key) is not None:
                vals.setdefault(str(m[key]), []).append(kind)
        if len(vals) <= 1:
            return next(iter(vals), "–")
        return "; ".join(f"{v} ({', '.join(ks)})" for v, ks in vals.items())

    known = {k for _, keys in _MACHINE_ROWS for k in keys} | _MACHINE_SKIP
    rows = [["CPU", val("cpu_model")], ["cores", val("cpus")], ["kernel", val("kernel")],
            ["Python", val("python")], ["relay", f"{val('relay')}, core `{val('relay_core')}`"],
            ["pinning", f"servers on CPU {val('server_cpu')}, load generator on CPU {val('generator_cpu')}"]]
    libs = [k for m in machines.values() for k in m if k not in known]
    for k in dict.fromkeys(libs):
        rows.append([k, val(k)])
    return table(["", ""], rows)


def _flag(k: str) -> str:
    return "--" + k.replace("_", "-")


def reproduce_command(run: Run) -> str:
    """The script's command line, rebuilt from the arguments recorded in the file."""
    argv = [".venv/bin/python", f"bench/{SCRIPTS.get(run.kind, run.kind + '.py')}"]
    for k, v in run.args.items():
        if v is None or v is False or k in ("payload",):
            continue
        if v is True:
            argv.append(_flag(k))
        elif isinstance(v, list | tuple):
            if v:
                argv += [_flag(k), ",".join(map(str, v))]
        elif isinstance(v, int | float | str):
            argv += [_flag(k), f"{v:g}" if isinstance(v, float) else str(v)]
    return shlex.join(argv)


def render(runs: dict[str, Run], figures: dict[str, dict[str, Any] | None], why: dict[str, str],
           goals: list[Goal], plots: dict[str, Path], out: Path, plot_note: str = "",
           source: str = "the newest usable result of each kind (`bench/results/`, git-ignored)") -> str:
    """The whole Markdown report."""
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    used = [runs[k] for k in KINDS if k in runs]
    lines = ["# relay benchmarks", "",
             f"Generated by `bench/report.py` on {now} from {source}. Every scenario runs relay and its peers "
             "in the same run, with the same load generator and pinning (see `bench/README.md`); the machine is "
             "shared, so absolute figures drift between runs and the ratios are the figures to quote.", ""]
    if any(r.quick for r in used):
        lines += ["> **Some figures come from `--quick` runs** (few connections, short windows): they show that "
                  "the benchmarks work, not what relay can do. Run `make bench` for figures to quote.", ""]

    lines += ["## Machine", ""] + machine_lines(runs) + [""]

    lines += ["## How to reproduce", "", "```sh",
              "make build                      # the compiled core (the benchmarks check core=cython)",
              "make bench                      # every benchmark, full length, then this report",
              "make bench-quick                # the same as a short smoke run",
              ".venv/bin/python -m relay bench --only fanout,latency --quick   # a subset",
              ".venv/bin/python bench/report.py                # the report from the newest results",
              ".venv/bin/python bench/report.py bench/results/fanout-<stamp>.json --out /tmp/report.md",
              "```", "", "The runs in this report (command lines rebuilt from the arguments each file recorded):", "",
              "```sh"]
    lines += [reproduce_command(r) + f"   # {r.path.name}" for r in used if r.data is not None] or ["# none"]
    lines += ["```", ""]

    lines += ["## Goals (issue 6)", ""]
    lines += table(["goal", "verdict", "figures (and where they come from)"],
                   [[g.name, f"**{g.verdict}**", g.detail] for g in goals])
    lines += [""]

    lines += ["## Ratios (same run)", ""] + ratio_lines(figures) + [""]
    lines += ["In the scenario tables below: " + FLAG_LEGEND, ""]

    for kind in KINDS:
        lines += [f"## {TITLES[kind]}", ""]
        f = figures.get(kind)
        if f is None:
            lines += [f"{NOT_MEASURED.capitalize()} ({why.get(kind, 'no figures')}). "
                      f"Run `.venv/bin/python -m relay bench --only {kind}`.", ""]
            continue
        try:
            lines += SECTIONS[kind](runs[kind], f)
        except Exception as e:  # a rendering problem on odd data: say so, keep going
            lines += [f"{NOT_MEASURED.capitalize()} (could not render `{runs[kind].path.name}`: "
                      f"{type(e).__name__}: {e})."]
        for name, path in plots.items():
            if name.startswith(kind + "-") or name == kind:
                rel = _relpath(path, out.parent)
                lines += ["", f"![{name}]({rel})"]
        lines += [""]
    if plot_note:
        lines += [f"_{plot_note}_", ""]
    return "\n".join(lines).rstrip() + "\n"


def _relpath(path: Path, start: Path) -> str:
    try:
        return path.resolve().relative_to(start.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def ratio_lines(figures: dict[str, dict[str, Any] | None]) -> list[str]:
    """relay / peer CPU per delivery per step; saturation relay vs peers; p99 at 80 % of relay's saturation."""
    out: list[str] = []
    for kind in ("fanout", "latency", "chats"):
        f = figures.get(kind)
        if not f:
            continue
        peers = [p for p in server_order(s.server for s in f["steps"]) if p != RELAY and not p.startswith(RELAY)]
        ratios = {p: {(r.group, r.label): r for r in cpu_ratios(f["steps"], p)} for p in peers}
        keys = list(dict.fromkeys(k for p in peers for k in ratios[p]))
        if not keys:
            continue
        out += [f"**{TITLES[kind]}: relay ÷ peer server CPU per delivery** (below 1: relay spends less)", ""]
        rows = []
        for k in keys:
            group, label = k
            where = (f"{group}: " if group else "") + label
            rows.append([where] + [fmt_x(ratios[p][k].value) if k in ratios[p] else "–" for p in peers])
        out += table(["step"] + [f"relay ÷ {p}" for p in peers], rows) + [""]
    lat = figures.get("latency")
    if lat and RELAY in lat["saturation"]:
        sat = lat["saturation"]
        r = sat[RELAY]
        target = (r["deliveries_per_s"] or 0) * LOAD_FRACTION
        rows = []
        for srv, s in sat.items():
            ratio = (r["deliveries_per_s"] / s["deliveries_per_s"]) if srv != RELAY and s["deliveries_per_s"] \
                and r["deliveries_per_s"] else None
            near = step_at([x for x in lat["steps"] if x.server == srv], target) if target else None
            if srv == RELAY and s.get("p99_at_80") is not None:
                at = f"{fmt_ms(s['p99_at_80'])} ms at {s.get('p99_at_80_step') or '80 %'}"
            elif srv != RELAY and s["reached"] and (s["deliveries_per_s"] or 0) < 0.98 * target:
                at = f"saturated below that load (at {fmt_rate(s['deliveries_per_s'])}/s)"
            elif near:
                at = f"{fmt_ms(near.p99)} ms at {near.label}" + (
                    "" if (near.deliveries_per_s or 0) >= 0.9 * target else " (the nearest step below)")
            else:
                at = "–"
            rows.append([srv, fmt_rate(s["deliveries_per_s"]) + ("" if s["reached"] else " (not reached)"),
                         fmt_x(ratio), at])
        out += [f"**Saturation and p99 at {LOAD_FRACTION:.0%} of relay's saturation "
                f"({fmt_rate(target)} deliveries/s)** (latency benchmark"
                + ("" if r["reached"] else "; relay did not saturate, so this is 80 % of the highest rate run")
                + "):", ""]
        out += table(["server", "deliveries/s at saturation", "relay ÷ server", "p99 at that load"], rows) + [""]
    idle = figures.get("idle")
    if idle:
        relay = next((r for r in idle["rows"] if r["server"] == RELAY), None)
        bits = [f"relay ÷ {r['server']} {relay['per_conn_bytes'] / r['per_conn_bytes']:.2f}×"
                for r in idle["rows"] if relay and r is not relay and r["per_conn_bytes"]]
        if bits:
            out += ["**Idle RSS per connection:** " + ", ".join(bits) + ".", ""]
    return out or [NOT_MEASURED.capitalize() + ": no scenario ran relay and a peer."]


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="relay benchmark report (Markdown + PNG plots)",
                                 epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", type=Path,
                    help="result files to use (default: the newest usable one of each kind in --results-dir)")
    ap.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown file (default docs/benchmarks.md)")
    ap.add_argument("--plots-dir", type=Path, default=None,
                    help="where the PNGs go (default: next to --out, a folder named like it: docs/benchmarks/)")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)

    runs = load_runs(args.files) if args.files else newest_usable(args.results_dir)
    figures, why = extract(runs)
    goals = check_goals(figures)
    plots: dict[str, Path] = {}
    plot_note = ""
    if not args.no_plots:
        try:
            plots = write_plots(figures, args.plots_dir or args.out.with_suffix(""))
        except ImportError:
            plot_note = "Plots skipped: matplotlib is not installed (`pip install -e '.[bench]'`)."
        except Exception as e:  # a plot must not cost the report
            plot_note = f"Plots failed: {type(e).__name__}: {e}."
    args.out.parent.mkdir(parents=True, exist_ok=True)
    source = "the result files given on its command line" if args.files else None
    args.out.write_text(render(runs, figures, why, goals, plots, args.out, plot_note,
                               **({"source": source} if source else {})))
    for kind in KINDS:
        src = runs[kind].path.name if kind in runs else "-"
        print(f"  {kind:<9} {'ok' if figures[kind] else NOT_MEASURED + ' (' + why.get(kind, '') + ')'}  [{src}]")
    for g in goals:
        print(f"  {g.verdict:<12} {g.name}")
    for p in plots.values():
        print(f"plot: {p}")
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

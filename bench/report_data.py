"""The benchmark report's data (bench/report.py): finding and loading result files, small readers that look
every key up by a few accepted names, and one ``extract_<kind>`` per benchmark kind (results JSON -> normalised
figures; adjust it when a shape changes)."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report_format import RELAY, fmt_rate, server_order


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

"""``relay capacity``: turn expected sale traffic into a deployment, from measured figures.

Every cost comes from a ``relay bench`` results directory (``bench/results/*.json``):
the newest file of each kind is read, and each figure is printed with the file and
the case it came from. Nothing here is a constant about relay's speed: without the
measurements the planner says which benchmark to run.

Figures used (per core, relay on the compiled core):

* CPU per delivery of a broadcast (``fanout``, case a: one message per frame, the
  highest step that was neither saturated nor generator-limited), and of a 1:1 chat
  message (``chats``; else the broadcast figure, said so);
* the highest deliveries/s one core sustains with p99 under the target (``latency``;
  else the fan-out steps);
* CPU per new connection (``connrate``), memory per connection and per process (``idle``);
* Redis CPU per publication and per receiving process (``redis``).
"""

from __future__ import annotations

import glob
import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Traffic", "Deployment", "Profile", "MissingFigure", "load_profile", "plan", "format_plan"]

MIB = 1024 * 1024


class MissingFigure(Exception):
    """A figure the plan needs is not in the results: which benchmark gives it."""


@dataclass
class Traffic:
    peak_connections: int
    arrivals: int = 0  # connections that arrive during the ramp (0: the peak itself)
    ramp_minutes: float = 10.0
    chat_messages_per_s: float = 0.0  # 1:1 chat messages (each to every member of its chat)
    chat_members: float = 2.0  # average subscribers per chat channel
    pushes_per_s: float = 0.0  # personal-channel pushes (order status): one subscriber each
    broadcasts: list[tuple[float, int]] = field(default_factory=list)  # (messages/s, subscribers)
    message_bytes: int = 200
    p99_ms: float = 50.0  # chat and push delivery
    broadcast_p99_ms: float = 1000.0  # the last subscriber of a broadcast
    headroom: float = 0.3  # share of every resource kept free at the peak
    cores_per_node: int = 4
    memory_per_node_gib: float = 8.0
    drain_window_s: float = 20.0
    ping_interval_s: float = 25.0

    def deliveries_per_s(self) -> tuple[float, float]:
        """(chat and push deliveries/s, broadcast deliveries/s)."""
        small = self.chat_messages_per_s * self.chat_members + self.pushes_per_s
        return small, sum(rate * n for rate, n in self.broadcasts)

    def publications_per_s(self) -> float:
        return self.chat_messages_per_s + self.pushes_per_s + sum(rate for rate, _ in self.broadcasts)


@dataclass
class Figure:
    value: float
    source: str  # file and case it came from, or the assumption made


@dataclass
class Profile:
    us_per_broadcast_delivery: Figure
    us_per_chat_message: Figure  # a client's publish in a 2-member chat: command, reply, both pushes
    deliveries_per_core_at_p99: dict[float, Figure]  # p99 bound (ms) -> deliveries/s one core keeps under it
    us_per_connect: Figure
    rss_per_connection: Figure
    rss_per_process: Figure
    redis_us_per_publication: Figure | None
    redis_us_per_receiver: Figure | None
    measured_payload_bytes: int = 100

    def at_p99(self, bound_ms: float) -> Figure | None:
        """The highest measured deliveries/s per core whose p99 stays under ``bound_ms``."""
        ok = [f for b, f in self.deliveries_per_core_at_p99.items() if b <= bound_ms]
        return max(ok, key=lambda f: f.value) if ok else None


# --- reading bench results -------------------------------------------------------------------------


def _newest(results_dir: str, kind: str, usable=None) -> tuple[str, dict] | None:
    """The newest results file of ``kind`` (by the compiled core) that ``usable(data)`` accepts; a full run
    before a ``--quick`` one."""
    files = sorted(glob.glob(os.path.join(results_dir, f"{kind}-*.json")), key=os.path.getmtime, reverse=True)
    found: list[tuple[bool, str, dict]] = []
    for path in files:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        if (data.get("machine") or {}).get("relay_core", "cython") != "cython":
            continue  # only the compiled core's figures plan a deployment
        if usable is not None and not usable(data):
            continue
        quick = bool((data.get("args") or {}).get("quick"))
        if not quick:
            return os.path.basename(path), data
        found.append((quick, os.path.basename(path) + " (a --quick run)", data))
    return (found[0][1], found[0][2]) if found else None


def _rows(data: dict, server: str = "relay") -> list[dict]:
    rows = data.get("results") or []
    if isinstance(rows, dict):
        rows = [rows]
    return [r for r in rows if isinstance(r, dict) and r.get("server", server) == server and "skipped" not in r]


def _clean(r: dict) -> bool:
    return not r.get("saturated") and not r.get("generator_limited") and not r.get("loss") and \
        r.get("server_alive", True)


def _us_per_delivery(r: dict) -> float | None:
    # loopback: the receiver's softirq lands on the server's core; counting it is the cautious choice
    for key in ("server_cpu_incl_softirq_us_per_delivery", "server_cpu_us_per_delivery", "relay_cpu_us_per_delivery"):
        v = r.get(key)
        if isinstance(v, (int, float)) and v > 0:
            return float(v)
    return None


def _best_step(rows: list[dict]) -> dict | None:
    """The clean step with the most deliveries/s (the per-delivery cost that a busy node pays)."""
    clean = [r for r in rows if _clean(r) and _us_per_delivery(r)]
    return max(clean, key=lambda r: r.get("deliveries_per_s", 0)) if clean else None


def _p99(r: dict) -> float | None:
    lat = r.get("latency_ms") or {}
    v = lat.get("p99", r.get("p99_ms"))
    return float(v) if isinstance(v, (int, float)) else None


def load_profile(results_dir: str) -> Profile:
    def broadcast_rows(data: dict) -> list[dict]:
        return [r for r in _rows(data) if r.get("case") == "a"]

    fan = _newest(results_dir, "fanout", lambda d: _best_step(broadcast_rows(d)) is not None)
    if fan is None:
        raise MissingFigure(f"no fanout results with a clean relay step of case a (one message per frame) in "
                            f"{results_dir}: run `relay bench --only fanout` (or make bench)")
    fan_name, fan_data = fan
    bcast_rows = broadcast_rows(fan_data)
    step = _best_step(bcast_rows)
    bcast = Figure(_us_per_delivery(step), f"{fan_name} case {step.get('case')} at "
                                           f"{step.get('msgs_per_s')} msg/s to {step.get('subscribers')} subscribers")

    chat: Figure | None = None
    found = _newest(results_dir, "chats")
    if found is not None:
        name, data = found
        summary = data.get("summary") if isinstance(data.get("summary"), dict) else {}
        per_msg = summary.get("server_cpu_incl_softirq_us_per_message") or summary.get("server_cpu_us_per_message")
        if isinstance(per_msg, (int, float)) and per_msg > 0:
            chat = Figure(float(per_msg), f"{name}: its highest clean step, "
                                          f"{summary.get('highest_clean_msgs_per_s', 0):,.0f} msg/s")
        else:
            cstep = _best_step([r for r in _rows(data) if not r.get("marks")])
            if cstep is not None:
                chat = Figure(_us_per_delivery(cstep), f"{name} at {cstep.get('msgs_per_s')} msg/s")
    if chat is None:
        # a chat message: the publish command and its reply, and a push to each of the two members
        chat = Figure(3 * bcast.value, f"assumed 3 deliveries' worth ({bcast.source}); run "
                                       "`relay bench --only chats` to measure 1:1 chats")

    at_p99: dict[float, Figure] = {}
    # one message per frame: the case where nothing is coalesced (a hot-channel ramp would flatter the plan)
    lat = _newest(results_dir, "latency", lambda d: int((d.get("args") or {}).get("batch") or 1) == 1)
    lat_rows: list[tuple[str, dict]] = []
    if lat is not None:
        lat_rows = [(lat[0], r) for r in _rows(lat[1]) or []]
        for srv in (lat[1].get("servers") or []):  # {"server": "relay", "steps": [...]} shapes
            if isinstance(srv, dict) and srv.get("server") == "relay":
                lat_rows += [(lat[0], r) for r in srv.get("steps") or []]
    if not lat_rows:
        lat_rows = [(fan_name, r) for r in bcast_rows]
    for name, r in lat_rows:
        # what one core did with that p99 (not an extrapolation: a faster rate was not shown to keep it)
        p99, rate = _p99(r), r.get("deliveries_per_s")
        if p99 is None or not isinstance(rate, (int, float)) or r.get("loss") or r.get("generator_limited"):
            continue
        # the rate one core keeps under a bound: the measured rate at this step, for every bound above its p99
        for bound in (10.0, 25.0, 50.0, 100.0, 200.0, 500.0):
            if p99 <= bound and (bound not in at_p99 or at_p99[bound].value < rate):
                src = f"{name} at {r.get('msgs_per_s', r.get('offered_msgs_per_s'))} msg/s (p99 {p99:g} ms)"
                at_p99[bound] = Figure(rate, src)

    connect = Figure(0.0, "not measured (run `relay bench --only connrate`): connection cost left out")
    found = _newest(results_dir, "connrate")
    if found is not None:
        name, data = found
        rows = [r for r in _rows(data) or data.get("steps") or [] if isinstance(r, dict)]
        costs = [(r.get("server_cpu_us_per_connection") or r.get("cpu_us_per_connection"), r) for r in rows]
        costs = [(c, r) for c, r in costs if isinstance(c, (int, float)) and c > 0 and not r.get("failures")]
        if costs:
            c, r = max(costs, key=lambda cr: cr[1].get("accepted_per_s", 0))
            connect = Figure(float(c), f"{name} at {r.get('offered_per_s', r.get('rate'))} connections/s")

    idle = _newest(results_dir, "idle")
    if idle is None:
        raise MissingFigure(f"no idle results in {results_dir}: run `relay bench --only idle`")
    idle_name, idle_data = idle
    irows = [r for r in _rows(idle_data) if r.get("rss_per_connection_bytes")]
    if not irows:
        raise MissingFigure(f"{idle_name}: no relay row with rss_per_connection_bytes")
    ir = max(irows, key=lambda r: r.get("connections", 0))
    rss_conn = Figure(float(ir["rss_per_connection_bytes"]), f"{idle_name} at {ir.get('connections')} connections")
    rss_proc = Figure(float(ir.get("rss_before_bytes") or 64 * MIB), f"{idle_name}: RSS before connections")

    redis_pub = redis_recv = None
    found = _newest(results_dir, "redis")
    if found is not None:
        name, data = found
        rrows = [r for r in (data.get("results") or []) if isinstance(r, dict)
                 and r.get("redis_cpu_us_per_publication") and not r.get("generator_limited")]
        if rrows:
            r = max(rrows, key=lambda r: r.get("publications_per_s", 0))
            receivers = float(r.get("redis_receivers_per_publication") or 1.0)
            per_pub = float(r["redis_cpu_us_per_publication"])
            src = f"{name} case {r.get('case')} at {r.get('publications_per_s'):g} publications/s"
            # split a publication's Redis cost into the script (once) and the pub/sub sends (per receiver):
            # half and half when one run cannot separate them (said in the source)
            redis_pub = Figure(per_pub / 2, src + " (half of the measured cost per publication)")
            redis_recv = Figure(per_pub / 2 / receivers, src + f" (the other half over {receivers:g} receivers)")
    return Profile(bcast, chat, at_p99, connect, rss_conn, rss_proc, redis_pub, redis_recv)


# --- planning ----------------------------------------------------------------------------------------


@dataclass
class Deployment:
    nodes: int
    workers_per_node: int
    redis_instances: int
    cpu_cores_per_node: float  # cores busy at the peak, per node
    memory_per_node_gib: float
    utilization: dict[str, float]  # resource -> share of its capacity used at the peak
    first_limit: str
    cores_needed: dict[str, float]
    assumptions: list[str]
    sources: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def plan(t: Traffic, p: Profile) -> Deployment:
    use = 1.0 - t.headroom
    small, bcast = t.deliveries_per_s()
    assumptions: list[str] = []
    size_factor = 1.0
    if t.message_bytes > 4 * p.measured_payload_bytes:
        # a delivery is a syscall plus its bytes: beyond a few hundred bytes the copy starts to count
        size_factor = 1.0 + (t.message_bytes - 4 * p.measured_payload_bytes) / 4096
        assumptions.append(f"messages of {t.message_bytes} B cost {size_factor:.2f}x the measured "
                           f"{p.measured_payload_bytes} B deliveries (one extra delivery's worth per 4 KiB)")
    # a chat message as measured (2 members), plus a delivery for each member beyond two; a push is one
    # delivery (its HTTP API request is not measured: assumed to cost another)
    chat_cpu = t.chat_messages_per_s * (p.us_per_chat_message.value
                                        + max(0.0, t.chat_members - 2) * p.us_per_broadcast_delivery.value)
    push_cpu = t.pushes_per_s * 2 * p.us_per_broadcast_delivery.value
    cpu_deliver = (chat_cpu + push_cpu + bcast * p.us_per_broadcast_delivery.value) * size_factor / 1e6
    # a ping is a small write and a small read: counted as two deliveries per connection per interval
    cpu_pings = t.peak_connections / t.ping_interval_s * 2 * p.us_per_broadcast_delivery.value / 1e6
    ramp_rate = (t.arrivals or t.peak_connections) / (t.ramp_minutes * 60)
    cpu_ramp = ramp_rate * p.us_per_connect.value / 1e6
    cores = {"deliveries": cpu_deliver, "pings": cpu_pings, "connection ramp": cpu_ramp}
    cpu_total = sum(cores.values())

    # latency: the deliveries one core carries must stay at a rate measured under the p99 target
    lat = p.at_p99(t.p99_ms)
    deliveries = (small + bcast) * size_factor
    if lat is None:
        raise MissingFigure(f"no measured load kept p99 under {t.p99_ms:g} ms: run `relay bench --only latency`")
    cores_latency = deliveries / lat.value

    # a broadcast reaches its N subscribers in one fan-out per process: the last of them waits for the
    # N/P deliveries before it, so P processes must make N/P deliveries within the p99 target
    biggest = max((n for _, n in t.broadcasts), default=0)
    burst_s = biggest * p.us_per_broadcast_delivery.value * size_factor / 1e6  # on one process
    burst = burst_s / (t.broadcast_p99_ms / 1000)

    mem_per_conn = p.rss_per_connection.value
    nodes = 1
    while True:
        workers = t.cores_per_node
        cpu_nodes = cpu_total / use / t.cores_per_node
        lat_nodes = cores_latency / use / t.cores_per_node
        burst_nodes = burst / use / t.cores_per_node
        mem = (t.peak_connections * mem_per_conn + nodes * workers * p.rss_per_process.value) / (1024 ** 3)
        mem_nodes = mem / use / t.memory_per_node_gib
        # with the spare, nodes + 1 share the peak; a drained one's clients reconnect to the other nodes
        # within drain_window: that burst must fit too
        storm_rate = t.peak_connections / (nodes + 1) / t.drain_window_s
        storm_cores = storm_rate * p.us_per_connect.value / 1e6 / (nodes * t.cores_per_node)
        needed = max(1, math.ceil(max(cpu_nodes, lat_nodes, mem_nodes, burst_nodes) - 1e-9))
        if nodes >= needed and storm_cores <= use:
            break
        nodes = max(needed, nodes + 1)
    ha_nodes = nodes + 1  # N+1: a rolling restart or a lost node keeps the capacity
    # workers: enough cores per node for its share of the peak, one worker per core
    busy_per_node = max(cpu_total, cores_latency, burst) / use / nodes
    workers = max(1, min(t.cores_per_node, math.ceil(busy_per_node - 1e-9)))
    assumptions.append(f"{ha_nodes} nodes = {nodes} for the peak + 1 spare (a rolling restart drains one node)")

    redis_instances = 0
    util_redis = 0.0
    if ha_nodes * t.cores_per_node > 1:
        if p.redis_us_per_publication is None or p.redis_us_per_receiver is None:
            assumptions.append("Redis not measured (run `relay bench --only redis`): one instance assumed")
            redis_instances = 1
        else:
            processes = ha_nodes * t.cores_per_node
            receivers = (t.chat_messages_per_s * min(t.chat_members, processes) + t.pushes_per_s
                         + sum(rate * min(n, processes) for rate, n in t.broadcasts))
            redis_cores = (t.publications_per_s() * p.redis_us_per_publication.value
                           + receivers * p.redis_us_per_receiver.value) / 1e6
            redis_instances = max(1, math.ceil(redis_cores / use - 1e-9))
            util_redis = redis_cores / redis_instances
    cpu_per_node = cpu_total / nodes
    util = {
        "cpu": cpu_total / (nodes * t.cores_per_node),
        "latency (p99 target)": cores_latency / (nodes * t.cores_per_node),
        "memory": mem / (nodes * t.memory_per_node_gib),
        "reconnect storm": storm_cores,
    }
    if burst:
        util["broadcast burst"] = burst / (nodes * t.cores_per_node)
        per_worker_ms = burst_s * 1000 / (nodes * workers)
        assumptions.append(f"a broadcast to {biggest:,} takes about {per_worker_ms:,.0f} ms on each worker; chat "
                           f"messages on that worker wait behind it (target {t.p99_ms:g} ms)" +
                           (": plan more workers or pace broadcasts" if per_worker_ms > t.p99_ms else ""))
    if redis_instances:
        util["redis"] = util_redis
    first = max(util, key=lambda k: util[k])
    assumptions += [
        f"headroom {t.headroom:.0%}: every resource planned to at most {use:.0%} at the peak",
        f"nodes of {t.cores_per_node} cores and {t.memory_per_node_gib:g} GiB; one worker per busy core",
        f"pings every {t.ping_interval_s:g} s cost two deliveries each",
        "a broadcast fans out on every worker at once; its last subscriber waits for the worker's share of "
        "the deliveries (paced broadcasts would spread this: not assumed)",
        f"connection ramp: {ramp_rate:.1f} connections/s; a drained node's clients come back within "
        f"{t.drain_window_s:g} s",
    ]
    sources = {
        "CPU per broadcast delivery": f"{p.us_per_broadcast_delivery.value:.2f} us "
                                      f"({p.us_per_broadcast_delivery.source})",
        "CPU per chat message": f"{p.us_per_chat_message.value:.2f} us ({p.us_per_chat_message.source})",
        f"deliveries/s per core under p99 {t.p99_ms:g} ms": f"{lat.value:,.0f} ({lat.source})",
        "CPU per connection": f"{p.us_per_connect.value:.0f} us ({p.us_per_connect.source})",
        "memory per connection": f"{p.rss_per_connection.value / 1024:.1f} KiB ({p.rss_per_connection.source})",
        "memory per process": f"{p.rss_per_process.value / MIB:.0f} MiB ({p.rss_per_process.source})",
    }
    if p.redis_us_per_publication is not None:
        sources["Redis CPU per publication + per receiver"] = (
            f"{p.redis_us_per_publication.value:.1f} + {p.redis_us_per_receiver.value:.1f} us "
            f"({p.redis_us_per_publication.source})")
    return Deployment(nodes=ha_nodes, workers_per_node=workers, redis_instances=redis_instances,
                      cpu_cores_per_node=cpu_per_node, memory_per_node_gib=mem / nodes, utilization=util,
                      first_limit=first, cores_needed=cores, assumptions=assumptions, sources=sources)


def format_plan(t: Traffic, d: Deployment) -> str:
    small, bcast = t.deliveries_per_s()
    lines = [
        "Traffic at the peak",
        f"  connections            {t.peak_connections:,} (ramp: {t.arrivals or t.peak_connections:,} in "
        f"{t.ramp_minutes:g} min)",
        f"  publications/s         {t.publications_per_s():,.1f}",
        f"  deliveries/s           {small + bcast:,.0f} ({small:,.0f} chat and pushes, {bcast:,.0f} broadcast)",
        f"  p99 target             {t.p99_ms:g} ms (chat), {t.broadcast_p99_ms:g} ms (a broadcast's last "
        "subscriber)",
        "",
        "Deployment",
        f"  relay nodes            {d.nodes} x {d.workers_per_node} workers",
        f"  Redis                  {d.redis_instances or 'none (one process: the embedded broker)'}"
        + (" instances (or cluster shards)" if d.redis_instances else ""),
        f"  per node at the peak   {d.cpu_cores_per_node:.2f} cores busy, {d.memory_per_node_gib:.2f} GiB",
        "",
        "Use of each resource at the peak (planned nodes without the spare)",
    ]
    for k, v in sorted(d.utilization.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {k:<22} {v:6.1%}")
    lines += [f"  runs out first: {d.first_limit}", "", "CPU cores needed, by cause"]
    for k, v in d.cores_needed.items():
        lines.append(f"  {k:<22} {v:.3f}")
    lines += ["", "Measured figures used"]
    lines += [f"  {k}: {v}" for k, v in d.sources.items()]
    lines += ["", "Assumptions"]
    lines += [f"  - {a}" for a in d.assumptions]
    return "\n".join(lines)


# --- the command ---------------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    c = sub.add_parser("capacity", help="plan nodes, workers and Redis for a sale from benchmark results",
                       description="Plan a deployment from expected peak traffic and the figures measured by "
                                   "`relay bench` (newest results of each kind in --results).")
    c.add_argument("--connections", type=int, required=True, help="peak concurrent connections")
    c.add_argument("--arrivals", type=int, default=0, help="connections arriving during the ramp (default: peak)")
    c.add_argument("--ramp-minutes", type=float, default=10.0, help="length of the arrival ramp")
    c.add_argument("--chat-rate", type=float, default=0.0, help="1:1 chat messages per second (all chats)")
    c.add_argument("--chat-members", type=float, default=2.0, help="average subscribers per chat channel")
    c.add_argument("--push-rate", type=float, default=0.0, help="personal pushes per second (order status)")
    c.add_argument("--broadcast", action="append", default=[], metavar="RATE:SUBSCRIBERS",
                   help="a broadcast channel: messages/s and subscribers (repeatable), e.g. 0.2:19000")
    c.add_argument("--message-size", type=int, default=200, help="average message bytes")
    c.add_argument("--p99-ms", type=float, default=50.0, help="target p99 latency of chat messages and pushes")
    c.add_argument("--broadcast-p99-ms", type=float, default=1000.0,
                   help="target time for a broadcast to reach its last subscriber")
    c.add_argument("--headroom", type=float, default=0.3, help="share of each resource kept free (0-0.9)")
    c.add_argument("--cores-per-node", type=int, default=4)
    c.add_argument("--memory-per-node", type=float, default=8.0, help="GiB per node")
    c.add_argument("--drain-window", type=float, default=20.0, help="seconds a node drains over (config key)")
    c.add_argument("--results", default="bench/results", help="directory of `relay bench` JSON results")
    c.add_argument("--json", action="store_true", help="print the plan as JSON")
    c.set_defaults(func=main)


def _broadcast(text: str) -> tuple[float, int]:
    rate, sep, n = text.partition(":")
    try:
        out = (float(rate), int(n))
    except ValueError:
        out = (-1.0, -1)
    if not sep or out[0] < 0 or out[1] < 1:
        raise ValueError(f"--broadcast {text!r}: expected RATE:SUBSCRIBERS, e.g. 0.2:19000")
    return out


def main(args: Any) -> int:
    import sys

    try:
        if not 0 <= args.headroom <= 0.9:
            raise ValueError("--headroom must be between 0 and 0.9")
        if args.connections < 1 or args.cores_per_node < 1 or args.memory_per_node <= 0 or args.ramp_minutes <= 0:
            raise ValueError("--connections, --cores-per-node, --memory-per-node and --ramp-minutes must be > 0")
        t = Traffic(peak_connections=args.connections, arrivals=args.arrivals, ramp_minutes=args.ramp_minutes,
                    chat_messages_per_s=args.chat_rate, chat_members=args.chat_members,
                    pushes_per_s=args.push_rate, broadcasts=[_broadcast(b) for b in args.broadcast],
                    message_bytes=args.message_size, p99_ms=args.p99_ms, broadcast_p99_ms=args.broadcast_p99_ms,
                    headroom=args.headroom,
                    cores_per_node=args.cores_per_node, memory_per_node_gib=args.memory_per_node,
                    drain_window_s=args.drain_window)
        d = plan(t, load_profile(args.results))
    except (ValueError, MissingFigure) as e:
        print(f"relay capacity: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"traffic": asdict(t), "deployment": d.to_json()}, indent=2))
    else:
        print(format_plan(t, d))
    return 0

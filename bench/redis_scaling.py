"""Redis scale-out benchmark: relay workers over Redis against the single-process memory broker.

What it answers (the issue's benchmark section), always in ONE run so the ratios count:

* **Worker scaling.** The same workload against ``memory`` (one process, memory broker),
  ``redis-w1`` (one process on Redis), ``redis-w2``, ``redis-auto`` (``workers = 0``: one per
  core) and ``redis3-w2`` (2 workers, channels spread over 3 redis-servers by consistent hash).
  For each: deliveries/s, p50/p99 latency, loss, relay CPU per delivery (supervisor + every
  worker), Redis CPU (all redis-server processes) per publication, generator CPU.
* **Redis ingest per worker** (case ``ingest``): a fast publisher writes relay's pub/sub wire
  format straight into Redis (``PUBLISH <prefix>:ps:{<channel>} p0::<msgpack {"data": ...}>``,
  hand-built RESP, pipelined), so a single relay worker's pub/sub read path is the only relay
  work besides a coalesced write: the publications/s one worker can take from Redis.

Cases (``--cases``)
  hot     one channel, 1,000 subscribers; the publisher is a relay client sending 20 publish
          commands per frame (relay's own publish path: Lua script in Redis, then pub/sub back
          to every worker that has subscribers)
  chats   1:1 chats: 2,000 subscribers in 1,000 two-member channels; publications go through
          the HTTP server API ``broadcast`` (several keep-alive connections, which SO_REUSEPORT
          spreads over the workers), each tick a batch of channels round-robin. Every
          publication is its own channel, so each one is a Redis pub/sub message and costs a
          write per member: this is the workload that exercises Redis and per-channel pub/sub.
  ingest  100 subscribers on 100 channels of one relay worker; publications straight into Redis.

Pinning (2 cores, one is the generator's)
  Default ``--layout one-core``: relay (supervisor and all workers) AND redis-server on CPU 0,
  the load generator (subscriber workers, publisher) on CPU 1. The server side of every
  configuration gets exactly one core, so deliveries/s cannot grow with workers here; what
  the run shows is the *cost* of scaling out (relay and Redis CPU per delivery, per worker),
  and the projection per dedicated core. ``--layout spread`` pins worker i to CPU i (redis on
  CPU 0): real parallelism, but worker 1 shares CPU 1 with the generator, so those lines are
  marked SHARED-CORE and their throughput is a lower bound.

Each run prints one line per case, step and server, a summary (scaling efficiency and first
bottleneck) and writes bench/results/redis-<timestamp>.json with the machine description.
Run: ``.venv/bin/python bench/redis_scaling.py`` (``--quick`` for a smoke test, ~2 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (GENERATOR_CPU, SERVER_CPU, RelayServer, apply_run_defaults, child_pids, cpu_stat, fmt_rate,  # noqa: E402
                    machine_description, pin_to, raise_nofile, sum_cpu_times, write_result)
from fanout import (GEN_LIMIT_PCT, NOISE_PCT, SATURATION_P50_MS, Step, result_marks,  # noqa: E402
                    _core_use, _drain, _pct)
from loadgen import LoadGenerator, Publisher, Target, self_cpu_seconds  # noqa: E402
from redis_publishers import PREFIX, ApiBroadcastPublisher, RedisDirectPublisher  # noqa: E402

from relay.testing import RedisProcess  # noqa: E402

__all__ = ["ServerSpec", "SERVERS", "RelayNode", "ApiBroadcastPublisher", "RedisDirectPublisher",
           "ScaleCase", "CASES", "run_step", "run_case", "format_line", "summary", "main"]


# ------------------------------------------------------------------------------------------------
# the servers under test
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ServerSpec:
    """One relay deployment: broker, workers (0 = auto, one per core) and Redis instances."""

    name: str
    broker: str = "redis"
    workers: int = 1
    redis_instances: int = 1
    pubsub_connections: int = 2

    @property
    def worker_count(self) -> int:
        return self.workers or (os.cpu_count() or 1)


SERVERS: dict[str, ServerSpec] = {s.name: s for s in (
    ServerSpec("memory", broker="memory", redis_instances=0),
    ServerSpec("redis-w1", workers=1),
    ServerSpec("redis-w2", workers=2),
    ServerSpec("redis-auto", workers=0),
    ServerSpec("redis3-w2", workers=2, redis_instances=3),
)}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pin_all_threads(pid: int, cpu: int) -> None:
    """Pin every thread of ``pid`` to ``cpu`` (sched_setaffinity on a pid moves one thread only)."""
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            os.sched_setaffinity(int(task.name), {cpu})
        except OSError:
            pass


class RelayNode:
    """A relay deployment of one :class:`ServerSpec`: its redis-servers and relay (supervisor + workers).

    Everything is pinned to ``SERVER_CPU`` (layout ``one-core``), or worker i to CPU i
    (layout ``spread``). CPU is read from /proc for every relay process (the supervisor and
    its workers, found via /proc/PID/task/*/children, minus multiprocessing's
    resource_tracker) and, separately, for every redis-server.
    """

    def __init__(self, spec: ServerSpec, layout: str = "one-core") -> None:
        self.spec = spec
        self.name = spec.name
        self.layout = layout
        self.redis = [RedisProcess(cpu=SERVER_CPU) for _ in range(spec.redis_instances)]
        cfg: dict[str, Any] = {"broker": spec.broker, "workers": spec.workers, "log_level": "INFO"}
        if spec.broker == "redis":
            cfg.update(redis_urls=[r.url for r in self.redis], redis_pubsub_connections=spec.pubsub_connections,
                       redis_prefix=PREFIX)
        self.relay = RelayServer(name=spec.name, extra_config=cfg)
        self.worker_pids: list[int] = []

    # lifecycle -----------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> "RelayNode":
        for r in self.redis:
            r.start()
        self.relay.start(timeout)
        want = self.spec.worker_count
        deadline = time.monotonic() + timeout
        while True:  # /readyz answers as soon as one worker does: wait for all of them
            self.worker_pids = self._find_workers()
            started = self.relay.log().count("relay started:")
            if started >= want and (want == 1 or len(self.worker_pids) >= want):
                break
            if time.monotonic() > deadline or not self.relay.alive():
                raise RuntimeError(f"{self.name}: {started}/{want} workers started:\n{self.relay.log()[-3000:]}")
            time.sleep(0.1)
        if self.layout == "spread":
            for i, pid in enumerate(self.worker_pids or [self.relay.pid]):
                _pin_all_threads(pid, i % (os.cpu_count() or 1))
        return self

    def cleanup(self) -> None:
        self.relay.cleanup()
        for r in self.redis:
            r.cleanup()

    def _find_workers(self) -> list[int]:
        if self.spec.worker_count == 1:
            return []
        return sorted(p for p in child_pids(self.relay.pid) if "resource_tracker" not in _cmdline(p))

    # what the step runner needs ------------------------------------------------------------------
    @property
    def relay_pids(self) -> list[int]:
        """The supervisor (or the single process) and every worker."""
        return [self.relay.pid] + self._find_workers()

    def relay_cpu_times(self) -> tuple[float, float]:
        """(user, system) seconds summed over all relay processes."""
        return sum_cpu_times(self.relay_pids)

    def redis_cpu_seconds(self) -> float:
        return sum(sum_cpu_times(r.pid for r in self.redis))

    def alive(self) -> bool:
        """The relay process and all redis-servers run (used by fanout's drain)."""
        return self.relay.alive() and all(r.alive() for r in self.redis)

    def core(self) -> str:
        return self.relay.core()

    def redis_ports(self) -> list[int]:
        return [r.port for r in self.redis]


# ------------------------------------------------------------------------------------------------
# cases and the step runner
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScaleCase:
    """A workload: subscribers on ``channel`` (a loadgen Target pattern), how it is published."""

    key: str
    title: str
    subscribers: int
    channel: str               #: "bench:fanout", "bench:chat-{pair}", "bench:ing-{n}"
    channels: int              #: distinct channels
    members: int               #: subscribers per channel (deliveries per publication)
    publisher: str             #: "client" (relay publish commands), "api" (HTTP broadcast), "redis"
    steps: tuple[Step, ...]
    workers: int = 2           #: load generator worker processes
    servers: tuple[str, ...] = tuple(SERVERS)


CASES: dict[str, ScaleCase] = {
    "hot": ScaleCase("hot", "one hot channel, 20 client publishes per frame", 1000, "bench:fanout", 1, 1000,
                     "client", (Step(5, 10), Step(10, 20), Step(25, 20), Step(50, 20), Step(100, 20))),
    "chats": ScaleCase("chats", "1:1 chats, 1,000 two-member channels, HTTP API broadcast", 2000,
                       "bench:chat-{pair}", 1000, 2, "api",
                       (Step(50, 20), Step(50, 40), Step(100, 40), Step(100, 80), Step(100, 160))),
    "ingest": ScaleCase("ingest", "Redis ingest of one worker, 100 channels x 1 subscriber, PUBLISH into Redis",
                        100, "bench:ing-{n}", 100, 1, "redis",
                        (Step(100, 50), Step(100, 100), Step(100, 200), Step(100, 400), Step(100, 800)),
                        workers=1, servers=("redis-w1", "redis3-w2")),
}


def _channel_names(case: ScaleCase) -> list[str]:
    if case.channels == 1:
        return [case.channel]
    key = "{pair}" if "{pair}" in case.channel else "{n}"
    return [case.channel.replace(key, str(i)) for i in range(case.channels)]


async def run_step(case: ScaleCase, step: Step, node: RelayNode, lg: LoadGenerator, pub: Any,
                   warmup: float, duration: float, drain_timeout: float) -> dict[str, Any]:
    """Publish ``step`` for warmup + duration, drain, return the figures (fanout.run_step's keys + Redis).

    Expected deliveries = publications stamped in the window x members per channel. CPU is
    read at the window edges for relay (all processes), every redis-server, the generator
    (workers + this process) and per core (/proc/stat, for NOISY and softirq).
    """
    start_ns = time.time_ns() + 200_000_000
    ws_ns = start_ns + int(warmup * 1e9)
    we_ns = ws_ns + int(duration * 1e9)
    await asyncio.to_thread(lg.set_window, ws_ns, we_ns)
    marks: dict[str, tuple] = {}

    def edge(which: str) -> None:
        marks[which] = (time.monotonic(), node.relay_cpu_times(), node.redis_cpu_seconds(), lg.cpu_times(),
                        self_cpu_seconds(), cpu_stat(), tuple(node.relay_pids),
                        getattr(pub, "receivers", 0), pub.replies)

    replies0, errors0 = pub.replies, pub.errors
    await asyncio.sleep(max(0.0, (start_ns - time.time_ns()) / 1e9))
    sent = await pub.run(step.ticks, step.batch, ws_ns, we_ns, on_window_edge=edge)
    members = min(case.members, lg.connected)
    expected = sent["in_window"] * members
    drained = await _drain(lg, expected, node, drain_timeout)  # type: ignore[arg-type]
    w = await asyncio.to_thread(lg.report)

    (t_a, rel_a, red_a, gen_a, me_a, st_a, pids_a, rcv_a, rep_a) = marks["start"]
    (t_b, rel_b, red_b, gen_b, me_b, st_b, pids_b, rcv_b, rep_b) = marks["end"]
    wall = t_b - t_a
    relay_user, relay_sys = rel_b[0] - rel_a[0], rel_b[1] - rel_a[1]
    relay_cpu = relay_user + relay_sys
    redis_cpu = red_b - red_a
    gen_cpu = (gen_b[0] - gen_a[0]) + (gen_b[1] - gen_a[1]) + (me_b - me_a)
    # what we ran on each core: relay + redis on the server core (one-core layout), generator on its own
    ours = {SERVER_CPU: relay_cpu + redis_cpu, GENERATOR_CPU: gen_cpu}
    if node.layout == "spread":
        ours = {SERVER_CPU: relay_cpu / 2 + redis_cpu, GENERATOR_CPU: gen_cpu + relay_cpu / 2}  # approximate
    cores = _core_use(st_a, st_b, ours, wall)
    softirq = cores.get(SERVER_CPU, {}).get("irq_softirq_s", 0.0)
    recv = w.recv_in_window
    pubs_in_window = sent["in_window"]
    p50_1, p50_2, p50 = (w.hist_first.percentile_ms(50), w.hist_second.percentile_ms(50),
                         w.hist.percentile_ms(50))
    growing = p50_1 is not None and p50_2 is not None and p50_2 > 1.25 * p50_1 + 20.0
    saturated = (growing or drained["timed_out"] or (p50 is not None and p50 > SATURATION_P50_MS)
                 or (w.in_window == 0 and expected > 0 and w.lost == 0))
    pubs_per_s = pubs_in_window / duration if duration else 0.0
    gen_pct = 100.0 * gen_cpu / wall if wall else 0.0
    return {
        "case": case.key, "server": node.name, "workers": node.spec.worker_count,
        "redis_instances": node.spec.redis_instances, "broker": node.spec.broker, "layout": node.layout,
        "subscribers": lg.connected, "channels": case.channels, "members": members,
        "msgs_per_s": step.rate, "frames_per_s": step.ticks, "batch": step.batch,
        "published_in_window": pubs_in_window, "published": sent["sent"],
        "publications_per_s": pubs_per_s,
        "publisher_max_late_ms": round(sent["max_late_ms"], 2),
        "expected_deliveries": expected, "delivered_in_window": w.in_window,
        "received_in_window": recv, "frames_received_in_window": w.frames_in_window,
        "window_s": round(wall, 3), "deliveries_per_s": recv / wall if wall else 0.0,
        "loss": None if expected == 0 else 1.0 - w.in_window / expected, "drain": drained,
        "latency_ms": {"p50": _pct(w.hist, 50), "p99": _pct(w.hist, 99), "max": round(w.hist.max_ns / 1e6, 3),
                       "p50_first_half": _pct(w.hist_first, 50), "p50_second_half": _pct(w.hist_second, 50)},
        "relay_cpu_s": round(relay_cpu, 3), "relay_user_s": round(relay_user, 3),
        "relay_sys_s": round(relay_sys, 3), "relay_cpu_pct": 100.0 * relay_cpu / wall if wall else 0.0,
        "relay_cpu_us_per_delivery": relay_cpu * 1e6 / recv if recv else None,
        "relay_cpu_us_per_publication": relay_cpu * 1e6 / pubs_in_window if pubs_in_window else None,
        "deliveries_per_relay_core_s": recv / relay_cpu if relay_cpu > 0 else None,
        "redis_cpu_s": round(redis_cpu, 3), "redis_cpu_pct": 100.0 * redis_cpu / wall if wall else 0.0,
        "redis_cpu_us_per_publication": redis_cpu * 1e6 / pubs_in_window if pubs_in_window else None,
        "server_core_softirq_s": round(softirq, 3),
        "server_core_busy_pct": cores.get(SERVER_CPU, {}).get("busy_pct"),
        "redis_receivers_per_publication": ((rcv_b - rcv_a) / (rep_b - rep_a)) if rep_b > rep_a and rcv_b else None,
        "cores": cores,
        "noisy": any(c["other_pct"] > NOISE_PCT or c["steal_pct"] > NOISE_PCT for c in cores.values()),
        "generator_cpu_pct": gen_pct,
        "generator_limited": gen_pct >= GEN_LIMIT_PCT,
        "shared_core": node.layout == "spread",
        "worker_restarted": pids_a != pids_b,
        "saturated": bool(saturated),
        "lost_connections": w.lost, "close_codes": w.close_codes, "subscriber_errors": w.errors[:5],
        "per_connection_min": w.per_conn_min, "per_connection_max": w.per_conn_max,
        "publish_errors": pub.errors - errors0, "publish_error_sample": pub.error_sample[:300],
        "publish_replies": pub.replies - replies0,
        "server_alive": node.alive(),
    }


def format_line(r: dict[str, Any]) -> str:
    """One printed line per server and step."""
    lat = r["latency_ms"]

    def ms(v: float | None) -> str:
        return "-" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")

    def us(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    loss = r["loss"]
    loss_s = ("-" if loss is None else "backlog" if r["drain"]["timed_out"]
              else "0" if loss <= 0 else f"{loss:.3%}")
    marks = result_marks(r, (("shared_core", "SHARED-CORE"), ("worker_restarted", "WORKER-RESTARTED")))
    rcv = r["redis_receivers_per_publication"]
    return (f"  {r['server']:<10} {fmt_rate(r['publications_per_s']):>6} pub/s"
            f" {fmt_rate(r['deliveries_per_s']):>7} deliv/s"
            f"  p50 {ms(lat['p50']):>6} p99 {ms(lat['p99']):>6} ms  loss {loss_s:<7}"
            f"  relay {us(r['relay_cpu_us_per_delivery']):>6} us/deliv {r['relay_cpu_pct']:3.0f}%"
            f"  redis {us(r['redis_cpu_us_per_publication']):>5} us/pub {r['redis_cpu_pct']:3.0f}%"
            + (f" x{rcv:.1f}rcv" if rcv is not None else "")
            + f"  core0 {r['server_core_busy_pct'] or 0:3.0f}%  gen {r['generator_cpu_pct']:3.0f}%"
            + ("  " + " ".join(marks) if marks else ""))


def _make_publisher(case: ScaleCase, node: RelayNode, target: Target) -> Any:
    if case.publisher == "client":
        return Publisher(target)
    if case.publisher == "api":
        return ApiBroadcastPublisher("127.0.0.1", node.relay.api_port, node.relay.api_key, _channel_names(case))
    return RedisDirectPublisher(node.redis_ports(), _channel_names(case))


async def run_case(case: ScaleCase, spec: ServerSpec, layout: str, warmup: float, duration: float,
                   drain_timeout: float, print_fn: Callable[[str], None]) -> list[dict[str, Any]]:
    """Start the deployment, connect subscribers and publisher, run the steps in rising order, stop."""
    node = RelayNode(spec, layout)
    results: list[dict[str, Any]] = []
    await asyncio.to_thread(node.start)
    lg: LoadGenerator | None = None
    pub: Any = None
    try:
        token = node.relay.token()
        target = Target(spec.name, "relay", node.relay.ws_url, node.relay.ws_url, token, case.channel)
        lg = LoadGenerator(target, case.subscribers, case.workers)
        n = await asyncio.to_thread(lg.connect)
        print_fn(f"  [{spec.name}: core={node.core()} relay pids {node.relay_pids}"
                 f" ({spec.worker_count} worker{'s' if spec.worker_count > 1 else ''}),"
                 f" {spec.redis_instances} redis, {n}/{case.subscribers} subscribers]")
        pub = _make_publisher(case, node, target)
        await pub.connect()
        await asyncio.sleep(1.0 if spec.broker == "redis" else 0.5)  # let Redis SUBSCRIBEs settle
        for i, step in enumerate(case.steps):
            r = await run_step(case, step, node, lg, pub, warmup, duration, drain_timeout)
            results.append(r)
            print_fn(f"  step {fmt_rate(step.rate)} pub/s ({step.batch}/tick x {step.ticks:g}/s):")
            print_fn(format_line(r))
            if r["publish_errors"]:
                print_fn(f"    first publish error: {r['publish_error_sample']}")
            if r["saturated"] or not r["server_alive"]:
                for later in case.steps[i + 1:]:
                    results.append({"case": case.key, "server": spec.name, "msgs_per_s": later.rate,
                                    "batch": later.batch, "skipped": "saturated at a lighter step"})
                if case.steps[i + 1:]:
                    print_fn(f"  heavier steps skipped for {spec.name} (saturated)")
                break
    finally:
        if pub is not None:
            pub.close()
        if lg is not None:
            await asyncio.to_thread(lg.close)
        if not node.alive():
            print_fn(f"  {spec.name} log tail:\n{node.relay.log()[-2000:]}")
        node.cleanup()
    return results


# ------------------------------------------------------------------------------------------------
# summary
# ------------------------------------------------------------------------------------------------

def _best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The heaviest step that was neither saturated nor generator-limited (else the heaviest run)."""
    ok = [r for r in rows if not r["saturated"] and not r["generator_limited"] and r["server_alive"]]
    return (ok or rows or [None])[-1]


def summary(results: list[dict[str, Any]]) -> list[str]:
    """Scaling efficiency (CPU per delivery against redis-w1 and memory at the same step) and bottlenecks."""
    out: list[str] = []
    rows = [r for r in results if "skipped" not in r]
    for case in dict.fromkeys(r["case"] for r in rows):
        crow = [r for r in rows if r["case"] == case]
        out.append(f"  ({case})")
        by = {(r["server"], r["msgs_per_s"]): r for r in crow}
        for r in crow:
            base = by.get(("redis-w1", r["msgs_per_s"]))
            mem = by.get(("memory", r["msgs_per_s"]))
            c = r["relay_cpu_us_per_delivery"]
            if r["server"] in ("redis-w1", "memory") or not c or not base or not base["relay_cpu_us_per_delivery"]:
                continue
            eff = base["relay_cpu_us_per_delivery"] / c
            out.append(f"    {fmt_rate(r['msgs_per_s'])} pub/s: {r['server']} ({r['workers']} workers) relay CPU per"
                       f" delivery {c:.2f} us vs redis-w1 {base['relay_cpu_us_per_delivery']:.2f} us:"
                       f" per-core efficiency {eff:.2f} (1.00 = linear: N dedicated cores give N x)"
                       + (f"; vs memory {c / mem['relay_cpu_us_per_delivery']:.2f}x"
                          if mem and mem["relay_cpu_us_per_delivery"] else ""))
        for server in dict.fromkeys(r["server"] for r in crow):
            srows = [r for r in crow if r["server"] == server]
            b = _best(srows)
            if b is None or not b["relay_cpu_us_per_delivery"]:
                continue
            sat = next((r for r in srows if r["saturated"]), None)
            relay_cap = 1e6 / b["relay_cpu_us_per_delivery"]  # deliveries per relay core-second
            line = (f"    {server}: highest clean step {fmt_rate(b['deliveries_per_s'])} deliv/s"
                    f" (p99 {b['latency_ms']['p99']} ms); relay {fmt_rate(relay_cap)} deliv per core-s"
                    f" ({b['relay_cpu_us_per_publication'] or 0:.1f} us per publication)")
            if b["redis_cpu_us_per_publication"]:
                redis_cap = 1e6 / b["redis_cpu_us_per_publication"]
                per_worker_pubs = b["publications_per_s"] / max(1e-9, b["relay_cpu_pct"] / 100.0 / b["workers"])
                line += (f"; Redis {b['redis_cpu_us_per_publication']:.1f} us per publication ->"
                         f" one Redis core = {fmt_rate(redis_cap)} pub/s")
                first = ("Redis" if redis_cap < per_worker_pubs * b["workers"] else "relay workers")
                line += f"; first bottleneck with {b['workers']} dedicated worker core(s): {first}"
            if sat is not None:
                line += (f"; saturated at {fmt_rate(sat['deliveries_per_s'])} deliv/s (core0 busy"
                         f" {sat['server_core_busy_pct']}%: relay {sat['relay_cpu_pct']:.0f}%,"
                         f" redis {sat['redis_cpu_pct']:.0f}%, softirq {sat['server_core_softirq_s']}s)")
            if any(r["generator_limited"] for r in srows):
                line += "; some steps GENERATOR-LIMITED"
            out.append(line)
    return out


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------

async def amain(args: argparse.Namespace) -> int:
    pin_to(GENERATOR_CPU)
    raise_nofile()
    lines: list[str] = []
    results: list[dict[str, Any]] = []

    def print_fn(s: str) -> None:
        print(s, flush=True)
        lines.append(s)

    machine = machine_description()
    import subprocess

    machine["redis_server"] = subprocess.run(["redis-server", "--version"], capture_output=True,
                                             text=True).stdout.strip()
    machine["layout"] = args.layout
    print_fn(f"machine: {machine['cpu_model']}, {machine['cpus']} CPUs, kernel {machine['kernel']}, "
             f"Python {machine['python']}, relay {machine['relay']} core={machine['relay_core']}, "
             f"{machine['redis_server'].split(' sha')[0]}")
    if args.layout == "one-core":
        print_fn(f"layout one-core: relay (all workers) + redis-server on CPU {SERVER_CPU}, generator on CPU "
                 f"{GENERATOR_CPU}; 'auto' = {SERVERS['redis-auto'].worker_count} workers here")
    else:
        print_fn("layout spread: worker i on CPU i, redis on CPU 0, generator on CPU 1 (shares with worker 1)")
    print_fn(f"window {args.duration:g}s after {args.warmup:g}s warm-up; 100 B payloads")
    for key in args.cases:
        case = CASES[key]
        if args.quick:
            case = ScaleCase(case.key, case.title, case.subscribers // 2, case.channel,
                             max(1, case.channels // 2), case.members, case.publisher, case.steps[:2],
                             case.workers, case.servers)
        servers = [s for s in args.servers if s in case.servers]
        print_fn(f"({case.key}) {case.title}: {case.subscribers} subscribers, {case.channels} channel(s), steps "
                 + ", ".join(f"{fmt_rate(s.rate)} pub/s" for s in case.steps))
        for name in servers:
            results += await run_case(case, SERVERS[name], args.layout, args.warmup, args.duration,
                                      args.drain_timeout, print_fn)
    print_fn("summary (same run):")
    for s in summary(results):
        print_fn(s)
    path = write_result("redis", {"machine": machine, "args": vars(args), "results": results,
                                  "servers": {k: asdict(v) for k, v in SERVERS.items()},
                                  "cases": {k: asdict(v) for k, v in CASES.items()}, "printed": lines})
    print(f"results: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="relay on Redis: worker scaling and Redis ingest",
                                 epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="hot,chats,ingest", help="comma-separated: hot, chats, ingest")
    ap.add_argument("--servers", default=",".join(SERVERS), help="comma-separated: " + ", ".join(SERVERS))
    ap.add_argument("--layout", choices=("one-core", "spread"), default="one-core")
    ap.add_argument("--duration", type=float, default=None, help="measured window in seconds (default 8)")
    ap.add_argument("--warmup", type=float, default=None, help="seconds before the window (default 2)")
    ap.add_argument("--drain-timeout", type=float, default=10.0)
    ap.add_argument("--quick", action="store_true", help="half the subscribers, 2 steps, short windows")
    args = ap.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip() in CASES]
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip() in SERVERS]
    apply_run_defaults(args, 8.0)
    import uvloop

    return uvloop.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())

"""Fan-out benchmark: relay against four peers, same subscribers, same generator, same run.

The peers (``--servers``, default all five): ``picows`` (naive picows relay on uvloop),
``websockets`` (naive ``websockets.broadcast`` relay on uvloop), ``node-ws`` (Node ``ws``
broadcast server), ``nats`` (nats-server's WebSocket listener, GOMAXPROCS=1); see
bench/README.md for each one's settings. A peer that cannot run on this machine (no
nats-server, no node or npm) is skipped with its reason, printed and in the JSON.

For each case and each server (relay, then each peer) this starts the server
pinned to CPU 0, connects the subscribers (load generator workers pinned to CPU 1),
connects one publisher (CPU 1) and runs the case's steps in order of rising load.
Each step publishes at a fixed rate for ``warmup + duration`` seconds; the last
``duration`` seconds are the measured window. It prints one line per server and step:

* deliveries/s      deliveries received during the window / window length
* p50/p99/max       publish-to-receive latency of messages stamped in the window
* loss              1 - delivered / (published in window x subscribers), after draining
* CPU/delivery      server utime+stime over the window / deliveries received in it
* per core          deliveries per second of server CPU (1 / CPU per delivery)
* gen CPU           load generator (workers + publisher) CPU over the window, % of one core

Marks: GENERATOR-LIMITED (generator >= 90 % of its core: the figure is the generator's),
SATURATED (latency grew through the window, median over 1 s, or a backlog was still
draining at the drain timeout; loss then reads "backlog" and the heavier steps for that
server are skipped), p99>50ms, LOSS (deliveries stopped short of the published count).

Cases (``--cases abc``):
  a  1,000 subscribers, 1 message per tick at 50 and 200 msg/s
  b  10,000 subscribers, 1 message per tick at 10 and 20 msg/s
  c  hot channel: 1,000 subscribers, 20 publishes per frame at 50/100/200 frames/s
  d  (not in the default set) 1,000 subscribers, 100 msg/s sent as 1, 2, 5, 10 publishes
     per frame: how CPU per delivery falls as more messages share a write

Results also go to bench/results/fanout-<timestamp>.json with the machine description.
Run: ``.venv/bin/python bench/fanout.py`` (``--quick`` for a smoke test).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (GENERATOR_CPU, PEERS, SERVER_CPU, Peer, RelayServer, ServerProcess,  # noqa: E402
                    apply_run_defaults, cpu_stat, fmt_rate, machine_description, pin_to, raise_nofile, write_result)
from loadgen import LoadGenerator, Publisher, Target, self_cpu_seconds  # noqa: E402

__all__ = ["Step", "Case", "CASES", "DEFAULT_SERVERS", "run_step", "run_server", "format_line", "main"]

GEN_LIMIT_PCT = 90.0      #: generator CPU (% of its core) from which a figure is the generator's
SATURATION_P99_MS = 50.0  #: p99 bound quoted in BENCHMARKING.md (a step over it is marked)
SATURATION_P50_MS = 1000.0  #: a median latency over this counts as saturated
NOISE_PCT = 5.0  #: other tenants' load or steal on a benchmark core above this marks a step NOISY
DEFAULT_SERVERS = ("relay", "picows", "websockets", "node-ws", "nats")


@dataclass(frozen=True)
class Step:
    """One offered load: ``batch`` messages per frame, ``ticks`` frames per second."""

    ticks: float
    batch: int = 1

    @property
    def rate(self) -> float:
        return self.ticks * self.batch


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    subscribers: int
    steps: tuple[Step, ...]
    workers: int


CASES: dict[str, Case] = {
    "a": Case("a", "1 msg per tick", 1000, (Step(50), Step(200)), workers=2),
    "b": Case("b", "10k subscribers", 10000, (Step(10), Step(20)), workers=4),
    "c": Case("c", "hot channel, 20 publishes per frame", 1000,
              (Step(50, 20), Step(100, 20), Step(200, 20)), workers=2),
    "d": Case("d", "coalescing sweep, same 100k deliveries/s in 1/2/5/10 publishes per frame", 1000,
              (Step(100, 1), Step(50, 2), Step(20, 5), Step(10, 10)), workers=2),
}


def _core_use(a: dict[int, dict[str, float]], b: dict[int, dict[str, float]], ours: dict[int, float],
              wall: float) -> dict[int, dict[str, float]]:
    """What ran on each benchmark core during the window, from two /proc/stat readings.

    ``irq_softirq_s``: interrupt and softirq time (on CPU 0 that is the server's loopback TCP
    work, which utime+stime may not include); ``other_pct``: task time not explained by our
    processes (``ours``: their utime+stime per core), i.e. other tenants; ``steal_pct``.
    """
    out: dict[int, dict[str, float]] = {}
    for cpu, our_cpu in ours.items():
        if cpu not in a or cpu not in b or wall <= 0:
            continue
        d = {k: b[cpu][k] - a[cpu][k] for k in a[cpu]}
        tasks = d["user"] + d["nice"] + d["system"]
        out[cpu] = {"busy_pct": round(100.0 * (tasks + d["irq"] + d["softirq"] + d["steal"]) / wall, 1),
                    "irq_softirq_s": round(d["irq"] + d["softirq"], 3),
                    "other_pct": round(max(0.0, 100.0 * (tasks - our_cpu) / wall), 1),
                    "steal_pct": round(100.0 * d["steal"] / wall, 1)}
    return out


def _pct(h, q: float) -> float | None:
    v = h.percentile_ms(q)
    return None if v is None else round(v, 3)


async def _drain(lg: LoadGenerator, expected: int, server: ServerProcess, timeout: float,
                 stall: float = 3.0) -> dict[str, Any]:
    """Wait until every in-window message arrived, deliveries stop for ``stall`` s, or ``timeout``.

    ``complete``: everything arrived. ``timed_out``: deliveries were still flowing at the
    timeout (a backlog, i.e. the server is saturated). Neither: deliveries stopped short,
    so the missing ones are lost.
    """
    t0 = time.monotonic()
    last_total, last_change = -1, t0
    while True:
        got, total, _ = await asyncio.to_thread(lg.counts)
        now = time.monotonic()
        if got >= expected:
            return {"complete": True, "timed_out": False, "drain_s": round(now - t0, 2)}
        if total != last_total:
            last_total, last_change = total, now
        if now - last_change > stall or not server.alive():
            return {"complete": False, "timed_out": False, "drain_s": round(now - t0, 2)}
        if now - t0 > timeout:
            return {"complete": False, "timed_out": True, "drain_s": round(now - t0, 2)}
        await asyncio.sleep(0.2)


async def run_step(case: Case, step: Step, server: ServerProcess, lg: LoadGenerator, pub: Publisher,
                   warmup: float, duration: float, drain_timeout: float) -> dict[str, Any]:
    """Publish ``step`` for warmup + duration, drain, and return the step's figures."""
    start_ns = time.time_ns() + 200_000_000
    ws_ns = start_ns + int(warmup * 1e9)
    we_ns = ws_ns + int(duration * 1e9)
    await asyncio.to_thread(lg.set_window, ws_ns, we_ns)
    marks: dict[str, tuple] = {}
    stats: dict[str, dict] = {}

    def edge(which: str) -> None:
        marks[which] = (time.monotonic(), server.cpu_times(), lg.cpu_times(), self_cpu_seconds())
        stats[which] = cpu_stat()

    replies0, errors0 = pub.replies, pub.errors
    await asyncio.sleep(max(0.0, (start_ns - time.time_ns()) / 1e9))
    sent = await pub.run(step.ticks, step.batch, ws_ns, we_ns, on_window_edge=edge)
    expected = sent["in_window"] * lg.connected
    drained = await _drain(lg, expected, server, drain_timeout)
    w = await asyncio.to_thread(lg.report)

    (t_a, srv_a, gen_a, me_a), (t_b, srv_b, gen_b, me_b) = marks["start"], marks["end"]
    wall = t_b - t_a
    server_user, server_sys = srv_b[0] - srv_a[0], srv_b[1] - srv_a[1]
    server_cpu = server_user + server_sys
    workers_user, workers_sys = gen_b[0] - gen_a[0], gen_b[1] - gen_a[1]
    gen_cpu = workers_user + workers_sys + (me_b - me_a)
    cores = _core_use(stats["start"], stats["end"], {SERVER_CPU: server_cpu, GENERATOR_CPU: gen_cpu}, wall)
    server_softirq = cores.get(SERVER_CPU, {}).get("irq_softirq_s", 0.0)
    recv = w.recv_in_window
    p50_1, p50_2 = w.hist_first.percentile_ms(50), w.hist_second.percentile_ms(50)
    p50 = w.hist.percentile_ms(50)
    # saturated: latency grows through the window, or it is over a second, or a backlog outlived
    # the drain timeout (also when nothing stamped in the window arrived at all)
    growing = p50_1 is not None and p50_2 is not None and p50_2 > 1.25 * p50_1 + 20.0
    saturated = (growing or drained["timed_out"] or (p50 is not None and p50 > SATURATION_P50_MS)
                 or (w.in_window == 0 and expected > 0 and w.lost == 0))
    loss = None if expected == 0 else 1.0 - w.in_window / expected
    return {
        "case": case.key, "server": server.name, "peer": server.name, "subscribers": lg.connected,
        "msgs_per_s": step.rate, "frames_per_s": step.ticks, "batch": step.batch,
        "published_in_window": sent["in_window"], "published": sent["sent"],
        "publisher_max_late_ms": round(sent["max_late_ms"], 2),
        "expected_deliveries": expected, "delivered_in_window": w.in_window,
        "received_in_window": recv, "frames_received_in_window": w.frames_in_window,
        "bytes_per_delivery": round(w.bytes_in_window / recv, 1) if recv else None,
        "window_s": round(wall, 3), "deliveries_per_s": recv / wall if wall else 0.0,
        "loss": loss, "drain": drained,
        "latency_ms": {"p50": _pct(w.hist, 50), "p99": _pct(w.hist, 99), "max": round(w.hist.max_ns / 1e6, 3),
                       "p50_first_half": _pct(w.hist_first, 50), "p50_second_half": _pct(w.hist_second, 50)},
        "server_cpu_s": round(server_cpu, 3), "server_cpu_pct": 100.0 * server_cpu / wall if wall else 0.0,
        "server_cpu_us_per_delivery": server_cpu * 1e6 / recv if recv else None,
        "server_core_softirq_s": round(server_softirq, 3),
        "server_cpu_incl_softirq_us_per_delivery": (server_cpu + server_softirq) * 1e6 / recv if recv else None,
        "cores": cores,
        "noisy": any(c["other_pct"] > NOISE_PCT or c["steal_pct"] > NOISE_PCT for c in cores.values()),
        "deliveries_per_core_s": recv / server_cpu if server_cpu > 0 else None,
        "generator_cpu_pct": 100.0 * gen_cpu / wall if wall else 0.0,
        "server_user_s": round(server_user, 3), "server_sys_s": round(server_sys, 3),
        "generator_workers_user_s": round(workers_user, 3), "generator_workers_sys_s": round(workers_sys, 3),
        "generator_workers_cpu_pct": 100.0 * (workers_user + workers_sys) / wall if wall else 0.0,
        "publisher_cpu_pct": 100.0 * (me_b - me_a) / wall if wall else 0.0,
        "generator_limited": wall > 0 and 100.0 * gen_cpu / wall >= GEN_LIMIT_PCT,
        "saturated": bool(saturated),
        "lost_connections": w.lost, "close_codes": w.close_codes, "pings_answered": w.pings,
        "subscriber_errors": w.errors[:5],
        "per_connection_min": w.per_conn_min, "per_connection_max": w.per_conn_max,
        "publish_errors": pub.errors - errors0, "publish_replies": pub.replies - replies0,
        "server_alive": server.alive(),
    }


def _sys_share(r: dict[str, Any]) -> str:
    total = r["server_user_s"] + r["server_sys_s"]
    return f"{100.0 * r['server_sys_s'] / total:.0f}% sys" if total > 0 else "-"


def result_marks(r: dict[str, Any], extra: tuple[tuple[str, str], ...] = ()) -> list[str]:
    """The marks that qualify a result line; ``extra`` adds (result key, mark) flags of other benchmarks."""
    lat = r["latency_ms"]
    marks = []
    if r["generator_limited"]:
        marks.append("GENERATOR-LIMITED")
    if r["saturated"]:
        marks.append("SATURATED")
    elif lat["p99"] is not None and lat["p99"] > SATURATION_P99_MS:
        marks.append(f"p99>{SATURATION_P99_MS:g}ms")
    if r["drain"]["complete"] is False and not r["drain"]["timed_out"]:
        marks.append("LOSS")
    if r["lost_connections"]:
        marks.append(f"DISCONNECTS={r['lost_connections']} codes={r['close_codes']}")
    if r["publish_errors"]:
        marks.append(f"PUBLISH-ERRORS={r['publish_errors']}")
    marks += [mark for key, mark in extra if r.get(key)]
    if not r["server_alive"]:
        marks.append("SERVER-DIED")
    if r["noisy"]:
        marks.append("NOISY(" + ", ".join(f"cpu{c}: other {v['other_pct']:.0f}% steal {v['steal_pct']:.0f}%"
                                          for c, v in r["cores"].items()) + ")")
    return marks


def format_line(r: dict[str, Any]) -> str:
    """One printed line per server and step."""
    lat = r["latency_ms"]

    def ms(v: float | None) -> str:
        return "-" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")

    cpu = r["server_cpu_us_per_delivery"]
    cpu_si = r["server_cpu_incl_softirq_us_per_delivery"]
    per_core = r["deliveries_per_core_s"]
    loss = r["loss"]
    if loss is None:
        loss_s = "-"
    elif r["drain"]["timed_out"]:
        loss_s = "backlog"
    else:
        loss_s = "0" if loss <= 0 else f"{loss:.4%}"
    marks = result_marks(r)
    return (f"  {r['server']:<10} {fmt_rate(r['deliveries_per_s']):>7} deliv/s"
            f"  p50 {ms(lat['p50']):>6} p99 {ms(lat['p99']):>6} max {ms(lat['max']):>6} ms"
            f"  loss {loss_s:<8}"
            f"  {'-' if r.get('bytes_per_delivery') is None else round(r['bytes_per_delivery'])} B/deliv"
            f"  CPU {'-' if cpu is None else f'{cpu:.3f}':>6} us/deliv"
            f" [+softirq {'-' if cpu_si is None else f'{cpu_si:.3f}':>6}]"
            f" ({r['server_cpu_pct']:3.0f}% core {_sys_share(r)},"
            f" {'-' if per_core is None else fmt_rate(per_core)}/core-s)"
            f"  gen CPU {r['generator_cpu_pct']:3.0f}%"
            + ("  " + " ".join(marks) if marks else ""))


async def run_server(case: Case, server: ServerProcess, subscribers: int, warmup: float, duration: float,
                     drain_timeout: float, print_fn) -> list[dict[str, Any]]:
    """Start ``server``, connect the subscribers and the publisher, run every step, stop."""
    results: list[dict[str, Any]] = []
    await asyncio.to_thread(server.start)
    lg: LoadGenerator | None = None
    pub: Publisher | None = None
    try:
        if isinstance(server, RelayServer):
            token = server.token()
            if server.name == "relay-pb":  # subscribers on the protobuf protocol, the publisher on JSON
                target = Target("relay-pb", "relay-pb", f"{server.ws_url}?format=protobuf", server.ws_url, token)
            else:
                target = Target("relay", "relay", server.ws_url, server.ws_url, token)
            print_fn(f"  [relay core={server.core()} pid={server.pid}]")
        else:
            assert isinstance(server, Peer)
            target = Target(server.name, server.protocol, server.ws_url, server.pub_url, channel=server.channel)
        lg = LoadGenerator(target, subscribers, case.workers)
        t0 = time.monotonic()
        n = await asyncio.to_thread(lg.connect)
        if n < subscribers:
            print_fn(f"  {server.name}: only {n}/{subscribers} subscribers connected: {lg.errors[:2]}")
        rss = server.rss_bytes()
        print_fn(f"  [{server.name}: {n} subscribers connected in {time.monotonic() - t0:.1f}s,"
                 f" server RSS {rss / 2**20:.0f} MiB]")
        pub = Publisher(target)
        await pub.connect()
        await asyncio.sleep(0.5)
        for step in case.steps:
            r = await run_step(case, step, server, lg, pub, warmup, duration, drain_timeout)
            results.append(r)
            print_fn(f"  step {fmt_rate(step.rate)} msg/s ({step.batch}/frame x {step.ticks:g}/s):")
            print_fn(format_line(r))
            if r["saturated"] or not r["server_alive"]:
                for later in case.steps[case.steps.index(step) + 1:]:
                    print_fn(f"  step {fmt_rate(later.rate)} msg/s: skipped for {server.name}"
                             f" (saturated at a lighter step)")
                    results.append({"case": case.key, "server": server.name, "peer": server.name,
                                    "msgs_per_s": later.rate, "batch": later.batch,
                                    "skipped": "saturated at a lighter step"})
                break
    finally:
        if pub is not None:
            pub.close()
        if lg is not None:
            await asyncio.to_thread(lg.close)
        server.cleanup()
    return results


def _known(name: str) -> bool:
    return name in ("relay", "relay-pb") or name in PEERS or (name.startswith("relay-wd") and name[8:].isdigit())


def make_server(name: str) -> ServerProcess:
    """``relay``, ``relay-wdN`` (relay with client_write_delay = N ms) or a peer (``common.PEERS``)."""
    if name in PEERS:
        return PEERS[name]()
    if name in ("relay", "relay-pb"):  # relay-pb: the same relay, its subscribers on the protobuf protocol
        return RelayServer(name=name)
    if name.startswith("relay-wd") and name[8:].isdigit():
        return RelayServer(name=name, extra_config={"client_write_delay": int(name[8:]) / 1000})
    raise SystemExit(f"unknown server {name!r}: use relay, relay-wd<ms> or one of {', '.join(PEERS)}")


def server_unavailable(name: str) -> str | None:
    """Why server ``name`` cannot run here (None: it can). Installs the Node peer's ws on first use."""
    return PEERS[name].unavailable() if name in PEERS else None


def server_version(name: str) -> str:
    return PEERS[name].version() if name in PEERS else "relay (this tree)"


def _ratios(results: list[dict[str, Any]], skipped: dict[str, str] | None = None) -> list[str]:
    """relay / peer CPU per delivery for each step both ran, for every peer; then the skipped peers."""
    out = []
    by = {(r["case"], r["msgs_per_s"], r["batch"], r["server"]): r for r in results if "skipped" not in r}
    peers = list(dict.fromkeys(r["server"] for r in results if not r["server"].startswith("relay")))
    key = "server_cpu_us_per_delivery"
    key_si = "server_cpu_incl_softirq_us_per_delivery"
    for (case, rate, batch, srv), r in by.items():
        if not srv.startswith("relay") or not r[key]:
            continue
        for peer in peers:
            p = by.get((case, rate, batch, peer))
            if p is None:
                why = next((x["skipped"] for x in results if x["server"] == peer and x["case"] == case
                            and x["msgs_per_s"] == rate and x["batch"] == batch and "skipped" in x), None)
                if why and peer not in (skipped or {}):  # e.g. the peer saturated at a lighter step
                    out.append(f"  ({case}) {fmt_rate(rate)} msg/s, {batch}/frame: {srv}/{peer}: -"
                               f" ({peer} skipped: {why})")
                continue
            if not p[key]:
                continue
            ratio = r[key] / p[key]
            si = (r[key_si] or 0) / (p[key_si] or 1)
            out.append(f"  ({case}) {fmt_rate(rate)} msg/s, {batch}/frame: {srv}/{peer} CPU per delivery"
                       f" = {ratio:.2f}x ({r[key]:.3f} vs {p[key]:.3f} us; incl. softirq {si:.2f}x)")
    for (case, rate, batch, srv), r in by.items():  # the protobuf protocol against JSON, same relay, same run
        j = by.get((case, rate, batch, "relay"))
        if srv != "relay-pb" or j is None or not r[key] or not j[key] or not r["bytes_per_delivery"] \
                or not j["bytes_per_delivery"]:
            continue
        out.append(f"  ({case}) {fmt_rate(rate)} msg/s, {batch}/frame: protobuf/JSON bytes per delivery"
                   f" = {r['bytes_per_delivery'] / j['bytes_per_delivery']:.2f}x ({r['bytes_per_delivery']:.0f} vs"
                   f" {j['bytes_per_delivery']:.0f} B), CPU per delivery = {r[key] / j[key]:.2f}x"
                   f" ({r[key]:.3f} vs {j[key]:.3f} us)")
    for name, why in (skipped or {}).items():
        out.append(f"  relay/{name}: no figures ({name} skipped: {why})")
    return out


async def amain(args: argparse.Namespace) -> int:
    pin_to(GENERATOR_CPU)
    raise_nofile()
    results: list[dict[str, Any]] = []
    lines: list[str] = []

    def print_fn(s: str) -> None:
        print(s, flush=True)
        lines.append(s)

    machine = machine_description()
    print_fn(f"machine: {machine['cpu_model']}, {machine['cpus']} CPUs, kernel {machine['kernel']}, "
             f"Python {machine['python']}, picows {machine['picows']}, uvloop {machine['uvloop']}, "
             f"relay {machine['relay']} core={machine['relay_core']}")
    skipped: dict[str, str] = {}
    versions: dict[str, str] = {}
    for name in args.servers:
        why = server_unavailable(name)
        if why:
            skipped[name] = why
            print_fn(f"{name}: SKIPPED ({why})")
        else:
            versions[name] = server_version(name)
    print_fn("servers: " + ", ".join(f"{n} [{versions[n]}]" if n in versions else f"{n} [SKIPPED]"
                                     for n in args.servers))
    print_fn(f"servers on CPU 0, generator on CPU {GENERATOR_CPU}; window {args.duration:g}s after "
             f"{args.warmup:g}s warm-up; {args.payload} B payloads")
    for key in args.cases:
        case = CASES[key]
        if args.subscribers:
            case = Case(case.key, case.title, args.subscribers if key != "b" else case.subscribers,
                        case.steps, case.workers)
        if args.quick:
            case = Case(case.key, case.title, max(10, case.subscribers // 10), case.steps[:2],
                        max(1, case.workers // 2))
        print_fn(f"({case.key}) {case.title}: {case.subscribers} subscribers, steps "
                 + ", ".join(f"{fmt_rate(s.rate)} msg/s" for s in case.steps))
        for name in args.servers:
            if name in skipped:
                print_fn(f"  {name}: skipped ({skipped[name]})")
                results += [{"case": case.key, "server": name, "peer": name, "msgs_per_s": st.rate,
                             "batch": st.batch, "skipped": skipped[name]} for st in case.steps]
                continue
            server: ServerProcess = make_server(name)
            results += await run_server(case, server, case.subscribers, args.warmup, args.duration,
                                        args.drain_timeout, print_fn)
    ratio_lines = _ratios(results, skipped)
    if ratio_lines:
        print_fn("ratios (same run):")
        for s in ratio_lines:
            print_fn(s)
    path = write_result("fanout", {"machine": machine, "args": vars(args), "server_versions": versions,
                                   "skipped_servers": skipped, "results": results,
                                   "cases": {k: asdict(v) for k, v in CASES.items()}, "printed": lines})
    print(f"results: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="relay vs picows, websockets, Node ws and nats-server fan-out benchmark",
                                 epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="abc", help="which cases to run, e.g. 'ac' or 'd' (default: abc)")
    ap.add_argument("--servers", default=",".join(DEFAULT_SERVERS),
                    help="comma-separated: relay, relay-pb (subscribers on the protobuf protocol), relay-wd<ms> "
                         "(client_write_delay in ms), "
                         + ", ".join(PEERS) + f" (default: {','.join(DEFAULT_SERVERS)})")
    ap.add_argument("--duration", type=float, default=None, help="measured window in seconds (default 10)")
    ap.add_argument("--warmup", type=float, default=None, help="seconds before the window (default 2)")
    ap.add_argument("--drain-timeout", type=float, default=15.0, help="seconds to wait for the backlog")
    ap.add_argument("--subscribers", type=int, default=None,
                    help="subscribers for cases a and c (b keeps 10,000)")
    ap.add_argument("--payload", type=int, default=100, help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="small, short run (smoke test)")
    args = ap.parse_args(argv)
    args.cases = [c for c in args.cases if c in CASES]
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for name in args.servers:
        if not _known(name):
            make_server(name)  # exits with the list of known names
    apply_run_defaults(args, 10.0)
    import uvloop

    return uvloop.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())

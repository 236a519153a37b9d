"""Latency against offered load, until saturation: relay and the peers, same generator, same run.

For each server (``--servers``, names as in fanout.py's ``make_server``: relay, picows,
websockets, node-ws, nats, relay-wd<ms>), started fresh on CPU 0: 1,000 subscribers
(``--subscribers``) on one channel, one publisher, ONE message per publisher frame (``--batch``
N: N, a hot channel), and the
offered rate rising step by step (``--start-rate`` 20 msg/s, x``--factor`` 1.5 per step) on
the same connections until the server saturates. A step counts as saturated when

* p99 latency > 200 ms (``--p99-limit``), or
* loss > 0 (including a backlog still draining at the drain timeout), or
* deliveries/s < 90 % of the offered deliveries/s (msg/s x subscribers), or
* fanout.py's own test fires (latency growing through the window, median over 1 s),
  or the server closed connections or died.

The ramp also ends when the generator is the limit (GENERATOR-LIMITED: then the server's
saturation is not known, only a lower bound), at ``--max-rate`` or after ``--max-steps``.

Then, on a FRESH server and fresh subscribers, one more step at 80 % of the server's own
saturation rate (the highest deliveries/s it reached up to and including the saturated
step; when saturation was not reached, 80 % of the highest rate run, and the summary says
so): the p99 there is the "latency at 80 % load" figure for capacity planning.

Each step is fanout.py's ``run_step`` (same publisher, subscribers, counting, CPU
accounting, drain and marks); p90 and p99.9 are added from the step's merged histogram.
Prints one line per server and step and a summary; writes
bench/results/latency-<timestamp>.json with the machine description.
Run: ``.venv/bin/python bench/latency.py`` (``--quick`` for a smoke test).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import fanout  # noqa: E402
from common import (FANOUT_CHANNEL, GENERATOR_CPU, RelayServer, ServerProcess, fmt_rate,  # noqa: E402
                    machine_description, pin_to, quick_defaults, raise_nofile, write_result)
from fanout import Case, Step, make_server, result_marks, run_step  # noqa: E402
from loadgen import LoadGenerator, Publisher, Target, Window  # noqa: E402
from scenarios_common import Printer, banner, fmt_ms  # noqa: E402

__all__ = ["ramp", "run_at", "saturation_of", "summary_entry", "format_line", "target_for", "main"]

P99_LIMIT_MS = 200.0     #: a step whose p99 is over this is saturated
DELIVERED_SHARE = 0.9    #: ... or whose deliveries/s are under this share of the offered deliveries/s
AT_LOAD = 0.8            #: the extra step runs at this share of the saturation rate


class _LoadGenerator(LoadGenerator):
    """loadgen's LoadGenerator keeping the last merged window, for p90/p99.9 (run_step reports p50/p99/max)."""

    last: Window | None = None

    def report(self) -> Window:
        self.last = w = super().report()
        return w


def target_for(server: ServerProcess) -> Target:
    """The load generator target of ``server`` (relay: Centrifugo protocol; a peer: its ``protocol``)."""
    if isinstance(server, RelayServer):
        return Target(server.name, "relay", server.ws_url, server.ws_url, server.token())
    return Target(server.name, getattr(server, "protocol", "raw"), server.ws_url,  # type: ignore[attr-defined]
                  server.pub_url, channel=getattr(server, "channel", FANOUT_CHANNEL))  # type: ignore[attr-defined]


def unavailable(name: str) -> str | None:
    """Why ``name`` cannot be benchmarked here: unknown to make_server, or the peer says so."""
    try:
        probe = make_server(name)
    except SystemExit as e:
        return f"unknown to fanout.make_server: {e}"
    probe.cleanup()
    check = getattr(fanout, "server_unavailable", None)
    if check is not None:
        return check(name)
    return None


def _augment(r: dict[str, Any], lg: _LoadGenerator, phase: str, args: argparse.Namespace) -> dict[str, Any]:
    """Add p90/p99.9, the offered deliveries/s and this benchmark's saturation reasons to a run_step row."""
    w = lg.last
    if w is not None:
        for key, q in (("p90", 90), ("p99_9", 99.9)):
            v = w.hist.percentile_ms(q)
            r["latency_ms"][key] = None if v is None else round(v, 3)
        r["latency_samples"] = w.hist.count
    r["phase"] = phase
    offered = r["msgs_per_s"] * r["subscribers"]
    r["offered_deliveries_per_s"] = offered
    reasons = []
    p99 = r["latency_ms"]["p99"]
    if p99 is not None and p99 > args.p99_limit:
        reasons.append(f"p99 {p99:.0f} ms > {args.p99_limit:g} ms")
    if r["loss"] is not None and r["loss"] > 0:
        reasons.append("backlog at the drain timeout" if r["drain"]["timed_out"] else f"loss {r['loss']:.4%}")
    if offered and r["deliveries_per_s"] < DELIVERED_SHARE * offered:
        reasons.append(f"deliveries/s {fmt_rate(r['deliveries_per_s'])} < {DELIVERED_SHARE:.0%} of offered"
                       f" {fmt_rate(offered)}")
    if r["saturated"]:
        reasons.append("latency growing / median over 1 s (fanout's test)")
    if r["lost_connections"]:
        reasons.append(f"server closed {r['lost_connections']} connections {r['close_codes']}")
    if not r["server_alive"]:
        reasons.append("server died")
    r["saturation_reasons"] = reasons
    r["at_saturation"] = bool(reasons)
    return r


def format_line(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    cpu = r["server_cpu_us_per_delivery"]
    loss = r["loss"]
    loss_s = ("-" if loss is None else "backlog" if r["drain"]["timed_out"]
              else "0" if loss <= 0 else f"{loss:.3%}")
    marks = [m for m in result_marks(r) if m != "SATURATED"]
    if r["at_saturation"]:
        marks.insert(0, "SATURATED(" + "; ".join(r["saturation_reasons"]) + ")")
    return (f"  {r['server']:<10} {fmt_rate(r['msgs_per_s']):>5} msg/s {fmt_rate(r['deliveries_per_s']):>6} deliv/s"
            f"  p50 {fmt_ms(lat['p50']):>5} p99 {fmt_ms(lat['p99']):>5} p99.9 {fmt_ms(lat.get('p99_9')):>5}"
            f" max {fmt_ms(lat['max']):>5} ms  loss {loss_s:<7}"
            f"  CPU {'-' if cpu is None else f'{cpu:.3f}':>6} us/deliv ({r['server_cpu_pct']:3.0f}% core)"
            f"  gen CPU {r['generator_cpu_pct']:3.0f}%" + ("  " + " ".join(marks) if marks else ""))


class _Session:
    """One server started fresh, its subscribers and its publisher."""

    def __init__(self, name: str, subscribers: int, workers: int) -> None:
        self.name, self.subscribers, self.workers = name, subscribers, workers
        self.server: ServerProcess | None = None
        self.lg: _LoadGenerator | None = None
        self.pub: Publisher | None = None

    async def __aenter__(self) -> _Session:
        self.server = make_server(self.name)
        await asyncio.to_thread(self.server.start)
        target = target_for(self.server)
        self.lg = _LoadGenerator(target, self.subscribers, self.workers)
        n = await asyncio.to_thread(self.lg.connect)
        if n < self.subscribers:
            raise RuntimeError(f"{self.name}: only {n}/{self.subscribers} subscribers connected: {self.lg.errors[:2]}")
        self.pub = Publisher(target)
        await self.pub.connect()
        await asyncio.sleep(0.5)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.pub is not None:
            self.pub.close()
        if self.lg is not None:
            await asyncio.to_thread(self.lg.close)
        if self.server is not None:
            if not self.server.alive():
                print(f"  {self.name} log tail:\n{self.server.log()[-2000:]}", flush=True)
            self.server.cleanup()

    async def step(self, rate: float, phase: str, args: argparse.Namespace) -> dict[str, Any]:
        assert self.server is not None and self.lg is not None and self.pub is not None
        step = Step(rate / args.batch, args.batch)
        case = Case("latency", "latency against offered load", self.subscribers, (step,), self.workers)
        r = await run_step(case, step, self.server, self.lg, self.pub, args.warmup, args.duration,
                           args.drain_timeout)
        return _augment(r, self.lg, phase, args)


async def ramp(name: str, args: argparse.Namespace, out: Printer) -> list[dict[str, Any]]:
    """Rising steps on one fresh server until saturation (or the generator's or the run's limit)."""
    rows: list[dict[str, Any]] = []
    async with _Session(name, args.subscribers, args.workers) as s:
        if isinstance(s.server, RelayServer):
            out(f"  [relay core={s.server.core()} pid={s.server.pid}, {args.subscribers} subscribers]")
        else:
            out(f"  [{name} pid={s.server.pid if s.server else '?'}, {args.subscribers} subscribers]")
        rate = args.start_rate
        for i in range(args.max_steps):
            r = await s.step(round(rate, 2), "ramp", args)
            rows.append(r)
            out(format_line(r))
            if r["at_saturation"]:
                r["ramp_end"] = "saturated"
                break
            if r["generator_limited"]:
                r["ramp_end"] = "generator-limited"
                out(f"  {name}: ramp stopped, the generator is the limit (server saturation not reached)")
                break
            nxt = rate * args.factor
            if nxt > args.max_rate or i == args.max_steps - 1:
                r["ramp_end"] = "max-rate" if nxt > args.max_rate else "max-steps"
                out(f"  {name}: ramp stopped at the run's limit ({r['ramp_end']}) before saturation")
                break
            rate = nxt
    return rows


async def run_at(name: str, rate: float, args: argparse.Namespace) -> dict[str, Any]:
    """One step at ``rate`` msg/s on a fresh server."""
    async with _Session(name, args.subscribers, args.workers) as s:
        return await s.step(round(rate, 2), "at_80pct", args)


def saturation_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The saturation figures of one server's ramp."""
    last = rows[-1]
    end = last.get("ramp_end", "saturated" if last["at_saturation"] else "max-steps")
    best_deliv = max(r["deliveries_per_s"] for r in rows)
    clean = [r for r in rows if not r["at_saturation"] and not r["generator_limited"]]
    return {
        "saturation_reached": end == "saturated",
        # "server": the server saturated; "generator-limited": the generator ran out first (a lower bound);
        # "max-rate"/"max-steps": the run ended first (a lower bound)
        "ramp_end": end,
        "saturation_reasons": last["saturation_reasons"],
        "saturation_step_msgs_per_s": last["msgs_per_s"] if end == "saturated" else None,
        # highest deliveries/s reached up to and including the saturated step (a lower bound if not saturated)
        "saturation_deliveries_per_s": round(best_deliv, 1),
        "saturation_generator_limited": bool(last["generator_limited"]),
        "highest_clean_msgs_per_s": clean[-1]["msgs_per_s"] if clean else None,
        "highest_clean_deliveries_per_s": round(clean[-1]["deliveries_per_s"], 1) if clean else None,
        "highest_clean_p99_ms": clean[-1]["latency_ms"]["p99"] if clean else None,
        "highest_clean_server_cpu_us_per_delivery": clean[-1]["server_cpu_us_per_delivery"] if clean else None,
    }


def summary_entry(name: str, rows: list[dict[str, Any]], at80: dict[str, Any] | None) -> dict[str, Any]:
    s = {"server": name, **saturation_of(rows)}
    if at80 is not None:
        lat = at80["latency_ms"]
        s["at_80pct"] = {
            "msgs_per_s": at80["msgs_per_s"], "offered_deliveries_per_s": at80["offered_deliveries_per_s"],
            "deliveries_per_s": round(at80["deliveries_per_s"], 1), "p50_ms": lat["p50"], "p90_ms": lat.get("p90"),
            "p99_ms": lat["p99"], "p99_9_ms": lat.get("p99_9"), "max_ms": lat["max"], "loss": at80["loss"],
            "server_cpu_us_per_delivery": at80["server_cpu_us_per_delivery"],
            "server_cpu_incl_softirq_us_per_delivery": at80["server_cpu_incl_softirq_us_per_delivery"],
            "generator_limited": at80["generator_limited"], "at_saturation": at80["at_saturation"],
            "saturation_reasons": at80["saturation_reasons"],
        }
    else:
        s["at_80pct"] = None
    return s


def summary_line(s: dict[str, Any]) -> str:
    if s["saturation_reached"]:
        sat = (f"saturates at {fmt_rate(s['saturation_deliveries_per_s'])} deliv/s"
               f" (step {fmt_rate(s['saturation_step_msgs_per_s'])} msg/s: {'; '.join(s['saturation_reasons'])})"
               + (" GENERATOR-LIMITED" if s["saturation_generator_limited"] else ""))
    else:
        sat = (f"saturation NOT reached ({s['ramp_end']}): >= {fmt_rate(s['saturation_deliveries_per_s'])} deliv/s")
    a = s["at_80pct"]
    if a is None:
        at = "no 80 % step"
    else:
        at = (f"at {fmt_rate(a['deliveries_per_s'])} deliv/s ({fmt_rate(a['msgs_per_s'])} msg/s, 80 %"
              f"{'' if s['saturation_reached'] else ' of the highest rate run'}): p50 {fmt_ms(a['p50_ms'])}"
              f" p99 {fmt_ms(a['p99_ms'])} p99.9 {fmt_ms(a['p99_9_ms'])} ms,"
              f" {a['server_cpu_us_per_delivery'] or 0:.3f} us/deliv"
              + (" GENERATOR-LIMITED" if a["generator_limited"] else "")
              + (" (itself saturated: " + "; ".join(a["saturation_reasons"]) + ")" if a["at_saturation"] else ""))
    return f"  {s['server']:<10} {sat}; {at}"


async def amain(args: argparse.Namespace) -> int:
    pin_to(GENERATOR_CPU)
    raise_nofile()
    out = Printer()
    machine = machine_description()
    out(banner(machine))
    out(f"latency vs offered load: {args.subscribers} subscribers on one channel, {args.batch} message(s) per"
        f" publisher frame,"
        f" from {args.start_rate:g} msg/s x{args.factor:g} per step (max {args.max_steps} steps, {args.max_rate:g}"
        f" msg/s); saturated at p99 > {args.p99_limit:g} ms, loss > 0 or deliveries < {DELIVERED_SHARE:.0%} of"
        f" offered; then one step at {AT_LOAD:.0%} of saturation on a fresh server; window {args.duration:g}s"
        f" after {args.warmup:g}s warm-up; servers on CPU 0"
        + (f" capped at {args.cpu_quota:g} of it (cgroup quota, {common.CpuQuota.PERIOD_US} us period)"
           if args.cpu_quota else "")
        + f", generator on CPU {GENERATOR_CPU}")
    results: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    versions: dict[str, str] = {}
    version_of = getattr(fanout, "server_version", None)
    for name in args.servers:
        why = unavailable(name)
        if why:
            skipped[name] = why
            out(f"{name}: SKIPPED ({why})")
            continue
        if version_of is not None:
            versions[name] = version_of(name)
        out(f"({name})" + (f" [{versions[name]}]" if name in versions else ""))
        try:
            rows = await ramp(name, args, out)
        except RuntimeError as e:
            skipped[name] = f"failed: {e}"
            out(f"  {name}: FAILED ({e})")
            continue
        results += rows
        sat = saturation_of(rows)
        rate = AT_LOAD * sat["saturation_deliveries_per_s"] / args.subscribers
        at80 = None
        if rate > 0:
            out(f"  {name}: {AT_LOAD:.0%} step at {fmt_rate(rate)} msg/s on a fresh server")
            at80 = await run_at(name, rate, args)
            results.append(at80)
            out(format_line(at80))
        summaries.append(summary_entry(name, rows, at80))
    out("summary (same run; saturation = highest deliveries/s reached up to the saturated step):")
    for s in summaries:
        out(summary_line(s))
    for name, why in skipped.items():
        out(f"  {name:<10} skipped: {why}")
    path = write_result("latency-quota" if args.cpu_quota else "latency", {
        "machine": machine, "args": vars(args), "scenario": "latency", "server_versions": versions,
        "skipped_servers": skipped,
        "definitions": {
            "saturated_step": f"p99 > {args.p99_limit:g} ms, loss > 0 (or backlog), deliveries/s <"
                              f" {DELIVERED_SHARE:.0%} of msgs/s x subscribers, fanout's growth test,"
                              " disconnects or a dead server",
            "cpu_quota": "args.cpu_quota: every server capped at that share of one core by a cgroup"
                         " (null: a whole core)",
            "saturation_deliveries_per_s": "highest deliveries/s reached up to and including the saturated step",
            "at_80pct": f"one step on a fresh server at {AT_LOAD:.0%} of saturation_deliveries_per_s",
            "results": "fanout.run_step rows plus latency_ms.p90/p99_9, offered_deliveries_per_s,"
                       " saturation_reasons, at_saturation, phase (ramp | at_80pct)",
        },
        "results": results, "summary": summaries, "printed": out.lines})
    print(f"results: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    default_servers = ",".join(getattr(fanout, "DEFAULT_SERVERS", ("relay", "picows")))
    ap = argparse.ArgumentParser(description="latency against offered load until saturation, relay and peers",
                                 epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default=None,
                    help=f"comma-separated names for fanout.make_server (default: {default_servers};"
                         " relay,picows with --quick)")
    ap.add_argument("--subscribers", type=int, default=None, help="subscribers on the channel (default 1,000)")
    ap.add_argument("--workers", type=int, default=2, help="subscriber processes of the load generator")
    ap.add_argument("--start-rate", type=float, default=None, help="first step, msg/s (default 20)")
    ap.add_argument("--batch", type=int, default=1,
                    help="messages per publisher frame (default 1; e.g. 50 for a hot channel, where servers "
                         "that coalesce saturate before the generator does)")
    ap.add_argument("--factor", type=float, default=None, help="rate multiplier per step (default 1.5)")
    ap.add_argument("--max-steps", type=int, default=None, help="most ramp steps per server (default 16)")
    ap.add_argument("--max-rate", type=float, default=5000.0, help="highest msg/s the ramp may offer")
    ap.add_argument("--p99-limit", type=float, default=P99_LIMIT_MS, help="p99 (ms) over which a step is saturated")
    ap.add_argument("--duration", type=float, default=None, help="measured window in seconds (default 6)")
    ap.add_argument("--warmup", type=float, default=None, help="seconds before the window (default 2)")
    ap.add_argument("--drain-timeout", type=float, default=None, help="seconds to wait for the backlog (default 15)")
    ap.add_argument("--cpu-quota", type=float, default=None,
                    help="run every server in a cgroup capped at this share of one core (e.g. 0.4), so that"
                         " the one generator core can saturate it: deliveries/s at saturation then compare"
                         " servers given the same CPU (needs a writable cgroup cpu controller)")
    ap.add_argument("--quick", action="store_true",
                    help="relay and picows, 200 subscribers, 3 steps from 50 msg/s x2, short windows (smoke test)")
    args = ap.parse_args(argv)
    q = args.quick
    args.servers = [s.strip() for s in (args.servers or ("relay,picows" if q else default_servers)).split(",")
                    if s.strip()]
    quick_defaults(args, ("subscribers", 1000, 200), ("start_rate", 20.0, 50.0), ("factor", 1.5, 2.0),
                   ("max_steps", 16, 3), ("duration", 6.0, 1.5), ("warmup", 2.0, 0.5), ("drain_timeout", 15.0, 5.0))
    if args.factor <= 1.0:
        raise SystemExit("--factor must be > 1")
    if args.cpu_quota is not None:
        why = common.CpuQuota.unavailable()
        if why or not 0 < args.cpu_quota <= 1:
            raise SystemExit(f"--cpu-quota: {why or 'a share of one core in (0, 1]'}")
        common.SERVER_CPU_QUOTA = args.cpu_quota
    import uvloop

    return uvloop.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())

"""Connection rate: how many new WebSocket connections per second one server core sustains.

For each server (relay, then the picows peer), started fresh on CPU 0, and each offered
rate R (default 200, 500, 1k, 2k, 3k, 5k, 8k connections/s): the generator (``--workers``
processes on CPU 1, uvloop and a minimal hand-written WebSocket client: fixed upgrade
request, connect frame built before the step) starts a new connection every 1/R s for
``warmup + duration`` seconds and keeps every one open; then all are closed (with RST:
SO_LINGER 0, so no TIME_WAIT piles up between steps) and the server settles before the
next step. The ramp stops after the first step with a failure, p99 over 1 s, accepted/s
under 90 % of offered, or a generator over 90 % of its core.

What a "connection" is:

* **relay**: TCP connect + WebSocket handshake + a Centrifugo ``connect`` command with a
  JWT (HS256, a different token and user for every connection, made before the step),
  until relay's connect reply arrives. relay verifies the token, registers the client and
  answers with its client id.
* **picows** (the naive peer): TCP connect + WebSocket handshake only. It does LESS work per
  connection than relay (no JWT verification, no connect command, no reply), so its
  figures are a floor for "accept a WebSocket", not a like-for-like peer.

Figures per step (attempts scheduled inside the measured window count):

* **accepted/s**: connections whose connect completed inside the window / window;
* **failures** by kind (timeout, refused, reset, handshake:<...>, connect_error_<code>, ...);
* **connect time** p50/p99/p99.9/max: from the start of the TCP connect to the connect
  reply (relay) or the end of the handshake (picows);
* **server CPU per connection**: server utime+stime over the window / connections completed
  in it (and with CPU 0's softirq: on loopback the TCP handshake's receive work lands there);
* RSS growth per open connection; generator CPU (GENERATOR-LIMITED at >= 90 %).

The number of connections open at once is capped (``--max-open``, default 15,000, under the
20,000 open-file limit of this machine): at high rates the step gets shorter (printed).

Prints one line per server and step and a summary; writes bench/results/connrate-<timestamp>.json.
Run: ``.venv/bin/python bench/connrate.py`` (``--quick`` for a smoke test).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (GENERATOR_CPU, PicowsPeer, RelayServer, ServerProcess, fmt_rate,  # noqa: E402
                    machine_description, pin_to, raise_nofile, write_result)
from connrate_workers import worker_main  # noqa: E402
from histogram import Histogram  # noqa: E402
from scenarios_common import (CpuWindow, Printer, WorkerPool, banner, fmt_ms, noisy_mark, per_unit,  # noqa: E402
                              percentiles, sleep_until_ns)

__all__ = ["DEFAULT_STEPS", "run_step", "run_server", "format_line", "summary", "main"]

DEFAULT_STEPS = (200, 500, 1000, 2000, 3000, 5000, 8000)
P99_LIMIT_MS = 1000.0   #: the ramp stops at a step whose connect-time p99 is over this
ACCEPT_SHARE = 0.9      #: ... or whose accepted/s is under this share of the offered rate


# ------------------------------------------------------------------------------------------------
# coordinator
# ------------------------------------------------------------------------------------------------

def _kind(server: ServerProcess) -> str:
    return "relay" if isinstance(server, RelayServer) else "raw"


async def run_step(rate: float, server: ServerProcess, pool: WorkerPool, warmup: float, duration: float,
                   timeout: float) -> dict[str, Any]:
    """Open connections at ``rate``/s for warmup + duration, wait for every attempt, return the figures."""
    workers = len(pool.pipes)
    per_worker = rate / workers
    await asyncio.to_thread(pool.all, "prepare", int(per_worker * (warmup + duration)) + 16, timeout=300)
    rss_before = server.rss_bytes()
    start_ns = time.time_ns() + 300_000_000
    ws = start_ns + int(warmup * 1e9)
    we = ws + int(duration * 1e9)
    interval = 1e9 / per_worker
    # the workers' schedules are interleaved: worker i starts i/workers of an interval later
    await asyncio.to_thread(pool.each, [("step", per_worker, start_ns + int(i * interval / workers), ws, we,
                                         timeout) for i in range(workers)])
    cpu = CpuWindow(server.cpu_times, lambda: pool.pids)
    await sleep_until_ns(ws)
    cpu.mark("start")
    await sleep_until_ns(we)
    cpu.mark("end")
    deadline = time.monotonic() + timeout + 5
    while time.monotonic() < deadline:  # every attempt has its own timeout: wait for them all
        counts = await asyncio.to_thread(pool.all, "count")
        if all(c[3] for c in counts):
            break
        await asyncio.sleep(0.1)
    rss_after = server.rss_bytes()
    reports = [r[1] for r in await asyncio.to_thread(pool.all, "report")]
    hist = Histogram()
    failures: dict[str, int] = {}
    for r in reports:
        hist.merge_sparse(r["hist"])
        for k, n in r["failures"].items():
            failures[k] = failures.get(k, 0) + n

    def total(key: str) -> int:
        return sum(r[key] for r in reports)

    figures = cpu.figures()
    attempts, ok, completed = total("attempts_in_window"), total("ok_in_window"), total("completed_in_window")
    failed = sum(failures.values())
    open_now = total("open")
    lat = percentiles(hist)
    res: dict[str, Any] = {
        "server": server.name, "offered_per_s": rate, "warmup_s": round(warmup, 3), "duration_s": round(duration, 3),
        "connect_timeout_s": timeout,
        "attempts": total("attempts"), "attempts_in_window": attempts,
        "started_per_s": round(attempts / duration, 1), "accepted_in_window": ok, "failed_in_window": failed,
        "failures": failures, "failure_sample": next((r["failure_sample"] for r in reports if r["failure_sample"]), ""),
        "completed_in_window": completed, "accepted_per_s": round(completed / duration, 1),
        "connect_ms": lat, "generator_max_start_late_ms": round(max(r["max_late_ns"] for r in reports) / 1e6, 2),
        "open_connections": open_now,
        "server_rss_before_bytes": rss_before, "server_rss_after_bytes": rss_after,
        "server_rss_per_open_connection_kib":
            round((rss_after - rss_before) / open_now / 1024, 2) if open_now else None,
        **figures,
        **per_unit(figures, completed, "connection", "connections"),
        "server_alive": server.alive(),
    }
    res["under_offered"] = res["started_per_s"] < 0.95 * rate
    res["p99_over_limit"] = lat["p99"] is not None and lat["p99"] > P99_LIMIT_MS
    res["accepted_short"] = res["accepted_per_s"] < ACCEPT_SHARE * rate
    res["stop"] = bool(failed or res["p99_over_limit"] or res["accepted_short"] or res["generator_limited"]
                       or not res["server_alive"])
    res["marks"] = marks(res)
    return res


def marks(r: dict[str, Any]) -> list[str]:
    out = []
    if r["generator_limited"]:
        out.append("GENERATOR-LIMITED")
    if r["under_offered"]:
        out.append(f"UNDER-OFFERED(started {fmt_rate(r['started_per_s'])}/s)")
    if r["failed_in_window"]:
        out.append("FAILURES=" + ",".join(f"{k}:{n}" for k, n in sorted(r["failures"].items())))
    if r["p99_over_limit"]:
        out.append(f"p99>{P99_LIMIT_MS:g}ms")
    if r["accepted_short"]:
        out.append(f"ACCEPTED<{ACCEPT_SHARE:.0%}")
    if not r["server_alive"]:
        out.append("SERVER-DIED")
    if r["noisy"]:
        out.append(noisy_mark(r))
    return out


def format_line(r: dict[str, Any]) -> str:
    c = r["connect_ms"]
    cpu = r["server_cpu_us_per_connection"]
    cpu_si = r["server_cpu_incl_softirq_us_per_connection"]
    return (f"  {r['server']:<7} {fmt_rate(r['offered_per_s']):>5}/s offered: {fmt_rate(r['accepted_per_s']):>5}"
            f" accepted/s  fail {r['failed_in_window']:<4} connect p50 {fmt_ms(c['p50']):>5} p99 {fmt_ms(c['p99']):>5}"
            f" p99.9 {fmt_ms(c['p99_9']):>5} max {fmt_ms(c['max']):>5} ms"
            f"  CPU {'-' if cpu is None else f'{cpu:.1f}':>6} us/conn"
            f" [+softirq {'-' if cpu_si is None else f'{cpu_si:.1f}'}] ({r['server_cpu_pct']:3.0f}% core)"
            f"  {r['open_connections']} open"
            f"  gen CPU {r['generator_cpu_pct']:3.0f}%"
            + ("  " + " ".join(r["marks"]) if r["marks"] else ""))


async def run_server(name: str, args: argparse.Namespace, out: Printer) -> list[dict[str, Any]]:
    server: ServerProcess = RelayServer() if name == "relay" else PicowsPeer()
    results: list[dict[str, Any]] = []
    await asyncio.to_thread(server.start)
    pool: WorkerPool | None = None
    try:
        url = server.ws_url  # type: ignore[attr-defined]
        if isinstance(server, RelayServer):
            out(f"  [relay core={server.core()} pid={server.pid}: TCP + WebSocket handshake + connect with a JWT]")
        else:
            out(f"  [{server.name} pid={server.pid}: TCP + WebSocket handshake only (less work than relay:"
                f" no JWT, no connect command)]")
        pool = WorkerPool(worker_main, [(url, _kind(server), i) for i in range(args.workers)])
        await asyncio.to_thread(pool.recv_all, 60)
        for i, rate in enumerate(args.steps):
            span = args.warmup + args.duration
            scale = min(1.0, args.max_open / (rate * span))
            warmup, duration = args.warmup * scale, args.duration * scale
            r = await run_step(rate, server, pool, warmup, duration, args.connect_timeout)
            results.append(r)
            out(format_line(r) + (f"  (step shortened to {warmup + duration:.1f}s: --max-open {args.max_open})"
                                  if scale < 1 else ""))
            closed = await asyncio.to_thread(pool.all, "close", timeout=60)
            await asyncio.sleep(args.settle)
            r["closed"] = sum(c[1] for c in closed)
            if r["stop"]:
                for later in args.steps[i + 1:]:
                    results.append({"server": server.name, "offered_per_s": later, "skipped": "ramp stopped"})
                if args.steps[i + 1:]:
                    out(f"  {server.name}: ramp stopped ({' '.join(r['marks']) or 'limit reached'})")
                break
    finally:
        if pool is not None:
            await asyncio.to_thread(pool.close)
        if not server.alive():
            out(f"  {server.name} log tail:\n{server.log()[-2000:]}")
        server.cleanup()
    return results


def _clean(r: dict[str, Any]) -> bool:
    return not r["stop"] and not r["under_offered"]


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per server: highest clean rate, its connect times and CPU per connection; ratios relay / picows."""
    out: dict[str, Any] = {"servers": {}, "ratios": []}
    rows = [r for r in results if "skipped" not in r]
    for name in dict.fromkeys(r["server"] for r in rows):
        srows = [r for r in rows if r["server"] == name]
        clean = [r for r in srows if _clean(r)]
        best = clean[-1] if clean else None
        stop = next((r for r in srows if r["stop"]), None)
        cpus = [r["server_cpu_us_per_connection"] for r in clean if r["server_cpu_us_per_connection"]]
        out["servers"][name] = {
            "highest_clean_offered_per_s": best["offered_per_s"] if best else None,
            "highest_clean_accepted_per_s": best["accepted_per_s"] if best else None,
            "connect_p50_ms": best["connect_ms"]["p50"] if best else None,
            "connect_p99_ms": best["connect_ms"]["p99"] if best else None,
            "server_cpu_us_per_connection": best["server_cpu_us_per_connection"] if best else None,
            "server_cpu_incl_softirq_us_per_connection":
                best["server_cpu_incl_softirq_us_per_connection"] if best else None,
            "server_cpu_us_per_connection_range": [min(cpus), max(cpus)] if cpus else None,
            # one server core fully busy with new connections, from CPU per connection at the best step
            "connections_per_server_core_s": round(1e6 / best["server_cpu_us_per_connection"], 1)
            if best and best["server_cpu_us_per_connection"] else None,
            "stopped_at_offered_per_s": stop["offered_per_s"] if stop else None,
            "stopped_accepted_per_s": stop["accepted_per_s"] if stop else None,
            "stop_reason": " ".join(m for m in stop["marks"] if not m.startswith("NOISY")) if stop else
            "not reached within the steps run",
            "generator_limited": any(r["generator_limited"] for r in srows),
        }
    by = {(r["server"], r["offered_per_s"]): r for r in rows}
    for (srv, rate), r in by.items():
        p = by.get(("picows", rate))
        if srv == "relay" and p and r["server_cpu_us_per_connection"] and p["server_cpu_us_per_connection"]:
            out["ratios"].append({"offered_per_s": rate, "relay_over_picows_cpu_per_connection":
                                  round(r["server_cpu_us_per_connection"] / p["server_cpu_us_per_connection"], 2)})
    return out


def summary_lines(s: dict[str, Any]) -> list[str]:
    lines = []
    for name, v in s["servers"].items():
        if v["highest_clean_accepted_per_s"] is not None:
            line = (f"  {name:<7} highest clean step {fmt_rate(v['highest_clean_offered_per_s'])}/s:"
                    f" {fmt_rate(v['highest_clean_accepted_per_s'])} accepted/s, connect p50"
                    f" {fmt_ms(v['connect_p50_ms'])} p99 {fmt_ms(v['connect_p99_ms'])} ms,"
                    f" {v['server_cpu_us_per_connection'] or 0:.1f} us server CPU per connection"
                    f" (~{fmt_rate(v['connections_per_server_core_s'] or 0)} connections per server core-second)")
        else:
            line = f"  {name:<7} no clean step"
        if v["stopped_at_offered_per_s"] is not None:
            line += (f"; stopped at {fmt_rate(v['stopped_at_offered_per_s'])}/s offered"
                     f" ({fmt_rate(v['stopped_accepted_per_s'])} accepted/s): {v['stop_reason']}")
        else:
            line += "; no limit reached within the steps run"
        lines.append(line)
    for r in s["ratios"]:
        lines.append(f"  {fmt_rate(r['offered_per_s'])}/s: relay / picows server CPU per connection ="
                     f" {r['relay_over_picows_cpu_per_connection']:.2f}x (picows does less: handshake only)")
    return lines


async def amain(args: argparse.Namespace) -> int:
    pin_to(GENERATOR_CPU)
    raise_nofile()
    out = Printer()
    machine = machine_description()
    out(banner(machine))
    out(f"connection rate: servers on CPU 0, {args.workers} generator processes on CPU {GENERATOR_CPU};"
        f" each step opens connections for {args.warmup:g}s + {args.duration:g}s (measured), keeps them open,"
        f" then closes them (RST); connect timeout {args.connect_timeout:g}s; steps "
        + ", ".join(f"{fmt_rate(s)}/s" for s in args.steps))
    results: list[dict[str, Any]] = []
    for name in args.servers:
        results += await run_server(name, args, out)
    s = summary(results)
    out("summary (same run; picows does less per connection: no JWT, no connect command):")
    for line in summary_lines(s):
        out(line)
    path = write_result("connrate", {
        "machine": machine, "args": vars(args), "scenario": "connrate",
        "definitions": {
            "connection": {"relay": "TCP connect + WebSocket handshake + connect command with a JWT, until the"
                                    " connect reply", "picows": "TCP connect + WebSocket handshake only"},
            "accepted_per_s": "connections whose connect completed inside the window / window",
            "connect_ms": "TCP connect start -> connect reply (relay) / handshake done (picows),"
                          " attempts scheduled in the window",
            "server_cpu_us_per_connection": "server utime+stime over the window / connections completed in it",
            "server_rss_per_open_connection_kib": "server RSS growth over the step / connections open at its end;"
                                                  " only the first step's is a per-connection cost (later steps"
                                                  " reuse memory the previous one freed; idle.py measures this)",
        },
        "results": results, "summary": s, "printed": out.lines})
    print(f"results: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="WebSocket connection rate on one server core: relay vs picows peer",
                                 epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default="relay,picows", help="comma-separated: relay, picows")
    ap.add_argument("--steps", default=None, help="offered connections/s, comma-separated"
                    " (default " + ",".join(map(str, DEFAULT_STEPS)) + ")")
    ap.add_argument("--duration", type=float, default=None, help="measured seconds per step (default 3)")
    ap.add_argument("--warmup", type=float, default=None, help="seconds of opening before the window (default 1)")
    ap.add_argument("--workers", type=int, default=2, help="generator processes (CPU 1)")
    ap.add_argument("--connect-timeout", type=float, default=None, help="per connection, seconds (default 10)")
    ap.add_argument("--max-open", type=int, default=15000, help="most connections open at once (shortens steps)")
    ap.add_argument("--settle", type=float, default=None, help="seconds after closing a step's connections")
    ap.add_argument("--quick", action="store_true", help="2 steps, 1 s windows (smoke test)")
    args = ap.parse_args(argv)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for s in args.servers:
        if s not in ("relay", "picows"):
            raise SystemExit(f"unknown server {s!r}: use relay, picows")
    args.steps = ([float(x) for x in args.steps.split(",") if x.strip()] if args.steps
                  else list(DEFAULT_STEPS[:2] if args.quick else DEFAULT_STEPS))
    if args.duration is None:
        args.duration = 1.0 if args.quick else 3.0
    if args.warmup is None:
        args.warmup = 0.5 if args.quick else 1.0
    if args.connect_timeout is None:
        args.connect_timeout = 5.0 if args.quick else 10.0
    if args.settle is None:
        args.settle = 0.5 if args.quick else 1.5
    import uvloop

    return uvloop.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())

"""Paced broadcasts: 1:1 chat latency on the same node during a broadcast to a very large channel, and the
arrival-time histogram of that broadcast at its subscribers, paced against unpaced (issue 11).

Set-up (one relay node, one run; ``docs/architecture.md``, ``Hub.broadcast_paced``):

* relay on CPU 0 (``taskset``, the compiled core: every process's log line must say ``core=cython``), either
  ONE process with the memory broker, or, when the subscribers do not fit one process's descriptors, ONE
  NODE WITH ``--relay-workers`` N WORKER PROCESSES ON ONE CORE (``workers = N``, SO_REUSEPORT sharing the
  ports, ``broker = "redis"`` with a redis-server of the benchmark's own on a free port, also on CPU 0); see
  *Relay workers* below. ``max_connections`` raised to fit (per process), ``max_connections_per_ip`` off,
  ``pace_min_subscribers`` = min(1000, N) (with workers: min(1000, N / (2 x workers)), so every worker paces
  its own share), ``ping_interval`` 300 s (``--ping-interval``: relay pings the clients of one ramp second in
  one burst, which would land in some windows and not others) and two namespaces: ``sale`` (the big channel
  ``sale:all``; no ``pace_ms`` of its own: each publish says whether it is paced) and ``chat``
  (``publish_access = "subscribers"``);
* ``--subscribers`` N WebSocket clients subscribed to ``sale:all``, held by ``--workers`` generator processes
  on CPU 1 (``common.run_worker``: they die with this process). Each is a minimal hand-written client (fixed
  upgrade request, frames masked with the zero key) sending ``connect`` + ``subscribe`` in one frame; it
  answers relay's ``{}`` pings. Worker w binds its sockets to the source address 127.0.0.<w+2>, so every
  worker has its own 28k ephemeral ports toward relay's one port. The connections are opened gradually
  (``--ramp-rate`` per second, at most 200 handshakes under way per worker) before anything is measured;
* ``--chats`` 1:1 chats (2 members each, ``chat:p<k>``) in one more generator process on CPU 1, run at a
  higher priority (nice -10) so that a busy subscriber worker does not delay its reading. From the start
  of the first run to the end of the last, members publish stamped messages (``C=<unix ns>;<a|b>;``) through
  their own connection at ``--chat-rate`` messages/s in all, round-robin over the chats on an absolute
  schedule; latency = the OTHER member's receive time - the stamp (the echo to the sender is not counted).

The broadcast (once per run, through the server API ``POST /api/publish`` with X-API-Key, data
``B=<run>;T=<unix ns>;``, T taken just before the call): run ``unpaced`` (no ``pace_ms``: fan-out at once),
then run ``paced`` (``"pace_ms": --pace-ms``), on the same relay process and the same connections, so both
meet the same sockets and the same memory; pacing leaves no state behind once its window is over. One
unmeasured unpaced broadcast before the first run warms relay's and the clients' write and read paths.

Per run, windows relative to the publish instant: ``before`` = the ``--quiet`` seconds before it, ``during``
= [0, pace window + 1 s) (the same length in both runs), ``after`` = the ``--quiet`` seconds after that.
Figures: chat p50/p99/max per window (max chat latency during the broadcast is how long relay's loop was
blocked, as a chat sees it); every subscriber's arrival offset (receive time - T, the workers share the
machine clock) -> p1/p50/p99/max, a histogram of ``--bin-ms`` bins and its highest bin ("page loads per
100 ms"); subscribers that got the broadcast exactly once, never, or more than once; relay's deliveries
(``relay_deliveries_total`` over the run minus the chats' two per message); relay's CPU and the
generator's CPU in the ``during`` window; the API call's duration.

Relay workers. 100,000 subscribers (issue 11) need 100,000 descriptors, and one process may hold only its
open-file hard limit (20,000 on the machine this was written on, where it cannot be raised: no
CAP_SYS_RESOURCE). So by default relay runs as one process while N + 2 x chats + 200 spare fit that limit,
and otherwise as ``workers = W`` with W = ceil((N + 2 x chats) / (85 % of (limit - 200))): SO_REUSEPORT
spreads connections over the workers by a hash of their addresses, not evenly, hence the headroom (6
workers for 100,000 at a 20,000 limit, ~16,700 each). ``--relay-workers 1`` forces the single process (the
subscriber count is then capped by the limit, as before), ``--relay-workers W`` names W. With workers:
the publication enters one worker through the API, goes through Redis and reaches every worker, and each
worker paces its own subscribers (``relay_paced_publications_total`` counts one per worker); a chat's two
members may sit on different workers (their messages pass through Redis); relay's CPU is all its
processes (redis-server's separately); ``/metrics`` of any worker sums every worker (prometheus-client's
multiprocess mode), the other workers' figures up to ``metrics_interval`` (1 s) old, so the chats
subtracted from the deliveries are counted half an interval early, within ``relay_deliveries_tolerance``.
The subscriber generator processes have the same limit: ``--workers`` defaults to enough of them.

Prints one line per run and the comparison, writes bench/results/pacing-<timestamp>.json.
Run: ``.venv/bin/python bench/pacing.py`` (``--quick``: 8,000 subscribers and a 5 s window, about a minute).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (GENERATOR_CPU, SERVER_CPU, RelayServer, machine_description, pin_to,  # noqa: E402
                    raise_nofile, write_result)
from pacing_workers import CHANNEL, chat_main, subscriber_main  # noqa: E402
from relaynode import (FD_MARGIN, METRICS_INTERVAL, WORKER_FILL, RelayNode, choose_relay_workers,  # noqa: E402
                       process_capacity)
from scenarios_common import CpuWindow, Printer, WorkerPool, banner, fmt_ms, noisy_mark  # noqa: E402

__all__ = ["run", "format_line", "main", "arrival_figures", "chat_window"]

TARGET = 100_000  #: issue 11: a 100,000-subscriber broadcast
#: what a subscriber costs in memory, relay (~5 KiB idle) and a generator client together, with room to spare
BYTES_PER_SUBSCRIBER = 24 * 1024


# ------------------------------------------------------------------------------------------------
# figures
# ------------------------------------------------------------------------------------------------

def _pct(sorted_vals: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of an ascending list."""
    if not sorted_vals:
        return None
    return sorted_vals[min(len(sorted_vals) - 1, max(0, math.ceil(q / 100 * len(sorted_vals)) - 1))]


def arrival_figures(offsets_ns: list[int], bin_ms: float) -> dict[str, Any]:
    """Arrival offsets (ns after the publish) -> percentiles in ms, the ``bin_ms`` histogram and its peak."""
    ms = sorted(o / 1e6 for o in offsets_ns)
    if not ms:
        return {"count": 0, "arrival_ms": None, "bins": [], "peak_per_bin": 0, "peak_bin_start_ms": None,
                "spread_p1_p99_ms": None}
    bins = [0] * (int(max(0.0, ms[-1]) // bin_ms) + 1)
    for v in ms:
        bins[int(max(0.0, v) // bin_ms)] += 1
    peak = max(bins)
    p1, p99 = _pct(ms, 1), _pct(ms, 99)
    return {"count": len(ms),
            "arrival_ms": {"min": round(ms[0], 2), "p1": round(p1, 2), "p10": round(_pct(ms, 10), 2),
                           "p50": round(_pct(ms, 50), 2), "p90": round(_pct(ms, 90), 2), "p99": round(p99, 2),
                           "max": round(ms[-1], 2)},
            "spread_p1_p99_ms": round(p99 - p1, 2),
            "bins": bins, "peak_per_bin": peak, "peak_bin_start_ms": bins.index(peak) * bin_ms}


def chat_window(samples: list[tuple[int, int]], sent: list[int], start_ns: int, end_ns: int) -> dict[str, Any]:
    """Chat latency (ms) of the messages stamped in [start, end): p50/p99/max, samples and messages lost."""
    lat = sorted(lat / 1e6 for stamp, lat in samples if start_ns <= stamp < end_ns)
    n_sent = sum(1 for s in sent if start_ns <= s < end_ns)

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 3)

    return {"p50": r(_pct(lat, 50)), "p90": r(_pct(lat, 90)), "p99": r(_pct(lat, 99)),
            "max": r(lat[-1] if lat else None), "samples": len(lat), "sent": n_sent, "lost": n_sent - len(lat)}


def text_histogram(bins: list[int], bin_ms: float, rows: int = 20, width: int = 40) -> list[str]:
    """The ``bin_ms`` histogram as at most ``rows`` text rows (bins merged; the peak per bin in each row)."""
    if not bins:
        return []
    per = max(1, math.ceil(len(bins) / rows))
    top = max(bins)
    out = []
    for i in range(0, len(bins), per):
        chunk = bins[i:i + per]
        bar = "#" * max(1 if max(chunk) else 0, round(width * max(chunk) / top))
        out.append(f"    {i * bin_ms / 1000:6.1f}-{(i + len(chunk)) * bin_ms / 1000:<6.1f}s "
                   f"{sum(chunk):>8,}  max {max(chunk):>7,}/{bin_ms:g}ms  {bar}")
    return out


# ------------------------------------------------------------------------------------------------
# coordinator
# ------------------------------------------------------------------------------------------------

def default_subscribers(chats: int, relay_workers: int | None) -> tuple[int, str]:
    """100,000, or the most this machine fits, and why: available memory, and with ``--relay-workers 1`` (one
    relay process) the open-file hard limit of that process."""
    hard, per = process_capacity()
    by_fd = per - 2 * chats if relay_workers == 1 else TARGET
    avail = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    by_mem = int(avail * 0.7 / BYTES_PER_SUBSCRIBER) if avail else TARGET
    n = min(TARGET, by_fd, by_mem)
    if n == TARGET:
        return n, ""
    why = (f"open-file hard limit {hard:,} of relay's one process (--relay-workers 1; relay needs one "
           f"descriptor per connection; {2 * chats} chat connections and {FD_MARGIN} spare)" if by_fd <= by_mem
           else f"available memory {avail / 2**30:.1f} GiB at {BYTES_PER_SUBSCRIBER // 1024} KiB per subscriber")
    return n, why


def _wait(pool: WorkerPool, tag: str, want: int, deadline: float) -> int:
    """Poll the workers until ``want`` subscribers have broadcast ``tag`` or ``deadline`` (monotonic) passes."""
    while True:
        got = sum(r[1] for r in pool.all("count", tag))
        if got >= want or time.monotonic() > deadline:
            return got
        time.sleep(0.25)


def _sleep_until(t_ns: int) -> None:
    time.sleep(max(0.0, (t_ns - time.time_ns()) / 1e9))


def _metrics(relay: RelayServer) -> dict[str, float]:
    m = relay.metrics()
    return {"deliveries": m.total("relay_deliveries_total"), "paced": m.total("relay_paced_publications_total"),
            "slow": m.total("relay_slow_consumer_disconnects_total"), "lane_drops": m.total("relay_lane_drops_total"),
            "connections": m.total("relay_connections")}


def broadcast(relay: RelayServer, subs: WorkerPool, tag: str, pace_ms: int, n: int, timeout: float
              ) -> tuple[int, float, dict, int]:
    """Publish broadcast ``tag`` (paced over ``pace_ms``, 0: at once); (publish ns, API ms, reply, received)."""
    t_pub = time.time_ns()
    params: dict[str, Any] = {"channel": CHANNEL, "data": f"B={tag};T={t_pub};"}
    if pace_ms:
        params["pace_ms"] = pace_ms
    reply = relay.api("publish", params)
    api_ms = (time.time_ns() - t_pub) / 1e6
    got = _wait(subs, tag, n, time.monotonic() + pace_ms / 1000 + timeout)
    return t_pub, api_ms, reply, got


def run_one(mode: str, pace_ms: int, node: RelayNode, subs: WorkerPool, chat: WorkerPool,
            args: argparse.Namespace, during_s: float) -> dict[str, Any]:
    """One broadcast and its windows: what the workers report, except the chat latencies (added at the end)."""
    relay = node.relay
    t_m0 = time.time_ns()  # relay adds up its counters when the scrape comes in
    m0 = _metrics(relay)  # a scrape takes relay's loop for a moment: not inside a window
    time.sleep(args.quiet)  # the "before" window
    # the server core's CPU: relay's processes and redis-server (so that NOISY counts only other tenants)
    cpu = CpuWindow(node.server_cpu_times, lambda: subs.pids + chat.pids)
    cpu.mark("start")
    redis0 = node.redis_cpu_s()
    t_pub, api_ms, reply, got = broadcast(relay, subs, mode, pace_ms, args.subscribers, args.timeout)
    _sleep_until(t_pub + int(during_s * 1e9))
    cpu.mark("end")
    redis_s = node.redis_cpu_s() - redis0
    c = cpu.figures()
    relay_s = c["server_cpu_s"] - redis_s
    all_in_ns = time.time_ns()
    _sleep_until(t_pub + int((during_s + args.quiet) * 1e9))  # the "after" window
    t_m1 = time.time_ns()
    m1 = _metrics(relay)
    reports = [r[1] for r in subs.all("report", mode)]
    offsets = [o for r in reports for o in r["offsets"]]
    fig = arrival_figures(offsets, args.bin_ms)
    once = sum(r["once"] for r in reports)
    return {
        "mode": mode, "pace_ms": pace_ms, "subscribers": args.subscribers, "publish_ns": t_pub,
        "metrics_ns": [t_m0, t_m1], "api_ms": round(api_ms, 2), "api_reply": reply,
        "received": got, "received_once": once, "received_more": sum(r["more"] for r in reports),
        "duplicates": sum(r["dups"] for r in reports), "never": sum(r["never"] for r in reports),
        "every_subscriber_once": once == args.subscribers and got == args.subscribers,
        "lost_connections": sum(r["lost"] for r in reports),
        **fig, "bin_ms": args.bin_ms,
        "window_s": {"before": args.quiet, "during": during_s, "after": args.quiet},
        "relay_workers": node.workers, "broker": node.broker,
        "relay_cpu_during_s": round(relay_s, 4),
        "relay_cpu_during_pct": round(100.0 * relay_s / c["window_s"], 1) if c["window_s"] > 0 else 0.0,
        "redis_cpu_during_s": round(redis_s, 4) if node.redis is not None else None,
        "generator_cpu_during_pct": c["generator_cpu_pct"], "cores_during": c["cores"], "noisy": c["noisy"],
        "marks": [noisy_mark(c)] if c["noisy"] else [],
        "relay_metrics": {k: m1[k] - m0[k] for k in ("deliveries", "paced", "slow", "lane_drops")},
        "relay_connections_after": m1["connections"],
        "all_in_checked_ns": all_in_ns,
    }


def add_chats(r: dict[str, Any], chat: dict[str, Any], quiet: float, during_s: float, workers: int = 1) -> None:
    """The chat windows of run ``r``; its broadcast deliveries (relay's over the run less the chats'). One relay
    process: exact. With ``workers``, a scrape has the answering worker's figures up to date and the others' up
    to METRICS_INTERVAL old (interval / 2 on average), so the chats are counted interval x (W - 1) / 2W early,
    and the figure may be off by up to ``relay_deliveries_tolerance`` (the chat deliveries of one interval
    before each scrape)."""
    t = r["publish_ns"]
    s, sent = chat["samples"], chat["sent"]
    r["chat_ms"] = {"before": chat_window(s, sent, t - int(quiet * 1e9), t),
                    "during": chat_window(s, sent, t, t + int(during_s * 1e9)),
                    "after": chat_window(s, sent, t + int(during_s * 1e9), t + int((during_s + quiet) * 1e9))}
    # the during window's messages: (ms after the publish, latency ms), to see when a chat waited
    r["chat_during_samples"] = [[round((st - t) / 1e6, 1), round(lat / 1e6, 2)] for st, lat in s
                                if t <= st < t + int(during_s * 1e9)]
    a, b = r["metrics_ns"]
    lag = int(METRICS_INTERVAL * 1e9) if workers > 1 else 0
    shift = lag * (workers - 1) // (2 * workers)
    # each chat message: the other member and the echo
    chat_deliveries = 2 * sum(1 for x in sent if a - shift <= x < b - shift)
    r["relay_deliveries_broadcast"] = int(r["relay_metrics"]["deliveries"] - chat_deliveries)
    r["relay_deliveries_tolerance"] = 2 * sum(1 for x in sent if a - lag <= x < a or b - lag <= x < b)


def add_gc(r: dict[str, Any], pauses: list[tuple[int, int, float]], quiet: float, during_s: float) -> None:
    """relay's collections of 1 ms or more in each window of run ``r``: count, longest, and each one of 10 ms
    or more as [ms after the publish, generation, ms]."""
    t = r["publish_ns"]
    edges = {"before": (t - int(quiet * 1e9), t), "during": (t, t + int(during_s * 1e9)),
             "after": (t + int(during_s * 1e9), t + int((during_s + quiet) * 1e9))}
    r["relay_gc"] = {
        w: {"count": sum(1 for x in pauses if a <= x[0] < b),
            "max_ms": round(max((ms for x0, _, ms in pauses if a <= x0 < b), default=0.0), 1),
            "long": [[round((x0 - t) / 1e6, 1), g, round(ms, 1)] for x0, g, ms in pauses if a <= x0 < b and ms >= 10]}
        for w, (a, b) in edges.items()}


def format_line(r: dict[str, Any]) -> str:
    a = r["arrival_ms"] or {}
    c = r["chat_ms"]

    def lat(w: dict[str, Any]) -> str:
        return f"{fmt_ms(w['p50'])}/{fmt_ms(w['p99'])}/{fmt_ms(w['max'])}"

    bad = "" if r["every_subscriber_once"] else (f"  NOT ALL ONCE: {r['never']:,} never, {r['received_more']:,} "
                                                 f"more than once, {r['lost_connections']:,} connections lost")
    return (f"  {r['mode']:<8} pace_ms {r['pace_ms']:>6}: {r['received_once']:,}/{r['subscribers']:,} got it once; "
            f"arrival p1/p50/p99/max {fmt_ms(a.get('p1'))}/{fmt_ms(a.get('p50'))}/{fmt_ms(a.get('p99'))}/"
            f"{fmt_ms(a.get('max'))} ms, peak {r['peak_per_bin']:,} per {r['bin_ms']:g} ms; "
            f"chat p50/p99/max before {lat(c['before'])}, DURING {lat(c['during'])}, after {lat(c['after'])} ms "
            f"({c['during']['samples']} msgs during, {c['during']['lost']} lost); relay CPU in window "
            f"{r['relay_cpu_during_s']:.2f} s, gen CPU {r['generator_cpu_during_pct']:.0f} %, API "
            f"{r['api_ms']:.0f} ms, deliveries {r['relay_deliveries_broadcast']:,}"
            + (f" (±{r['relay_deliveries_tolerance']})" if r.get("relay_deliveries_tolerance") else "")
            + (f", redis CPU {r['redis_cpu_during_s']:.2f} s" if r.get("redis_cpu_during_s") is not None else "")
            + bad
            + "".join(f"  {m}" for m in r["marks"]) + _gc_note(r))


def _gc_note(r: dict[str, Any]) -> str:
    g = r.get("relay_gc")
    if not g:
        return ""
    long = [f"{w} " + ", ".join(f"gen{x[1]} {x[2]:.0f} ms at {x[0] / 1000:+.2f} s" for x in g[w]["long"])
            for w in ("before", "during", "after") if g[w]["long"]]
    return f"; relay GC pauses >= 10 ms: {'; '.join(long) if long else 'none'}"


def run(args: argparse.Namespace, out: Printer) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    n, during_s, w = args.subscribers, args.pace_ms / 1000 + 1.0, args.relay_workers
    node = RelayNode(w, args.broker, {
        # per process: with workers, each holds its share, up to its descriptors
        "max_connections": n + 2 * args.chats + 100 if w == 1 else process_capacity()[1],
        "max_connections_per_ip": 0, "ping_interval": args.ping_interval,
        # every worker paces its own subscribers (~n / w of them): the threshold must sit below each one's share
        "pace_min_subscribers": min(1000, n) if w == 1 else min(1000, max(1, n // (2 * w))),
        "namespaces": {"sale": {}, "chat": {"publish_access": "subscribers"}}}, gc_log=args.gc_log)
    relay, gc_log = node.relay, node.gc_log
    subs = chat = None
    setup: dict[str, Any] = {}
    try:
        node.start()
        cores = node.cores()
        core = cores[0] if cores and len(set(cores)) == 1 else ",".join(cores) or "unknown"
        pids = f", {w} workers (pids {', '.join(map(str, node.worker_pids))})" if w > 1 else ""
        if node.redis is not None:
            pids += f", redis-server pid {node.redis.pid} port {node.redis.port}"
        out(f"  [relay core={core} pid={relay.pid}{pids}]")
        if core != "cython":
            raise RuntimeError(f"relay runs core={core}; run `make build` (the benchmark measures the compiled core)")
        rss0 = node.rss_bytes()
        per = [n // args.workers + (1 if i < n % args.workers else 0) for i in range(args.workers)]
        token = relay.token()
        subs = WorkerPool(subscriber_main, [("127.0.0.1", relay.ws_port, f"127.0.0.{2 + i}", token, per[i])
                                            for i in range(args.workers)])
        chat = WorkerPool(chat_main, [("127.0.0.1", relay.ws_port, token, args.chats)])
        subs.recv_all(60)
        chat.recv_all(60)
        opened = chat.all("open", 100.0, 60.0)[0][1]
        if opened["ok"] != 2 * args.chats:
            raise RuntimeError(f"only {opened['ok']} of {2 * args.chats} chat members subscribed: "
                               f"{opened['failures']} {opened['failure_sample']}")
        t0 = time.monotonic()
        ramp_timeout = n / args.ramp_rate + 120
        opened_subs = [r[1] for r in subs.all("open", args.ramp_rate / args.workers, 60.0, timeout=ramp_timeout)]
        ramp_s = time.monotonic() - t0
        ok = sum(r["ok"] for r in opened_subs)
        failures: dict[str, int] = {}
        for r in opened_subs:
            for k, v in r["failures"].items():
                failures[k] = failures.get(k, 0) + v
        out(f"  {ok:,} of {n:,} subscribers connected and subscribed in {ramp_s:.1f} s "
            f"({ok / ramp_s:,.0f}/s){'' if not failures else f'; FAILED {failures}'}")
        if ok != n:
            sample = next((r["failure_sample"] for r in opened_subs if r["failure_sample"]), "")
            raise RuntimeError(f"only {ok} of {n} subscribers subscribed: {failures} {sample}")
        time.sleep(2.0)
        rss1 = node.rss_bytes()
        fds = node.fds()
        if w > 1:
            hard = process_capacity()[0]
            out(f"  connections per relay worker (open descriptors): {', '.join(f'{x:,}' for x in fds)}; "
                f"most {max(fds):,} of the open-file limit {hard:,}")
        setup = {"ramp_s": round(ramp_s, 2), "ramp_per_s": round(ok / ramp_s, 1),
                 "relay_workers": w, "broker": node.broker, "relay_worker_fds": fds,
                 "relay_rss_before_bytes": rss0, "relay_rss_connected_bytes": rss1,
                 "relay_rss_per_connection_kib": round((rss1 - rss0) / (n + 2 * args.chats) / 1024, 2),
                 "redis_rss_connected_bytes": node.redis_rss_bytes()}
        # warm-up: one unmeasured broadcast at once
        _, _, _, got = broadcast(relay, subs, "warmup", 0, n, args.timeout)
        setup["warmup_received"] = got
        if w > 1:  # every worker's figures include the warm-up before the first run's scrape
            time.sleep(METRICS_INTERVAL + 0.2)
        chat.all("start", args.chat_rate)
        results = [run_one("unpaced", 0, node, subs, chat, args, during_s),
                   run_one("paced", args.pace_ms, node, subs, chat, args, during_s)]
        chats = chat.all("stop")[0][1]
        pauses = node.gc_pauses()
        for r in results:
            add_chats(r, chats, args.quiet, during_s, w)
            if gc_log is not None:
                add_gc(r, pauses, args.quiet, during_s)
            r["server_alive"] = node.alive()
            r["relay_core"] = core
            out(format_line(r))
            out(f"    arrivals per {args.bin_ms:g} ms bin from the publish (rows merge bins; max = highest bin):")
            for line in text_histogram(r["bins"], args.bin_ms, rows=12 if args.quick else 20):
                out(line)
        setup.update({"chat_sent": len(chats["sent"]), "chat_received": len(chats["samples"]),
                      "chat_errors": chats["errors"], "chat_error_sample": chats["error_sample"],
                      "chat_sender_late_max_ms": round(chats["late_max_ms"], 2), "chat_lost_connections": chats["lost"],
                      "relay_rss_end_bytes": node.rss_bytes(), "relay_worker_fds_end": node.fds(),
                      "relay_gc_pauses": None if gc_log is None else {
                          "logged": len(pauses), "full_max_ms": max((ms for _, g, ms in pauses if g == 2), default=0.0),
                          "full_count": sum(1 for _, g, _ms in pauses if g == 2)}})
        return results, setup
    finally:
        for pool in (subs, chat):
            if pool is not None:
                pool.close()
        if not node.alive():
            out(f"  relay log tail:\n{node.log_tail()}")
        node.cleanup()


def summarize(results: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    un, pa = results
    window = args.pace_ms
    spread = pa["spread_p1_p99_ms"] or 0.0

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 1) if a and b else None

    return {
        "subscribers": args.subscribers, "relay_workers": args.relay_workers, "broker": args.broker,
        "pace_ms": window, "chats": args.chats, "chat_rate": args.chat_rate,
        "chat_p99_during_ms": {"unpaced": un["chat_ms"]["during"]["p99"], "paced": pa["chat_ms"]["during"]["p99"]},
        "chat_max_during_ms": {"unpaced": un["chat_ms"]["during"]["max"], "paced": pa["chat_ms"]["during"]["max"]},
        "chat_p99_before_ms": {"unpaced": un["chat_ms"]["before"]["p99"], "paced": pa["chat_ms"]["before"]["p99"]},
        "peak_per_bin": {"unpaced": un["peak_per_bin"], "paced": pa["peak_per_bin"]},
        "peak_ratio": ratio(un["peak_per_bin"], pa["peak_per_bin"]),
        "arrival_p1_p50_p99_ms": {m["mode"]: [(m["arrival_ms"] or {}).get(k) for k in ("p1", "p50", "p99")]
                                  for m in results},
        "paced_spread_p1_p99_ms": spread,
        "paced_spread_over_half_window": spread > 0.5 * window,
        "every_subscriber_once": all(r["every_subscriber_once"] for r in results),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="paced broadcasts: chat latency during a big broadcast, paced vs not",
                                 epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subscribers", type=int, default=None,
                    help="subscribers of sale:all (default 100,000 capped by what the machine fits; --quick 8,000)")
    ap.add_argument("--workers", type=int, default=None, help="subscriber generator processes on CPU 1 (default 4, "
                    "more when they would exceed 90 %% of a process's descriptors; --quick 2)")
    ap.add_argument("--relay-workers", type=int, default=None,
                    help="relay worker processes (one node on CPU 0; SO_REUSEPORT; Redis broker when > 1); default: "
                         "1 while the connections fit one process's open-file limit, else enough for each to fill "
                         f"{WORKER_FILL * 100:.0f} %% of its own; 1 forces the single process (subscribers capped "
                         "to fit)")
    ap.add_argument("--broker", choices=("memory", "redis"), default=None,
                    help="relay's broker (default memory with one relay process, redis with workers, which need it)")
    ap.add_argument("--pace-ms", type=int, default=None, help="the paced run's window (default 10000; --quick 5000)")
    ap.add_argument("--chats", type=int, default=None, help="1:1 chats beside the broadcast (default 40; --quick 20)")
    ap.add_argument("--chat-rate", type=float, default=50.0, help="chat messages per second in all (default 50)")
    ap.add_argument("--quiet", type=float, default=None, help="seconds of the before and after windows (default 5; "
                    "--quick 3)")
    ap.add_argument("--ramp-rate", type=float, default=2500.0, help="connections opened per second (default 2500)")
    ap.add_argument("--ping-interval", type=float, default=300.0,
                    help="relay's ping_interval (default 300 s: no ping inside the run; relay scans its clients for "
                         "due pings once a second, so the clients one second of the ramp opened are pinged in one "
                         "burst, which would land in some windows and not others; 25 is relay's default)")
    ap.add_argument("--bin-ms", type=float, default=100.0, help="arrival histogram bin (default 100 ms)")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds after the window before missing "
                    "arrivals count as never")
    ap.add_argument("--no-gc-log", dest="gc_log", action="store_false",
                    help="do not log relay's garbage collections (a sitecustomize on relay's PYTHONPATH)")
    ap.add_argument("--quick", action="store_true", help="8,000 subscribers, a 5 s window (about a minute)")
    args = ap.parse_args(argv)
    if args.chats is None:
        args.chats = 20 if args.quick else 40
    capped = ""
    if args.subscribers is None:
        args.subscribers, capped = (8000, "") if args.quick else default_subscribers(args.chats, args.relay_workers)
    hard, per = process_capacity()
    if args.relay_workers is None:
        args.relay_workers, workers_why = choose_relay_workers(args.subscribers, args.chats)
        workers_why = "chosen automatically: " + workers_why
    else:
        workers_why = f"--relay-workers {args.relay_workers}"
        if args.relay_workers < 1:
            ap.error("--relay-workers must be >= 1")
        conns = args.subscribers + 2 * args.chats
        if conns / args.relay_workers > per:
            ap.error(f"{conns:,} connections over {args.relay_workers} relay process(es) exceed the {per:,} one "
                     f"process holds (open-file hard limit {hard:,}); drop --relay-workers to choose automatically")
    if args.broker is None:
        args.broker = "memory" if args.relay_workers == 1 else "redis"
    elif args.broker == "memory" and args.relay_workers > 1:
        ap.error("relay workers need --broker redis (the memory broker lives inside one process)")
    gen_per = int(0.9 * per)  # a generator process has the same descriptor limit
    if args.workers is None:
        args.workers = 2 if args.quick else max(4, math.ceil(args.subscribers / gen_per))
    args.workers = max(1, min(args.workers, args.subscribers))
    if args.subscribers / args.workers > per:
        ap.error(f"{args.subscribers:,} subscribers over {args.workers} generator processes exceed the {per:,} "
                 f"descriptors one process holds: raise --workers")
    if args.pace_ms is None:
        args.pace_ms = 5000 if args.quick else 10000
    if args.quiet is None:
        args.quiet = 3.0 if args.quick else 5.0
    pin_to(GENERATOR_CPU)
    raise_nofile()
    out = Printer()
    machine = machine_description()
    out(banner(machine))
    where = ("one process, memory broker" if args.relay_workers == 1 and args.broker == "memory" else
             "one process, Redis broker with redis-server on the same core" if args.relay_workers == 1 else
             f"one node with {args.relay_workers} worker processes on one core, SO_REUSEPORT, Redis broker "
             f"with redis-server on the same core")
    out(f"paced broadcasts: relay on CPU {SERVER_CPU} ({where}); {args.subscribers:,} WebSocket subscribers "
        f"of {CHANNEL} in {args.workers} generator processes and {args.chats} 1:1 chats ({args.chat_rate:g} msg/s "
        f"in all, one more process, nice -10) on CPU {GENERATOR_CPU}; one broadcast through the server API at once, "
        f"then one paced over {args.pace_ms:,} ms; windows: before {args.quiet:g} s, during "
        f"{args.pace_ms / 1000 + 1:g} s, after {args.quiet:g} s")
    out(f"  relay processes: {args.relay_workers} ({workers_why})")
    if args.relay_workers > 1:
        out(f"  with workers: each worker paces its own subscribers (the publication reaches every worker through "
            f"Redis; relay_paced_publications_total counts {args.relay_workers} per paced broadcast), chat members "
            f"may sit on different workers, relay CPU = all {args.relay_workers + 1} relay processes (redis-server's "
            f"apart), /metrics sums every worker")
    if capped:
        out(f"  subscribers: {args.subscribers:,}, NOT {TARGET:,}: capped by the {capped}")
    results, setup = run(args, out)
    s = summarize(results, args)
    un, pa = results
    cu, cp = un["chat_ms"]["during"], pa["chat_ms"]["during"]
    out(f"paced vs unpaced (same run, same connections): chat p99 during the broadcast {fmt_ms(cp['p99'])} vs "
        f"{fmt_ms(cu['p99'])} ms (max {fmt_ms(cp['max'])} vs {fmt_ms(cu['max'])} ms); peak arrivals per "
        f"{args.bin_ms:g} ms {pa['peak_per_bin']:,} vs {un['peak_per_bin']:,} ({s['peak_ratio']}x lower); paced "
        f"arrivals p1..p99 over {fmt_ms(s['paced_spread_p1_p99_ms'])} ms of the {args.pace_ms:,} ms window "
        f"({'more' if s['paced_spread_over_half_window'] else 'NOT more'} than half); every subscriber got each "
        f"broadcast once: {'yes' if s['every_subscriber_once'] else 'NO'}")
    path = write_result("pacing", {
        "machine": machine, "args": vars(args), "scenario": "pacing", "kind": "pacing",
        "relay_workers": args.relay_workers, "broker": args.broker, "relay_workers_why": workers_why,
        "subscribers_capped_by": capped or None, "setup": setup,
        "definitions": {
            "arrival_ms": "per subscriber: receive time of the broadcast - its publish stamp T (taken just before "
                          "the server API call), first arrival only",
            "bins": "subscribers whose arrival falls in each bin_ms bin from the publish instant",
            "peak_per_bin": "the highest bin: 'page loads per 100 ms' if every client fetched on arrival",
            "chat_ms": "chat latency (other member's receive time - stamp) of the messages stamped in each window, "
                       "relative to the publish instant: before [-quiet, 0), during [0, pace window + 1 s), after "
                       "the next quiet seconds",
            "relay_cpu_during_s": "relay utime+stime over the during window (all relay processes: the supervisor "
                                  "and its workers; redis-server apart, in redis_cpu_during_s)",
            "relay_deliveries_broadcast": "relay_deliveries_total over the run (summed over every worker by one "
                                          "scrape) minus 2 per chat message stamped in it",
            "relay_deliveries_tolerance": "with relay workers, the other workers' figures in a scrape are up to "
                                          "metrics_interval old: the chats are counted half of it early, and the "
                                          "figure may be off by up to this many chat deliveries (0: one process)",
            "relay_workers": "relay processes holding clients: 1 = one process; N > 1 = one node with N worker "
                             "processes on one core (SO_REUSEPORT, Redis broker, each pacing its own subscribers)",
        },
        "results": results, "summary": s, "printed": out.lines})
    print(f"results: {path}")
    return 0 if s["every_subscriber_once"] else 1


if __name__ == "__main__":
    sys.exit(main())

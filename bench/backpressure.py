"""Publisher backpressure under a publish flood (issue 11): bounded memory, nothing accepted lost.

What it shows: when subscribers cannot take what publishers send, relay with backpressure on
refuses new publications (server API 429 with ``Retry-After``) and its resident memory stays
under the configured ceiling, while every publication it accepted (HTTP 200) still reaches every
subscriber of its channel, once. The baseline in the same run is the same flood against relay
with backpressure off: it accepts everything and buffers it, so its memory grows with the flood.

Set-up (``/work/shared/BENCHMARKING.md``):

* **relay** on CPU 0 (``common.RelayServer``, the compiled core is checked: ``core=cython``),
  memory broker, a ``[namespaces.feed]`` (no history, chat lane: never dropped),
  ``client_queue_max_size`` 1 GiB so no subscriber is disconnected as slow (3008) in either
  run: the only difference between the runs is the backpressure keys. A fresh relay per run.
* **Subscribers** on CPU 1: ``--subscribers`` WebSocket clients (picows framing, uvloop) over
  ``--workers`` processes, subscriber i on channel ``feed:c<i % channels>``, reading as fast as
  they can. Each publication's data is ``S=<seq>;xxx…`` (``--payload`` bytes, ``seq`` numbered per
  channel); every subscriber counts each sequence number it receives in a byte map, so missing
  and duplicated deliveries are counted exactly. The subscriber workers run at nice 5, so the
  publisher, on the same core, offers its rate even when they are saturated.
* **Publisher** on CPU 1: one process with ``--conns`` keep-alive HTTP/1.1 connections to the
  server API, requests built by hand and pipelined up to ``--depth`` per connection, at a fixed
  offered rate on an absolute schedule, channels round-robin (``--method publish``: one
  ``POST /api/publish`` per publication; ``broadcast``: one ``POST /api/broadcast`` to every
  channel, i.e. ``channels`` publications). It behaves like a well-mannered backend: a 429
  makes that connection wait ``Retry-After`` seconds; publications falling due meanwhile are
  *held back* (not sent, counted). 200 = accepted, 429 = refused; a request without an answer
  is "unknown" and excluded from the delivery check.
* **Capacity** (skipped with ``--capacity``): on a fresh relay with backpressure off, the offered
  rate rises step by step (``--steps`` of ``--step-duration`` s); a step keeps up when, at its
  end, the subscribers are less than 250 ms of deliveries behind and the publisher sent what was
  offered. Capacity = the highest step that kept up. The same relay's RSS with the subscribers
  connected and idle gives the memory ceiling of the "on" run.
* **Flood**: for each ``--factors`` multiple of capacity, two runs, fresh relay each: ``on``
  (``backpressure_queue_bytes`` = ``--queue-limit`` MiB, ``backpressure_memory_bytes`` = idle RSS
  + ``--headroom`` MiB: the **ceiling**) and ``off`` (every backpressure key 0). The flood lasts
  ``--duration`` s; relay's RSS is read from /proc every 100 ms from start to the end of the
  drain (the time until every subscriber has every accepted publication).

Per run it prints one line (accepted/s, refused/s, held back, peak RSS against the ceiling,
deliveries, missing / duplicate / unexpected deliveries, drain time, 3008 disconnects, relay
CPU, generator CPU) and the comparison, and writes ``bench/results/backpressure-<stamp>.json``.

Run: ``.venv/bin/python bench/backpressure.py`` (about 3 minutes) or ``--quick`` (under a minute).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scenarios_common import CpuWindow, noisy_mark  # noqa: E402
from backpressure_workers import Generator  # noqa: E402
from common import (GENERATOR_CPU, RelayServer, bench_parser, fmt_rate, machine_description, pin_to,  # noqa: E402
                    proc_rss_bytes, raise_nofile, save_result)

__all__ = ["main"]

MiB = 1 << 20
NAMESPACE = {"feed": {"publish_access": "subscribers"}}
QUEUE_CAP = 1 << 30  # client_queue_max_size in both runs: nobody is disconnected as slow


def kernel_queues(port: int) -> tuple[int, int]:
    """Bytes in the kernel's TCP queues of relay's WebSocket port (/proc/net/tcp): (relay's send queues,
    the subscribers' receive queues). Memory the flood costs that relay's RSS does not show."""
    hexport = f":{port:04X}"
    send = recv = 0
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for ln in f:
                parts = ln.split()
                tx, rx = parts[4].split(":")
                if parts[1].endswith(hexport):
                    send += int(tx, 16)
                elif parts[2].endswith(hexport):
                    recv += int(rx, 16)
    except OSError:
        pass
    return send, recv


class RssSampler(threading.Thread):
    """relay's RSS from /proc/<pid>/statm every ``interval`` s: (seconds since start, bytes); every
    ``kernel_every`` samples also the kernel's TCP queues of ``port`` (:func:`kernel_queues`)."""

    def __init__(self, pid: int, port: int, interval: float = 0.1, kernel_every: int = 3) -> None:
        super().__init__(daemon=True)
        self.pid, self.port, self.interval, self.kernel_every = pid, port, interval, kernel_every
        self.samples: list[tuple[float, int]] = []
        self.kernel: list[tuple[float, int, int]] = []
        self.t0 = time.time()
        self._halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self._halt.is_set():
            try:
                self.samples.append((time.time() - self.t0, proc_rss_bytes(self.pid)))
            except OSError:
                return
            if i % self.kernel_every == 0:
                self.kernel.append((time.time() - self.t0, *kernel_queues(self.port)))
            i += 1
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(2)

    def peak(self, since: float = 0.0) -> int:
        return max((b for t, b in self.samples if t >= since - self.t0), default=0)


def relay_config(mode: str, args: argparse.Namespace, ceiling: int = 0) -> dict[str, Any]:
    # client_send_buffer in both runs: the kernel's autotuned send buffers (about 1.3 MiB per lagging
    # loopback connection) would hide the backlog from relay (docs/backpressure.md, "The kernel's share")
    cfg: dict[str, Any] = {"namespaces": NAMESPACE, "client_queue_max_size": QUEUE_CAP,
                           "backpressure_retry_after": args.retry_after,
                           "client_send_buffer": args.send_buffer * 1024}
    if mode == "on":
        cfg.update(backpressure_queue_bytes=args.queue_limit * MiB, backpressure_memory_bytes=ceiling)
    else:  # the baseline, and the capacity probe: no limit at all
        cfg.update(backpressure_queue_bytes=0, backpressure_memory_bytes=0, backpressure_publish_latency=0,
                   max_publishes_in_flight=0)
    return cfg


def start_relay(name: str, cfg: dict[str, Any]) -> RelayServer:
    relay = RelayServer(name=name, extra_config=cfg)
    relay.start()
    core = relay.core()
    print(f"  [{name} core={core} pid={relay.pid}]", flush=True)
    if core != "cython":
        relay.cleanup()
        raise SystemExit(f"{name}: relay runs core={core}, not the compiled core (make build)")
    return relay


def metric_totals(relay: RelayServer) -> dict[str, float]:
    try:
        m = relay.metrics()
    except Exception as e:  # the figures from /proc and the subscribers still stand
        return {"error": f"{type(e).__name__}: {e}"}
    return {"refused_api": m[("relay_publications_refused_total", {"source": "api"})],
            "slow_disconnects": m.total("relay_slow_consumer_disconnects_total"),
            "outbound_queue_bytes": m.total("relay_outbound_queue_bytes"),
            "backpressure_active": m.total("relay_backpressure_active")}


def wait_drain(gen: Generator, expected: int, timeout: float) -> tuple[float | None, int]:
    """Seconds until the subscribers have ``expected`` deliveries (None: not within ``timeout``)."""
    t0 = time.time()
    got = 0
    while time.time() - t0 < timeout:
        got, _ = gen.received()
        if got >= expected:
            return time.time() - t0, got
        time.sleep(0.05)
    return None, got


def probe_capacity(args: argparse.Namespace) -> dict[str, Any]:
    """Idle RSS with the subscribers connected and, unless --capacity is given, the capacity ramp."""
    relay = start_relay("relay-capacity", relay_config("off", args))
    gen = None
    try:
        gen = Generator(relay, args)
        time.sleep(0.5)
        idle = relay.rss_bytes()
        print(f"  {gen.connected} subscribers connected over {len(gen.subs.pids)} workers (CPUs {gen.affinity}), "
              f"{gen.per_channel} per channel; relay idle RSS {idle / MiB:.1f} MiB", flush=True)
        out: dict[str, Any] = {"idle_rss_bytes": idle, "steps": [], "connected": gen.connected}
        if args.capacity:
            out["capacity_per_s"] = args.capacity
            out["source"] = "--capacity"
            return out
        subs_per_pub = args.subscribers / args.channels * (args.channels if args.method == "broadcast" else 1)
        rate, best = args.start_rate, None
        for _ in range(args.steps):
            window = CpuWindow(relay.cpu_times, lambda: gen.pids)
            window.mark("start")
            before, _ = gen.received()
            st = gen.flood(rate, args.step_duration, 0, relay.pid)
            window.mark("end")
            got, _ = gen.received()
            fig = window.figures()
            cpu, gcpu = fig["server_cpu_pct"] / 100, fig["generator_cpu_pct"] / 100
            behind = gen.expected(st["accepted_per_channel"]) - got
            behind_s = behind / max(1.0, rate * subs_per_pub)
            kept_up = (behind_s < 0.25 and st["sent"] >= 0.95 * st["offered"] and not st["errors"]
                       and st["answered_for_s"] < args.step_duration + 0.5)
            step = {"offered_per_s": rate, "accepted_per_s": st["accepted"] / st["sent_for_s"],
                    "deliveries_per_s": (got - before) / st["answered_for_s"], "behind_s": behind_s,
                    "queue_full": st["queue_full"], "relay_cpu_pct": cpu * 100, "generator_cpu_pct": gcpu * 100,
                    "kept_up": kept_up, "noisy": fig["noisy"]}
            out["steps"].append(step)
            print(f"  capacity {fmt_rate(rate):>6} {args.method}/s: {fmt_rate(step['deliveries_per_s'])} deliv/s, "
                  f"behind {behind_s * 1000:.0f} ms, relay CPU {cpu * 100:.0f}%, gen CPU {gcpu * 100:.0f}%"
                  f"{'' if kept_up else '  FELL BEHIND'}", flush=True)
            # let the backlog drain before the next step
            wait_drain(gen, gen.expected(st["accepted_per_channel"]), 30)
            if not kept_up:
                break
            best = rate
            rate = round(rate * args.factor_step)
        out["capacity_per_s"] = best or args.start_rate
        out["source"] = "ramp" if best else "ramp (even the first step fell behind)"
        return out
    finally:
        try:
            if gen is not None:
                gen.close()
        finally:
            relay.cleanup()


def flood_run(mode: str, factor: float, stall: bool, rate: float, ceiling: int,
              args: argparse.Namespace) -> dict[str, Any]:
    relay = start_relay(f"relay-{mode}-{factor:g}x{'-stall' if stall else ''}", relay_config(mode, args, ceiling))
    gen = None
    sampler = RssSampler(relay.pid, relay.ws_port)
    try:
        gen = Generator(relay, args)
        time.sleep(0.3)
        rss_start = relay.rss_bytes()
        sampler.start()
        window = CpuWindow(relay.cpu_times, lambda: gen.pids)
        window.mark("start")
        s0, p0 = gen.sub_cpu(), gen.pub_cpu()
        rss_abort = args.rss_abort * MiB if mode == "off" else 0
        if stall:
            gen.reading(False)
        st = gen.flood(rate, args.duration, rss_abort, relay.pid)
        if stall:
            gen.reading(True)
        flood_s = st["answered_for_s"]
        window.mark("end")
        cpu = window.figures()
        cpu1, s1, p1 = relay.cpu_seconds(), gen.sub_cpu(), gen.pub_cpu()
        metrics_flood = metric_totals(relay)
        expected = gen.expected(st["accepted_per_channel"])
        waited, got = wait_drain(gen, expected, args.drain_timeout)
        drain_s = time.time() - st["end_wall"] if waited is not None else None  # from the last send
        cpu2 = relay.cpu_seconds()
        time.sleep(0.3)  # duplicates would arrive now
        check = gen.check()
        sampler.stop()
        metrics_end = metric_totals(relay)
        peak = sampler.peak(st["start_wall"])
        n_pub = args.channels if args.method == "broadcast" else 1
        row = {
            "mode": mode, "factor": factor, "stall": stall, "case": f"{factor:g}x" + (" stalled" if stall else ""),
            "offered_per_s": rate, "method": args.method,
            "publications_per_request": n_pub, "duration_s": args.duration, "flood_s": flood_s,
            "offered": st["offered"], "sent": st["sent"], "accepted": st["accepted"], "refused": st["refused"],
            "held_back": st["held_back"], "queue_full": st["queue_full"], "errors": st["errors"],
            "unknown": st["unknown"], "error_sample": st["error_sample"],
            "accepted_per_s": st["accepted"] / st["sent_for_s"], "refused_per_s": st["refused"] / st["sent_for_s"],
            "sent_per_s": st["sent"] / st["sent_for_s"], "retry_after": st["retry_after"],
            "aborted_at_rss": st["aborted_rss"],
            "ceiling_bytes": ceiling if mode == "on" else None,
            "queue_limit_bytes": args.queue_limit * MiB if mode == "on" else None,
            "rss_start_bytes": rss_start, "rss_peak_bytes": peak,
            "rss_end_bytes": sampler.samples[-1][1] if sampler.samples else None,
            "under_ceiling": (peak <= ceiling) if mode == "on" else None,
            "expected_deliveries": check["expected"], "deliveries": check["received"],
            "missing": check["missing"], "duplicates": check["duplicates"], "unexpected": check["unexpected"],
            "subscribers_missing_some": check["subscribers_missing_some"],
            "accepted_publications": check["accepted_publications"] * n_pub,
            "unknown_publications": check["unknown_publications"],
            "drain_s": drain_s, "drained": drain_s is not None,
            "deliveries_at_drain_end": got,
            "slow_disconnects_3008": int(check["close_codes"].get("3008", 0)),
            "close_codes": check["close_codes"], "lost_connections": check["lost"],
            "subscribers": gen.connected, "subscriber_errors": (gen.errors + check["errors"])[:5],
            "relay_cpu_pct_flood": cpu["server_cpu_pct"], "cpu_window": cpu, "noisy": cpu["noisy"],
            "relay_cpu_pct_drain": (cpu2 - cpu1) / waited * 100 if waited else None,
            "subscriber_cpu_pct": (s1 - s0) / flood_s * 100, "publisher_cpu_pct": (p1 - p0) / flood_s * 100,
            "metrics_after_flood": metrics_flood, "metrics_end": metrics_end,
            "kernel_send_queue_peak_bytes": max((k[1] for k in sampler.kernel), default=0),
            "kernel_recv_queue_peak_bytes": max((k[2] for k in sampler.kernel), default=0),
            "rss_samples": [[round(t, 2), round(b / MiB, 1)] for t, b in sampler.samples],
            "kernel_queue_samples": [[round(t, 2), round(a / MiB, 1), round(b / MiB, 1)] for t, a, b in sampler.kernel],
            "timeline": st["timeline"], "server_alive": relay.alive(),
        }
        row["generator_cpu_pct"] = cpu["generator_cpu_pct"]  # subscribers + publisher + this coordinator
        # publications that fell due while their connection still waited for --depth answers: relay answers
        # (or the publisher reads) too slowly for the offered rate
        row["queue_full_share"] = row["queue_full"] / max(1, row["offered"])
        row["generator_busy"] = row["generator_cpu_pct"] >= 95
        return row
    finally:
        try:
            sampler.stop()
            if gen is not None:
                gen.close()
        finally:
            relay.cleanup()


def line(r: dict[str, Any]) -> str:
    ceil = f" / ceiling {r['ceiling_bytes'] / MiB:.0f}" if r["ceiling_bytes"] else ""
    marks = []
    if r["mode"] == "on" and not r["under_ceiling"]:
        marks.append("OVER-CEILING")
    if r["missing"] or r["duplicates"] or r["unexpected"]:
        marks.append("DELIVERY-ERRORS")
    if not r["drained"]:
        marks.append("NOT-DRAINED")
    if r["aborted_at_rss"]:
        marks.append("STOPPED-AT-RSS-LIMIT")
    if r["queue_full_share"] > 0.05:
        marks.append(f"QUEUE-FULL({r['queue_full_share']:.0%})")
    if r["generator_busy"]:
        marks.append("GEN-BUSY")
    if r["slow_disconnects_3008"] or r["lost_connections"]:
        marks.append("DISCONNECTS")
    if not r["server_alive"]:
        marks.append("DIED")
    if r["noisy"]:
        marks.append(noisy_mark(r["cpu_window"]))
    drain = f"{r['drain_s']:.2f} s" if r["drain_s"] is not None else "timeout"
    return (f"  {r['mode']:>3} {r['case']:<11} {fmt_rate(r['offered_per_s']):>6}/s: accepted "
            f"{fmt_rate(r['accepted_per_s'])}/s, refused {fmt_rate(r['refused_per_s'])}/s, held back "
            f"{r['held_back']:,}, RSS peak {r['rss_peak_bytes'] / MiB:.0f} MiB{ceil} (start "
            f"{r['rss_start_bytes'] / MiB:.0f}; kernel send queues {r['kernel_send_queue_peak_bytes'] / MiB:.0f}), "
            f"deliveries {r['deliveries']:,}/{r['expected_deliveries']:,} "
            f"missing {r['missing']} dup {r['duplicates']} unexpected {r['unexpected']}, drain {drain}, "
            f"3008 {r['slow_disconnects_3008']}, relay CPU {r['relay_cpu_pct_flood']:.0f}%, "
            f"gen CPU {r['generator_cpu_pct']:.0f}% (pub {r['publisher_cpu_pct']:.0f}%)"
            + (f"  {' '.join(marks)}" if marks else ""))


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser("relay publisher backpressure under a publish flood", __doc__)
    ap.add_argument("--quick", action="store_true", help="short run, small numbers (under a minute)")
    ap.add_argument("--subscribers", type=int, help="WebSocket subscribers (default 1000; quick 200)")
    ap.add_argument("--workers", type=int, default=2, help="subscriber worker processes (default 2)")
    ap.add_argument("--channels", type=int, default=4, help="channels feed:c0..; subscriber i on i %% channels")
    ap.add_argument("--payload", type=int, default=512, help="bytes of each publication's data (default 512)")
    ap.add_argument("--method", choices=("publish", "broadcast"), default="broadcast",
                    help="broadcast (default): one request publishes to every channel; publish: one channel each")
    ap.add_argument("--conns", type=int, default=32, help="publisher keep-alive HTTP connections (default 32)")
    ap.add_argument("--depth", type=int, default=8, help="requests pipelined per connection at most (default 8)")
    ap.add_argument("--capacity", type=float, help="skip the ramp: capacity in requests/s")
    ap.add_argument("--start-rate", type=float, help="first ramp step, requests/s (default 100; quick 500)")
    ap.add_argument("--factor-step", type=float, default=1.5, help="ramp: rate multiplier per step")
    ap.add_argument("--steps", type=int, default=12, help="ramp: at most this many steps")
    ap.add_argument("--step-duration", type=float, help="ramp step seconds (default 3; quick 1.5)")
    ap.add_argument("--factors", help="flood rates as multiples of capacity, subscribers reading as fast as they "
                                      "can (default 3,5; quick none)")
    ap.add_argument("--duration", type=float, help="flood seconds (default 10; quick 3)")
    ap.add_argument("--queue-limit", type=int, default=32, help="on: backpressure_queue_bytes in MiB (default 32)")
    ap.add_argument("--headroom", type=int, default=96,
                    help="on: backpressure_memory_bytes = idle RSS + this many MiB (the ceiling; default 96)")
    ap.add_argument("--retry-after", type=float, default=1.0, help="backpressure_retry_after (default 1 s)")
    ap.add_argument("--send-buffer", type=int, default=128,
                    help="client_send_buffer in KiB, both runs (default 128; 0: the kernel's autotuning)")
    ap.add_argument("--drain-timeout", type=float, help="seconds to wait for the backlog (default 120; quick 30)")
    ap.add_argument("--rss-abort", type=int, default=6144,
                    help="off: stop the flood early when relay's RSS passes this many MiB (default 6144)")
    ap.add_argument("--rcvbuf", type=int, default=64,
                    help="SO_RCVBUF of each subscriber socket in KiB (default 64; 0: the kernel's autotuning)")
    ap.add_argument("--mss", type=int, default=8948,
                    help="TCP_MAXSEG of each subscriber socket (default 8948, a jumbo-frame network; 0: loopback's)")
    ap.add_argument("--stall-factors",
                    help="more floods (multiples of capacity) during which the subscribers stop reading, catching "
                         "up after it (default 5; quick 5); empty: none")
    ap.add_argument("--nice", type=int, default=5, help="niceness of the subscriber workers (default 5)")
    args = ap.parse_args(argv)
    q = args.quick
    args.subscribers = args.subscribers or (200 if q else 1000)
    args.start_rate = args.start_rate or (500.0 if q else 100.0)
    args.step_duration = args.step_duration or (1.5 if q else 3.0)
    args.duration = args.duration or (3.0 if q else 10.0)
    args.drain_timeout = args.drain_timeout or (30.0 if q else 120.0)
    args.workers = max(1, min(args.workers, args.subscribers))
    args.factors = [float(x) for x in (("" if q else "3,5") if args.factors is None else args.factors).split(",") if x]
    args.stall_factors = [float(x) for x in ("5" if args.stall_factors is None else args.stall_factors).split(",")
                          if x]

    pin_to(GENERATOR_CPU)
    raise_nofile()
    print(f"backpressure: relay on CPU 0, {args.subscribers} subscribers on {args.channels} channels and the "
          f"publisher ({args.conns} HTTP connections, {args.method}, {args.payload} B) on CPU {GENERATOR_CPU}"
          ,
          flush=True)
    probe = probe_capacity(args)
    cap = probe["capacity_per_s"]
    ceiling = probe["idle_rss_bytes"] + args.headroom * MiB
    print(f"  capacity {fmt_rate(cap)} {args.method}/s ({probe['source']}); on: backpressure_queue_bytes "
          f"{args.queue_limit} MiB, backpressure_memory_bytes {ceiling / MiB:.0f} MiB (idle "
          f"{probe['idle_rss_bytes'] / MiB:.0f} + {args.headroom})", flush=True)
    rows: list[dict[str, Any]] = []
    printed: list[str] = []
    cases = [(f, False) for f in args.factors] + [(f, True) for f in args.stall_factors]
    for factor, stall in cases:
        for mode in ("on", "off"):
            r = flood_run(mode, factor, stall, cap * factor, ceiling, args)
            rows.append(r)
            printed.append(line(r))
            print(printed[-1], flush=True)
    summary: dict[str, Any] = {"capacity_per_s": cap, "ceiling_bytes": ceiling,
                               "queue_limit_bytes": args.queue_limit * MiB, "cases": {}}
    print("comparison (on vs off, same flood):")
    for factor, stall in cases:
        on = next(r for r in rows if (r["factor"], r["stall"], r["mode"]) == (factor, stall, "on"))
        off = next(r for r in rows if (r["factor"], r["stall"], r["mode"]) == (factor, stall, "off"))
        s = {"on_peak_rss_bytes": on["rss_peak_bytes"], "off_peak_rss_bytes": off["rss_peak_bytes"],
             "on_under_ceiling": on["under_ceiling"], "off_over_ceiling_by_bytes": off["rss_peak_bytes"] - ceiling,
             "on_accepted_per_s": on["accepted_per_s"], "off_accepted_per_s": off["accepted_per_s"],
             "on_refused_per_s": on["refused_per_s"], "on_missing": on["missing"], "off_missing": off["missing"],
             "on_duplicates": on["duplicates"], "on_unexpected": on["unexpected"],
             "on_drain_s": on["drain_s"], "off_drain_s": off["drain_s"]}
        summary["cases"][on["case"]] = s
        txt = (f"  {on['case']}: peak RSS on {on['rss_peak_bytes'] / MiB:.0f} MiB "
               f"({'under' if on['under_ceiling'] else 'OVER'} the {ceiling / MiB:.0f} MiB ceiling) vs off "
               f"{off['rss_peak_bytes'] / MiB:.0f} MiB; accepted/s on {fmt_rate(on['accepted_per_s'])} vs off "
               f"{fmt_rate(off['accepted_per_s'])}; drain on "
               f"{on['drain_s'] if on['drain_s'] is None else round(on['drain_s'], 2)} s vs off "
               f"{off['drain_s'] if off['drain_s'] is None else round(off['drain_s'], 2)} s; missing on "
               f"{on['missing']} / off {off['missing']}")
        printed.append(txt)
        print(txt, flush=True)
    summary["all_on_under_ceiling"] = all(r["under_ceiling"] for r in rows if r["mode"] == "on")
    summary["missing_total"] = sum(r["missing"] for r in rows)
    summary["duplicates_total"] = sum(r["duplicates"] for r in rows)
    summary["unexpected_total"] = sum(r["unexpected"] for r in rows)
    definitions = {
        "accepted": "server API requests answered 200 (broadcast: each is publications_per_request publications)",
        "refused": "requests answered 429 (the connection then waits Retry-After seconds)",
        "held_back": "publications that fell due while their connection waited out a Retry-After: not sent",
        "queue_full": "publications not sent because their connection already had --depth requests unanswered",
        "missing": "(accepted publication, subscriber of its channel) pairs never delivered",
        "duplicates": "deliveries beyond the first of the same publication to the same subscriber",
        "unexpected": "distinct publications delivered although not accepted (refused or never sent)",
        "drain_s": "seconds from the flood's last request until every subscriber had every accepted publication",
        "rss_peak_bytes": "highest relay RSS (/proc statm, every 100 ms) from the flood's start to the drain's end",
        "ceiling_bytes": "backpressure_memory_bytes of the on run: idle RSS with the subscribers + --headroom",
        "capacity_per_s": "highest ramp step (backpressure off) whose subscribers ended < 250 ms behind",
    }
    save_result("backpressure", {
        "kind": "backpressure", "machine": machine_description(), "args": vars(args), "definitions": definitions,
        "capacity": probe, "results": rows, "summary": summary, "printed": printed})
    return 0


if __name__ == "__main__":
    sys.exit(main())

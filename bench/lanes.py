"""Priority lanes under a bulk flood: fast clients' chat latency and slow clients' chat loss, lanes on and off.

Issue 11: "1,000 subscribers, 5 % of them behind a bandwidth-limited proxy, a bulk flood plus chat
traffic: fast clients' chat p99 and slow clients' chat loss (goal 0), against the same run with lanes
off." (docs/lanes.md)

Set-up, run twice in one invocation (``lanes = true``, then ``lanes = false`` as the baseline), with a
fresh relay, proxy, clients and publisher each time and everything else the same:

* relay on CPU 0 (``taskset``, compiled core: its start line must say ``core=cython``) with namespaces
  ``prices`` (``lane = "bulk"``, no history) and ``chat`` (``lane = "chat"``, ``history_size`` 100,
  ``force_recovery``), both ``publish_access = "authenticated"``; the queue limits scaled down so that a
  run is short (``--queue-max``, ``--update-limit``, ``--bulk-limit``, ``--high-water``); ``ping_interval``
  120 s so a ping stuck behind a slow client's backlog does not close it with 3012 (the run is about 3008
  and 2500);
* ``--clients`` WebSocket clients (default 1,000) in ``--workers`` generator processes on CPU 1 (picows
  client framing, ``common.run_worker``: they die with this process). Client i subscribes to
  ``prices:all`` and its own ``chat:<i>``. Every 20th client (``--slow-fraction`` 5 %) connects through
  ``throttle.py``, a TCP proxy in its own process on CPU 1 that forwards relay -> client at ``--slow-rate``
  bytes/s per connection (token bucket), stops reading from relay while it holds more than 4 KiB for that
  client, and has a 4 KiB ``SO_RCVBUF`` on its relay side, so relay's socket fills and its writes pause;
* the clients behave like an SDK: after a 2500 "insufficient state" unsubscribe they resubscribe at once;
  a subscribe answered 111 (catching up) is retried after 0.5-1 s; a client closed by relay (3008 slow,
  or anything else) reconnects after 0.5-1 s and resubscribes, ``chat:<i>`` with ``recover: true`` from
  the last offset and epoch it saw;
* one publisher connection (its own process on CPU 1) sends, on an absolute schedule of ``--tick-hz``
  frames/s, ``--bulk-rate`` publications/s of ``--bulk-size`` bytes to ``prices:all`` (the flood: every
  client gets them) and ``--chat-rate`` publications/s to every ``chat:<i>`` (round-robin), each stamped
  ``T=<unix ns>;K=<i>;S=<seq>;``. It publishes from the start of the warm-up to the end of the measured
  window, then stops; the run waits until every chat stamped in the window has arrived, deliveries stop
  for 5 s, or ``--drain-timeout``.

Figures per mode (chats are counted by stamp: published inside the window):

* fast clients' chat latency p50/p99/max (receive time - stamp);
* slow clients' chats: delivered live, recovered (in a subscribe reply after a reconnect or resubscribe,
  latency reported apart), duplicates, and **lost** = published to them in the window and never arrived
  by the end of the drain; slow clients with any loss;
* events over the whole run, per class (fast / slow): closes by code (3008 slow), 2500 unsubscribes,
  111 replies, reconnects, recoveries that failed;
* bulk publications delivered to fast and slow clients (by stamp in the window, and per client per second);
* relay CPU per delivery (utime+stime over the window / bulk + chat deliveries received in it), generator
  CPU, and relay's own counters over the run: ``relay_lane_drops_total``, ``relay_lane_resyncs_total``,
  ``relay_slow_consumer_disconnects_total``, and the highest ``relay_outbound_queue_bytes`` seen (sampled
  every half second), which shows relay really saw paused writes.

Prints one line per mode and the comparison, writes bench/results/lanes-<timestamp>.json.
Run: ``.venv/bin/python bench/lanes.py`` (~4 minutes; ``--quick``: 200 clients, scaled limits, under a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import throttle  # noqa: E402
from common import (GENERATOR_CPU, RelayServer, bench_parser, machine_description, pin_to,  # noqa: E402
                    quick_defaults, raise_nofile, save_result)
from histogram import Histogram  # noqa: E402
from lanes_workers import BULK_CHANNEL, FAST, RETRY_BACKOFF, SLOW, clients_worker, publisher_worker  # noqa: E402
from scenarios_common import (CpuWindow, Printer, WorkerPool, banner, fmt_ms, noisy_mark, per_unit,  # noqa: E402
                              percentiles, sleep_until_ns)

__all__ = ["BULK_CHANNEL", "NAMESPACES", "relay_config", "run_mode", "format_line", "compare", "main"]

NAMESPACES = {
    "prices": {"lane": "bulk", "publish_access": "authenticated"},
    "chat": {"lane": "chat", "publish_access": "authenticated", "history_size": 100, "history_ttl": 600,
             "force_recovery": True},
}
CLASSES = ("fast", "slow")
PROXY_RCVBUF = 4096        #: SO_RCVBUF of the proxy's relay-side sockets
PROXY_BUFFER = 4096        #: bytes the proxy holds per slow client before it stops reading from relay
STALL_S = 5.0              #: the drain ends when nothing at all arrived (nor passed the proxy) for this long


def relay_config(args: argparse.Namespace, lanes: bool) -> dict[str, Any]:
    return {"lanes": lanes, "client_queue_max_size": args.queue_max, "client_queue_update_limit": args.update_limit,
            "client_queue_bulk_limit": args.bulk_limit, "client_write_high_water": args.high_water,
            "ping_interval": 120.0, "namespaces": NAMESPACES}


def is_slow(i: int, fraction: float) -> bool:
    """Spread the slow clients evenly: client i is slow when i * fraction crosses an integer."""
    return int((i + 1) * fraction) > int(i * fraction)


# ------------------------------------------------------------------------------------------------
# one mode
# ------------------------------------------------------------------------------------------------

_METRICS = ("relay_lane_drops_total", "relay_lane_resyncs_total", "relay_slow_consumer_disconnects_total",
            "relay_deliveries_total")


def _scrape(server: RelayServer) -> dict[str, Any]:
    try:
        m = server.metrics()
    except Exception as e:  # the figure is reported as missing, the run goes on
        return {"error": f"{type(e).__name__}: {e}"}
    out: dict[str, Any] = {name: m.total(name) for name in _METRICS}
    out["relay_outbound_queue_bytes"] = m.total("relay_outbound_queue_bytes")
    out["relay_disconnects_total"] = {dict(labels).get("code", "?"): v for (n, labels), v in m.values.items()
                                      if n == "relay_disconnects_total" and v}
    out["relay_lane_drops_total_by_lane"] = {dict(labels).get("lane", "?"): v for (n, labels), v in m.values.items()
                                             if n == "relay_lane_drops_total" and v}
    return out


def _delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {k: round(b[k] - a.get(k, 0.0), 1) for k in _METRICS if k in b}


def _merge_events(reports: list[dict[str, Any]]) -> list[dict[str, int]]:
    out: list[dict[str, int]] = [{}, {}]
    for r in reports:
        for k in (FAST, SLOW):
            for name, n in r["events"][k].items():
                out[k][name] = out[k].get(name, 0) + n
    return [dict(sorted(e.items())) for e in out]


async def run_mode(args: argparse.Namespace, lanes: bool, out: Printer) -> dict[str, Any]:
    """One fresh relay, proxy, client set and publisher; the figures of one mode."""
    mode = "on" if lanes else "off"
    server = RelayServer(name=f"relay-lanes-{mode}", extra_config=relay_config(args, lanes))
    await asyncio.to_thread(server.start)
    pools: list[WorkerPool] = []
    proxy = None
    try:
        core = server.core()
        out(f"  [lanes {mode}: relay core={core} pid={server.pid}]")
        proxy, proxy_port = await asyncio.to_thread(
            throttle.start, ("127.0.0.1", server.ws_port), args.slow_rate, PROXY_RCVBUF, PROXY_BUFFER)
        pools.append(proxy)
        token = server.token()
        relay_url = server.ws_url
        proxy_url = f"ws://127.0.0.1:{proxy_port}/connection/websocket"
        slow_set = {i for i in range(args.clients) if is_slow(i, args.slow_fraction)}
        plan = [(i, i in slow_set) for i in range(args.clients)]
        shares = [plan[w::args.workers] for w in range(args.workers)]
        t0 = time.monotonic()
        clients = WorkerPool(clients_worker, [(relay_url, proxy_url, token, share) for share in shares])
        pools.append(clients)
        ready = await asyncio.to_thread(clients.recv_all, 180)
        n_ok = sum(r[1] for r in ready)
        errors = [e for r in ready for e in r[2]]
        out(f"  [lanes {mode}: {n_ok}/{args.clients} clients connected and subscribed ({len(slow_set)} through the"
            f" {args.slow_rate / 1024:g} KiB/s proxy) in {time.monotonic() - t0:.1f}s]"
            + (f" {errors[:1]}" if errors else ""))
        if n_ok < args.clients:
            raise SystemExit(f"lanes {mode}: not every client connected: " + "; ".join(errors[:2]))
        pub = WorkerPool(publisher_worker, [(relay_url, token, args.clients, args.chat_rate, args.bulk_rate,
                                              args.bulk_size, args.chat_size, args.tick_hz)])
        pools.append(pub)
        await asyncio.to_thread(pub.recv_all, 60)

        start_ns = time.time_ns() + 300_000_000
        ws = start_ns + int(args.warmup * 1e9)
        we = ws + int(args.duration * 1e9)
        await asyncio.to_thread(clients.all, "window", ws, we)
        await asyncio.to_thread(pub.all, "run", start_ns, ws, we)
        m_start = await asyncio.to_thread(_scrape, server)
        cpu = CpuWindow(server.cpu_times, lambda: [p for pool in pools for p in pool.pids])
        await sleep_until_ns(ws)
        cpu.mark("start")
        queue_max = 0.0
        while time.time_ns() < we - 500_000_000:
            m = await asyncio.to_thread(_scrape, server)
            queue_max = max(queue_max, m.get("relay_outbound_queue_bytes", 0.0))
            await asyncio.sleep(min(0.5, max(0.0, (we - time.time_ns()) / 1e9 - 0.5)))
        await sleep_until_ns(we)
        cpu.mark("end")
        m_window_end = await asyncio.to_thread(_scrape, server)

        # drain: every chat stamped in the window arrived, or nothing at all arrived for STALL_S, or the timeout
        await asyncio.sleep(0.3)
        (_, prep), = await asyncio.to_thread(pub.all, "report")
        per_channel_pub = prep["per_channel"]
        expected = [sum(n for i, n in enumerate(per_channel_pub) if (i in slow_set) == bool(k)) for k in (FAST, SLOW)]
        t_drain = time.monotonic()
        last_total, last_change = -1, t_drain
        drain: dict[str, Any] = {}
        while True:
            counts = await asyncio.to_thread(clients.all, "count")
            got = [sum(c[1][k] for c in counts) for k in (FAST, SLOW)]
            # progress: deliveries, or bytes still trickling through the proxy (relay writes a backlog as
            # one WebSocket frame, which a slow client may need many seconds to receive)
            (_, ps), = await asyncio.to_thread(proxy.all, "stats")
            total = sum(c[2] for c in counts) + ps["bytes_to_client"]
            now = time.monotonic()
            if got[FAST] >= expected[FAST] and got[SLOW] >= expected[SLOW]:
                drain = {"complete": True, "stalled": False, "timed_out": False}
                break
            if total != last_total:
                last_total, last_change = total, now
            if now - last_change > STALL_S:
                drain = {"complete": False, "stalled": True, "timed_out": False}
                break
            if now - t_drain > args.drain_timeout:
                drain = {"complete": False, "stalled": False, "timed_out": True}
                break
            m = await asyncio.to_thread(_scrape, server)
            queue_max = max(queue_max, m.get("relay_outbound_queue_bytes", 0.0))
            await asyncio.sleep(0.5)
        drain["drain_s"] = round(time.monotonic() - t_drain, 2)
        m_end = await asyncio.to_thread(_scrape, server)
        reports = [r[1] for r in await asyncio.to_thread(clients.all, "report")]
        (_, pstats), = await asyncio.to_thread(proxy.all, "stats")
        await asyncio.to_thread(clients.all, "close")
    finally:
        for pool in reversed(pools):
            await asyncio.to_thread(pool.close)
        alive = server.alive()
        if not alive:
            out(f"  relay log tail:\n{server.log()[-2000:]}")
        server.cleanup()

    def total(key: str, k: int) -> int:
        return sum(r[key][k] for r in reports)

    def hist(key: str, k: int) -> dict[str, Any]:
        h = Histogram()
        for r in reports:
            h.merge_sparse(r[key][k])
        return percentiles(h)

    per_channel: dict[int, int] = {}
    for r in reports:
        per_channel.update(r["per_channel"])
    n_slow, n_fast = len(slow_set), args.clients - len(slow_set)
    lost = [max(0, expected[k] - total("chat_unique", k)) for k in (FAST, SLOW)]
    lossy = [sum(1 for i in range(args.clients) if (i in slow_set) == bool(k)
                 and per_channel.get(i, 0) < per_channel_pub[i]) for k in (FAST, SLOW)]
    figures = cpu.figures()
    deliveries = sum(total("bulk_recv_win", k) + total("chat_recv_win", k) for k in (FAST, SLOW))
    events = _merge_events(reports)
    classes: dict[str, Any] = {}
    for k, name in enumerate(CLASSES):
        n = n_slow if k == SLOW else n_fast
        ev = events[k]
        classes[name] = {
            "clients": n,
            "chats_published_in_window": expected[k], "chats_delivered": total("chat_unique", k),
            "chats_live": total("chat_live", k), "chats_recovered": total("chat_recovered", k),
            "chats_lost": lost[k], "chat_loss": round(lost[k] / expected[k], 6) if expected[k] else None,
            "clients_with_loss": lossy[k], "chat_duplicates": total("chat_dups", k),
            "chat_latency_ms": hist("h_live", k), "recovered_chat_latency_ms": hist("h_recovered", k),
            "bulk_delivered_in_window": total("bulk_stamp_win", k),
            "bulk_expected_in_window": prep["bulk_in_window"] * n,
            "bulk_delivery_ratio": round(total("bulk_stamp_win", k) / (prep["bulk_in_window"] * n), 4)
            if prep["bulk_in_window"] and n else None,
            "bulk_per_client_per_s": round(total("bulk_recv_win", k) / n / args.duration, 2) if n else None,
            "bulk_latency_ms": hist("h_bulk", k),
            "closes_3008": ev.get("close_3008", 0),  # with the close frame; relay's own count is in relay_metrics
            "disconnects": sum(v for name, v in ev.items() if name.startswith("close_")),
            "closes": {name[6:]: v for name, v in ev.items() if name.startswith("close_")},
            "unsub_2500": ev.get("unsub_2500_bulk", 0) + ev.get("unsub_2500_chat", 0),
            "unsub_2500_chat": ev.get("unsub_2500_chat", 0),
            "err_111": ev.get("err_111_bulk", 0) + ev.get("err_111_chat", 0),
            "reconnects": ev.get("reconnects", 0), "recovered_subscribes": ev.get("recovered", 0),
            "recover_failed": ev.get("recover_failed", 0),
            "events": ev,
        }
    r: dict[str, Any] = {
        "mode": f"lanes {mode}", "lanes": lanes, "server": server.name, "relay_core": core,
        "clients": args.clients, "slow_clients": n_slow,
        "published": {k: prep.get(k) for k in ("chat_sent", "bulk_sent", "chat_in_window", "bulk_in_window",
                                               "max_late_ms", "replies", "errors", "error_sample", "disconnected")},
        "fast": classes["fast"], "slow": classes["slow"],
        "drain": drain,
        "deliveries_received_in_window": deliveries,
        "deliveries_per_s": round(deliveries / args.duration, 1),
        **figures, **per_unit(figures, deliveries, "delivery", "deliveries"),
        "relay_metrics": {"window": _delta(m_start, m_window_end), "run": _delta(m_start, m_end),
                          "lane_drops_by_lane": m_end.get("relay_lane_drops_total_by_lane", {}),
                          "disconnects_by_code": m_end.get("relay_disconnects_total", {}),
                          "outbound_queue_bytes_max": queue_max},
        "proxy": pstats,
        "client_samples": [s for rr in reports for s in rr["samples"]][:5],
        "server_alive": alive,
    }
    rm = r["relay_metrics"]
    r["backlog_seen"] = bool(rm["outbound_queue_bytes_max"] or rm["run"].get("relay_lane_drops_total")
                             or rm["run"].get("relay_slow_consumer_disconnects_total"))
    r["marks"] = marks(r)
    return r


def marks(r: dict[str, Any]) -> list[str]:
    out = []
    if r["generator_limited"]:
        out.append("GENERATOR-LIMITED")
    if r["slow"]["chats_lost"]:
        out.append(f"SLOW-CHAT-LOSS={r['slow']['chats_lost']}")
    if r["fast"]["chats_lost"]:
        out.append(f"FAST-CHAT-LOSS={r['fast']['chats_lost']}")
    if r["fast"]["closes"]:
        out.append(f"FAST-DISCONNECTS={r['fast']['closes']}")
    if r["published"]["errors"]:
        out.append(f"PUBLISH-ERRORS={r['published']['errors']}")
    if r["published"]["replies"] < r["published"]["chat_sent"] + r["published"]["bulk_sent"] - 200:
        out.append(f"PUBLISHER-STALLED(replies {r['published']['replies']})")
    if not r["backlog_seen"]:
        out.append("NO-BACKLOG(relay never saw a paused write: the proxy did not slow it down)")
    if r["drain"].get("timed_out"):
        out.append("DRAIN-TIMEOUT")
    if not r["server_alive"]:
        out.append("SERVER-DIED")
    if r["noisy"]:
        out.append(noisy_mark(r))
    return out


def format_line(r: dict[str, Any]) -> str:
    f, s = r["fast"], r["slow"]
    fl, sl, sr = f["chat_latency_ms"], s["chat_latency_ms"], s["recovered_chat_latency_ms"]
    rm = r["relay_metrics"]["run"]
    cpu = r["server_cpu_us_per_delivery"]
    return (f"  {r['mode']:<9} fast chat p50 {fmt_ms(fl['p50'])} p99 {fmt_ms(fl['p99'])} max {fmt_ms(fl['max'])} ms"
            f" | slow chat {s['chats_delivered']}/{s['chats_published_in_window']} (lost {s['chats_lost']},"
            f" recovered {s['chats_recovered']}) p50 {fmt_ms(sl['p50'])} p99 {fmt_ms(sl['p99'])} ms"
            f" recovered p99 {fmt_ms(sr['p99'])} ms"
            f" | slow: closed {s['disconnects']}"
            f" (relay 3008s {rm.get('relay_slow_consumer_disconnects_total', 0):.0f}),"
            f" 2500 {s['unsub_2500']}, 111 {s['err_111']}, reconnects {s['reconnects']}"
            f" | bulk/client/s fast {f['bulk_per_client_per_s']} slow {s['bulk_per_client_per_s']}"
            f" | relay CPU {'-' if cpu is None else f'{cpu:.2f}'} us/deliv ({r['server_cpu_pct']:.0f}% core),"
            f" lane drops {rm.get('relay_lane_drops_total', 0):.0f},"
            f" queue max {r['relay_metrics']['outbound_queue_bytes_max'] / 1024:.0f} KiB"
            f" | gen CPU {r['generator_cpu_pct']:.0f}%"
            + ("  " + " ".join(r["marks"]) if r["marks"] else ""))


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def compare(on: dict[str, Any], off: dict[str, Any]) -> dict[str, Any]:
    """Lanes on against lanes off (the baseline of the same run)."""
    fo, ff = on["fast"]["chat_latency_ms"], off["fast"]["chat_latency_ms"]
    so, sf = on["slow"], off["slow"]
    return {
        "fast_chat_p99_ms": [fo["p99"], ff["p99"]], "fast_chat_p99_on_over_off": _ratio(fo["p99"], ff["p99"]),
        "fast_chat_p50_ms": [fo["p50"], ff["p50"]], "fast_chat_max_ms": [fo["max"], ff["max"]],
        "slow_chat_loss": [so["chat_loss"], sf["chat_loss"]], "slow_chats_lost": [so["chats_lost"], sf["chats_lost"]],
        "slow_chats_recovered": [so["chats_recovered"], sf["chats_recovered"]],
        "slow_chat_p99_ms": [so["chat_latency_ms"]["p99"], sf["chat_latency_ms"]["p99"]],
        "slow_recovered_chat_p99_ms": [so["recovered_chat_latency_ms"]["p99"], sf["recovered_chat_latency_ms"]["p99"]],
        "slow_disconnects": [so["disconnects"], sf["disconnects"]],
        "relay_3008": [on["relay_metrics"]["run"].get("relay_slow_consumer_disconnects_total"),
                       off["relay_metrics"]["run"].get("relay_slow_consumer_disconnects_total")],
        "slow_2500": [so["unsub_2500"], sf["unsub_2500"]],
        "slow_bulk_per_client_per_s": [so["bulk_per_client_per_s"], sf["bulk_per_client_per_s"]],
        "fast_bulk_delivery_ratio": [on["fast"]["bulk_delivery_ratio"], off["fast"]["bulk_delivery_ratio"]],
        "relay_cpu_us_per_delivery": [on["server_cpu_us_per_delivery"], off["server_cpu_us_per_delivery"]],
        "relay_cpu_on_over_off": _ratio(on["server_cpu_us_per_delivery"], off["server_cpu_us_per_delivery"]),
        "goal_slow_chat_loss_zero_with_lanes": so["chats_lost"] == 0 and so["chats_published_in_window"] > 0,
    }


def compare_lines(c: dict[str, Any]) -> list[str]:
    def pair(key: str, f=str) -> str:
        a, b = c[key]
        return f"{f(a)} vs {f(b)}"

    def loss(x: float | None) -> str:
        return "-" if x is None else "0" if x == 0 else f"{x:.3%}"

    def us(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f} us"

    ratio = "-" if c["fast_chat_p99_on_over_off"] is None else f"{c['fast_chat_p99_on_over_off']:.2f}x"
    return [
        f"  fast clients' chat p99: {pair('fast_chat_p99_ms', fmt_ms)} ms (lanes on / off {ratio}),"
        f" p50 {pair('fast_chat_p50_ms', fmt_ms)} ms, max {pair('fast_chat_max_ms', fmt_ms)} ms",
        f"  slow clients' chat loss: {pair('slow_chat_loss', loss)} (lost {pair('slow_chats_lost')}; recovered after"
        f" a reconnect {pair('slow_chats_recovered')}); live chat p99 {pair('slow_chat_p99_ms', fmt_ms)} ms,"
        f" recovered p99 {pair('slow_recovered_chat_p99_ms', fmt_ms)} ms",
        f"  slow clients: disconnected {pair('slow_disconnects')} (relay's 3008s {pair('relay_3008')}),"
        f" 2500 unsubscribes {pair('slow_2500')},"
        f" bulk per client per s {pair('slow_bulk_per_client_per_s')}",
        f"  relay CPU per delivery {pair('relay_cpu_us_per_delivery', us)}"
        f" (on / off {c['relay_cpu_on_over_off'] or '-'}); fast clients' bulk delivered"
        f" {pair('fast_bulk_delivery_ratio')}",
        "  goal (slow clients lose no chat with lanes on): "
        + ("MET" if c["goal_slow_chat_loss_zero_with_lanes"] else "NOT MET"),
    ]


async def amain(args: argparse.Namespace) -> int:
    pin_to(GENERATOR_CPU)
    raise_nofile()
    out = Printer()
    machine = machine_description()
    out(banner(machine))
    n_slow = sum(1 for i in range(args.clients) if is_slow(i, args.slow_fraction))
    out(f"lanes: {args.clients} clients ({n_slow} slow, behind a {args.slow_rate / 1024:g} KiB/s proxy) over"
        f" {args.workers} generator processes; bulk {args.bulk_rate:g}/s x {args.bulk_size} B to {BULK_CHANNEL}"
        f" (~{args.bulk_rate * (args.bulk_size + 60) / 1024:.0f} KiB/s per client), chat {args.chat_rate:g}/s to"
        f" each chat:<i>; queue cap {args.queue_max // 1024} KiB, update {args.update_limit // 1024} KiB,"
        f" bulk {args.bulk_limit // 1024} KiB, high water {args.high_water // 1024} KiB; window {args.duration:g}s"
        f" after {args.warmup:g}s warm-up; relay on CPU 0, generator, publisher and proxy on CPU {GENERATOR_CPU}")
    results: list[dict[str, Any]] = []
    for lanes in (True, False):
        r = await run_mode(args, lanes, out)
        results.append(r)
        out(format_line(r))
    c = compare(results[0], results[1])
    out("lanes on vs off (same run):")
    for line in compare_lines(c):
        out(line)
    save_result("lanes", {
        "machine": machine, "args": vars(args), "scenario": "lanes",
        "config": {"namespaces": NAMESPACES, "relay": {k: v for k, v in relay_config(args, True).items()
                                                       if k not in ("namespaces", "lanes")},
                   "proxy": {"rate_bytes_per_s": args.slow_rate, "rcvbuf": PROXY_RCVBUF,
                             "buffer_limit": PROXY_BUFFER, "tick_s": throttle.TICK},
                   "retry_backoff_s": RETRY_BACKOFF},
        "definitions": {
            "chats_published_in_window": "chat publications stamped inside the measured window, to that class's "
                                         "channels (one chat:<i> per client)",
            "chats_lost": "published in the window and never delivered (live or recovered) by the end of the drain",
            "chats_recovered": "first delivered in a subscribe reply (recover: true) after a reconnect or resubscribe",
            "chat_latency_ms": "receive time - stamp of chats delivered live (recovered ones: "
                               "recovered_chat_latency_ms)",
            "server_cpu_us_per_delivery": "relay utime+stime over the window / bulk + chat deliveries received in it",
            "events": "over the whole run (warm-up, window, drain), per class",
        },
        "results": results, "summary": c, "printed": out.lines})
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser("priority lanes: a bulk flood, chats, 5 % slow clients; lanes on vs off", __doc__)
    ap.add_argument("--clients", type=int, default=None, help="subscribers (default 1,000; --quick 200)")
    ap.add_argument("--slow-fraction", type=float, default=0.05, help="share behind the slow proxy (default 0.05)")
    ap.add_argument("--slow-rate", type=float, default=8192, help="proxy bandwidth per slow client, bytes/s (8192)")
    ap.add_argument("--bulk-rate", type=float, default=50.0, help="bulk publications/s to prices:all (50)")
    ap.add_argument("--bulk-size", type=int, default=400, help="bulk payload bytes (400)")
    ap.add_argument("--chat-rate", type=float, default=1.0, help="chats/s to each client's chat channel (1)")
    ap.add_argument("--chat-size", type=int, default=100, help="chat payload bytes (100)")
    ap.add_argument("--tick-hz", type=float, default=20.0, help="publisher frames per second (20)")
    ap.add_argument("--queue-max", type=int, default=None, help="client_queue_max_size (256 KiB; --quick 64 KiB)")
    ap.add_argument("--update-limit", type=int, default=None, help="client_queue_update_limit (a quarter of the cap)")
    ap.add_argument("--bulk-limit", type=int, default=None, help="client_queue_bulk_limit (an eighth of the cap)")
    ap.add_argument("--high-water", type=int, default=16384, help="client_write_high_water (16 KiB)")
    ap.add_argument("--workers", type=int, default=None, help="client generator processes (default 2; --quick 1)")
    ap.add_argument("--duration", type=float, default=None, help="measured window in seconds (40; --quick 10)")
    ap.add_argument("--warmup", type=float, default=None, help="seconds of traffic before the window (5; --quick 2)")
    ap.add_argument("--drain-timeout", type=float, default=None, help="seconds to wait for late chats (60; --quick 20)")
    ap.add_argument("--quick", action="store_true", help="200 clients, a 64 KiB cap, 10 s windows (smoke test)")
    args = ap.parse_args(argv)
    quick_defaults(args, ("clients", 1000, 200), ("queue_max", 256 * 1024, 64 * 1024), ("workers", 2, 1),
                   ("duration", 40.0, 10.0), ("warmup", 5.0, 2.0), ("drain_timeout", 60.0, 20.0))
    if args.update_limit is None:
        args.update_limit = args.queue_max // 4
    if args.bulk_limit is None:
        args.bulk_limit = args.queue_max // 8
    if args.clients < 2 or not 0 < args.slow_fraction < 1:
        ap.error("--clients >= 2 and 0 < --slow-fraction < 1")
    import uvloop

    return uvloop.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())

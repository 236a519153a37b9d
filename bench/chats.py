"""Many small channels: 1:1 chats over relay's client protocol (relay only).

C chats (``--chats``, default 2,000), two members each, so 2C WebSocket connections.
Chat i is channel ``chat:c<i>`` in a ``chat`` namespace with ``publish_access =
"subscribers"`` and no presence or join/leave. Both members connect (JWT) and subscribe.

Offered load: total chat messages per second across all chats, in rising steps (default
1k, 2k, 5k, 10k, 20k, 40k msg/s; heavier steps are skipped once one saturated). Each
message is a ``publish`` command sent by ONE member from its own connection (round-robin
over every member of every chat, so both members of a chat take turns), so relay's
whole client path is measured: read and parse the command, check the permission, fan out
to the channel's two subscribers, reply to the publisher. Relay delivers each message to
both members (the publisher is subscribed, so it gets its own message back as a push:
the "echo").

Counting (exact, by ``T=<unix ns>;`` stamp): the payload is ``T=<ns>;<a|b>;xxx…`` (100 B)
where a/b says which member sent it. A **delivery** is a push to the OTHER member; the
echo to the publisher is counted separately (``echo_*``) and is part of the cost:
``server_cpu_us_per_delivery`` = server CPU / other-member deliveries = CPU per chat
message (its command, reply, and both pushes); ``server_cpu_us_per_push`` divides by both
pushes. Loss = 1 - other-member deliveries / messages stamped in the window.

Generator: members are split over ``--workers`` processes (uvloop + picows client framing,
pinned to CPU 1), each publishing its share of the rate from its own members' connections
on an absolute schedule; its CPU (workers + this coordinator) is reported and a step over
90 % of the core is marked GENERATOR-LIMITED. Server (relay) on CPU 0.

Prints one line per step and a summary, writes bench/results/chats-<timestamp>.json.
Run: ``.venv/bin/python bench/chats.py`` (``--quick`` for a smoke test).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chats_workers import worker_main  # noqa: E402
from common import (GENERATOR_CPU, RelayServer, apply_run_defaults, fmt_rate, machine_description,  # noqa: E402
                    pin_to, raise_nofile, write_result)
from fanout import SATURATION_P50_MS, SATURATION_P99_MS  # noqa: E402
from histogram import Histogram  # noqa: E402
from loadgen import PAYLOAD_SIZE  # noqa: E402
from scenarios_common import (CpuWindow, Printer, WorkerPool, banner, fmt_ms, noisy_mark, per_unit,  # noqa: E402
                              percentiles, sleep_until_ns)

__all__ = ["CHAT_NAMESPACE", "DEFAULT_STEPS", "run_step", "format_line", "summary", "main"]

CHAT_NAMESPACE = {"chat": {"publish_access": "subscribers"}}  #: no presence, no join/leave (the defaults)
DEFAULT_STEPS = (1000, 2000, 5000, 10000, 20000, 40000)


# ------------------------------------------------------------------------------------------------
# coordinator
# ------------------------------------------------------------------------------------------------

class Members:
    """The chat members, ``2 * chats`` connections over ``workers`` processes."""

    def __init__(self, server: RelayServer, chats: int, workers: int) -> None:
        self.chats = chats
        workers = max(1, min(workers, chats))
        self.share = [chats // workers + (i < chats % workers) for i in range(workers)]
        token = server.token()
        args, first = [], 0
        for n in self.share:
            args.append((server.ws_url, token, first, n))
            first += n
        self.pool = WorkerPool(worker_main, args)
        self.connected = 0
        self.errors: list[str] = []

    def connect(self, timeout: float = 300.0) -> int:
        for _, ok, errors, n_err in self.pool.recv_all(timeout):
            self.connected += ok
            if n_err:
                self.errors.append(f"{n_err} connections failed, e.g. {errors}")
        return self.connected

    def close(self) -> None:
        try:
            self.pool.all("close", timeout=15)
        except (OSError, EOFError, TimeoutError):
            pass
        self.pool.close()


async def _drain(members: Members, server: RelayServer, timeout: float, stall: float = 3.0) -> dict[str, Any]:
    """Wait until each in-window message reached both members, deliveries stop for ``stall`` s, or ``timeout``."""
    t0 = time.monotonic()
    last_total, last_change = -1, t0
    while True:
        replies = await asyncio.to_thread(members.pool.all, "count")
        pub = sum(r[1] for r in replies)
        other = sum(r[2] for r in replies)
        echo = sum(r[3] for r in replies)
        total = sum(r[4] for r in replies)
        done = all(r[5] for r in replies)
        now = time.monotonic()
        if done and other >= pub and echo >= pub:
            return {"complete": True, "timed_out": False, "drain_s": round(now - t0, 2)}
        if total != last_total:
            last_total, last_change = total, now
        if done and (now - last_change > stall or not server.alive()):
            return {"complete": False, "timed_out": False, "drain_s": round(now - t0, 2)}
        if now - t0 > timeout:
            return {"complete": False, "timed_out": True, "drain_s": round(now - t0, 2)}
        await asyncio.sleep(0.2)


async def run_step(rate: float, server: RelayServer, members: Members, warmup: float, duration: float,
                   drain_timeout: float) -> dict[str, Any]:
    """Publish ``rate`` chat messages/s for warmup + duration, drain, return the step's figures."""
    start_ns = time.time_ns() + 300_000_000
    ws = start_ns + int(warmup * 1e9)
    we = ws + int(duration * 1e9)
    total_chats = sum(members.share)
    cmds = [("step", rate * n / total_chats, start_ns, ws, we) for n in members.share]
    await asyncio.to_thread(members.pool.each, cmds)
    cpu = CpuWindow(server.cpu_times, lambda: members.pool.pids)
    await sleep_until_ns(ws)
    cpu.mark("start")
    await sleep_until_ns(we)
    cpu.mark("end")
    drained = await _drain(members, server, drain_timeout)
    reports = [r[1] for r in await asyncio.to_thread(members.pool.all, "report")]

    def total(key: str) -> int:
        return sum(r[key] for r in reports)

    hist, hist_first, hist_second = Histogram(), Histogram(), Histogram()
    close_codes: dict[int, int] = {}
    for r in reports:
        hist.merge_sparse(r["hist"])
        hist_first.merge_sparse(r["hist_first"])
        hist_second.merge_sparse(r["hist_second"])
        for code, c in r["close_codes"].items():
            close_codes[code] = close_codes.get(code, 0) + c
    figures = cpu.figures()
    pub = total("pub_in_window")
    other, echo = total("other_in_window"), total("echo_in_window")
    recv, echo_recv = total("other_recv_in_window"), total("echo_recv_in_window")
    lat = percentiles(hist)
    p50_1, p50_2 = hist_first.percentile_ms(50), hist_second.percentile_ms(50)
    lat["p50_first_half"], lat["p50_second_half"] = p50_1, p50_2
    growing = p50_1 is not None and p50_2 is not None and p50_2 > 1.25 * p50_1 + 20.0
    saturated = (growing or drained["timed_out"] or (lat["p50"] is not None and lat["p50"] > SATURATION_P50_MS)
                 or (pub > 0 and other == 0 and total("lost") == 0))
    r: dict[str, Any] = {
        "server": server.name, "chats": members.chats, "connections": total("connections"),
        "offered_msgs_per_s": rate, "published": total("sent"), "published_in_window": pub,
        "msgs_per_s": round(pub / duration, 1) if duration else 0.0,
        "publisher_max_late_ms": round(max(r["max_late_ns"] for r in reports) / 1e6, 2),
        "expected_deliveries": pub, "delivered_in_window": other, "echo_delivered_in_window": echo,
        "received_in_window": recv, "echo_received_in_window": echo_recv,
        "frames_received_in_window": total("frames_in_window"),
        "deliveries_per_s": round(recv / duration, 1) if duration else 0.0,
        "pushes_per_s": round((recv + echo_recv) / duration, 1) if duration else 0.0,
        "loss": None if pub == 0 else max(0.0, 1.0 - other / pub),
        "echo_loss": None if pub == 0 else max(0.0, 1.0 - echo / pub),
        "drain": drained, "latency_ms": lat,
        **figures,
        **per_unit(figures, recv, "delivery", "deliveries"),
        "server_cpu_us_per_push": round(figures["server_cpu_s"] * 1e6 / (recv + echo_recv), 3)
        if recv + echo_recv else None,
        "saturated": bool(saturated),
        "publish_replies": total("replies"), "publish_errors": total("errors"),
        "publish_error_sample": next((r["error_sample"] for r in reports if r["error_sample"]), ""),
        "lost_connections": total("lost"), "close_codes": close_codes, "pings_answered": total("pings"),
        "server_alive": server.alive(),
    }
    r["marks"] = marks(r)
    return r


def marks(r: dict[str, Any]) -> list[str]:
    out = []
    if r["generator_limited"]:
        out.append("GENERATOR-LIMITED")
    if r["saturated"]:
        out.append("SATURATED")
    elif r["latency_ms"]["p99"] is not None and r["latency_ms"]["p99"] > SATURATION_P99_MS:
        out.append(f"p99>{SATURATION_P99_MS:g}ms")
    if not r["drain"]["complete"] and not r["drain"]["timed_out"]:
        out.append("LOSS")
    if r["lost_connections"]:
        out.append(f"DISCONNECTS={r['lost_connections']} codes={r['close_codes']}")
    if r["publish_errors"]:
        out.append(f"PUBLISH-ERRORS={r['publish_errors']}")
    if r["offered_msgs_per_s"] and r["msgs_per_s"] < 0.95 * r["offered_msgs_per_s"]:
        out.append("UNDER-OFFERED")  # the publishers fell behind their schedule
    if not r["server_alive"]:
        out.append("SERVER-DIED")
    if r["noisy"]:
        out.append(noisy_mark(r))
    return out


def format_line(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    loss = r["loss"]
    loss_s = ("-" if loss is None else "backlog" if r["drain"]["timed_out"]
              else "0" if loss <= 0 else f"{loss:.4%}")
    cpu = r["server_cpu_us_per_delivery"]
    cpu_si = r["server_cpu_incl_softirq_us_per_delivery"]
    return (f"  {fmt_rate(r['offered_msgs_per_s']):>5} msg/s offered: {fmt_rate(r['deliveries_per_s']):>6} deliv/s"
            f"  p50 {fmt_ms(lat['p50']):>5} p99 {fmt_ms(lat['p99']):>5} p99.9 {fmt_ms(lat['p99_9']):>5}"
            f" max {fmt_ms(lat['max']):>5} ms  loss {loss_s:<7}"
            f"  CPU {'-' if cpu is None else f'{cpu:.2f}':>6} us/deliv"
            f" [+softirq {'-' if cpu_si is None else f'{cpu_si:.2f}'}] ({r['server_cpu_pct']:3.0f}% core)"
            f"  gen CPU {r['generator_cpu_pct']:3.0f}%"
            + ("  " + " ".join(r["marks"]) if r["marks"] else ""))


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Highest clean step (no mark but NOISY), first saturated step, capacity per server core."""
    rows = [r for r in results if "skipped" not in r]
    clean = [r for r in rows if r["loss"] == 0 and not r["saturated"] and not r["generator_limited"]
             and r["server_alive"] and not r["lost_connections"] and not r["publish_errors"]
             and r["latency_ms"]["p99"] is not None and r["latency_ms"]["p99"] <= SATURATION_P99_MS]
    best = clean[-1] if clean else None
    sat = next((r for r in rows if r["saturated"]), None)
    cpus = [r["server_cpu_us_per_delivery"] for r in clean if r["server_cpu_us_per_delivery"]]
    out: dict[str, Any] = {
        "highest_clean_msgs_per_s": best["msgs_per_s"] if best else None,
        "highest_clean_deliveries_per_s": best["deliveries_per_s"] if best else None,
        "highest_clean_p99_ms": best["latency_ms"]["p99"] if best else None,
        "highest_clean_p99_9_ms": best["latency_ms"]["p99_9"] if best else None,
        "saturated_at_offered_msgs_per_s": sat["offered_msgs_per_s"] if sat else None,
        "saturated_deliveries_per_s": sat["deliveries_per_s"] if sat else None,
        "server_cpu_us_per_message": best["server_cpu_us_per_delivery"] if best else None,
        "server_cpu_incl_softirq_us_per_message": best["server_cpu_incl_softirq_us_per_delivery"] if best else None,
        # at the heaviest clean step: chat messages (each = 1 command + 2 pushes) per second of server CPU
        "messages_per_server_core_s": round(1e6 / best["server_cpu_us_per_delivery"], 1)
        if best and best["server_cpu_us_per_delivery"] else None,
        "messages_per_server_core_s_incl_softirq": round(1e6 / best["server_cpu_incl_softirq_us_per_delivery"], 1)
        if best and best["server_cpu_incl_softirq_us_per_delivery"] else None,
        "server_cpu_us_per_message_range": [min(cpus), max(cpus)] if cpus else None,
        "generator_limited_steps": [r["offered_msgs_per_s"] for r in rows if r["generator_limited"]],
    }
    return out


def summary_lines(s: dict[str, Any], chats: int) -> list[str]:
    lines = []
    if s["highest_clean_msgs_per_s"] is not None:
        lines.append(f"  highest clean step: {fmt_rate(s['highest_clean_msgs_per_s'])} msg/s over {chats} chats"
                     f" (p99 {fmt_ms(s['highest_clean_p99_ms'])} ms, p99.9 {fmt_ms(s['highest_clean_p99_9_ms'])} ms,"
                     f" loss 0); server CPU {s['server_cpu_us_per_message']:.2f} us per chat message"
                     f" (+softirq {s['server_cpu_incl_softirq_us_per_message'] or 0:.2f} us)"
                     f" = {fmt_rate(s['messages_per_server_core_s'] or 0)} messages per server core-second")
    else:
        lines.append("  no clean step (every step had a mark: see the lines above)")
    if s["saturated_at_offered_msgs_per_s"] is not None:
        lines.append(f"  saturated at {fmt_rate(s['saturated_at_offered_msgs_per_s'])} msg/s offered"
                     f" ({fmt_rate(s['saturated_deliveries_per_s'])} deliveries/s)")
    else:
        lines.append("  not saturated within the steps run")
    if s["generator_limited_steps"]:
        lines.append(f"  GENERATOR-LIMITED at {', '.join(fmt_rate(x) for x in s['generator_limited_steps'])}"
                     " msg/s: those figures are the generator's (CPU per delivery still holds)")
    return lines


async def amain(args: argparse.Namespace) -> int:
    pin_to(GENERATOR_CPU)
    raise_nofile()
    out = Printer()
    machine = machine_description()
    out(banner(machine))
    out(f"1:1 chats: {args.chats} chats x 2 members = {2 * args.chats} connections over {args.workers} generator"
        f" processes; relay on CPU 0, generator on CPU {GENERATOR_CPU}; window {args.duration:g}s after"
        f" {args.warmup:g}s warm-up; {PAYLOAD_SIZE} B payloads; a delivery = a push to the OTHER member"
        f" (the publisher's own echo is counted apart and charged to the message)")
    server = RelayServer(extra_config={"namespaces": CHAT_NAMESPACE})
    results: list[dict[str, Any]] = []
    await asyncio.to_thread(server.start)
    members: Members | None = None
    try:
        out(f"  [relay core={server.core()} pid={server.pid}]")
        t0 = time.monotonic()
        members = Members(server, args.chats, args.workers)
        n = await asyncio.to_thread(members.connect)
        out(f"  [{n}/{2 * args.chats} members connected and subscribed in {time.monotonic() - t0:.1f}s,"
            f" relay RSS {server.rss_bytes() / 2**20:.0f} MiB]" + (f" {members.errors[:1]}" if members.errors else ""))
        if n < 2 * args.chats:
            raise SystemExit("not every member connected: " + "; ".join(members.errors[:2]))
        await asyncio.sleep(0.5)
        for i, rate in enumerate(args.steps):
            r = await run_step(rate, server, members, args.warmup, args.duration, args.drain_timeout)
            results.append(r)
            out(format_line(r))
            if r["publish_errors"]:
                out(f"    first publish error: {r['publish_error_sample']}")
            if r["saturated"] or not r["server_alive"]:
                for later in args.steps[i + 1:]:
                    results.append({"server": server.name, "offered_msgs_per_s": later,
                                    "skipped": "saturated at a lighter step"})
                if args.steps[i + 1:]:
                    out("  heavier steps skipped (saturated)")
                break
    finally:
        if members is not None:
            await asyncio.to_thread(members.close)
        if not server.alive():
            out(f"  relay log tail:\n{server.log()[-2000:]}")
        server.cleanup()
    s = summary(results)
    out("summary:")
    for line in summary_lines(s, args.chats):
        out(line)
    path = write_result("chats", {
        "machine": machine, "args": vars(args), "scenario": "chats",
        "definitions": {
            "delivery": "a push to the chat's other member (the publisher's own echo is counted apart as echo_*)",
            "server_cpu_us_per_delivery": "relay utime+stime over the window / other-member deliveries received in"
                                          " it = CPU per chat message (publish command, reply, 2 pushes)",
            "server_cpu_us_per_push": "the same CPU / all pushes received (other member + echo)",
            "loss": "1 - other-member deliveries of messages stamped in the window / messages stamped in the window",
            "latency_ms": "receive time - stamp at the other member, messages stamped in the window",
        },
        "results": results, "summary": s, "printed": out.lines})
    print(f"results: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="1:1 chats: many two-member channels over relay's client protocol",
                                 epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chats", type=int, default=None, help="chats (2 connections each; default 2,000)")
    ap.add_argument("--steps", default=None,
                    help="offered msg/s across all chats, comma-separated (default "
                    + ",".join(map(str, DEFAULT_STEPS)) + ")")
    ap.add_argument("--workers", type=int, default=None, help="generator processes (default 4)")
    ap.add_argument("--duration", type=float, default=None, help="measured window in seconds (default 10)")
    ap.add_argument("--warmup", type=float, default=None, help="seconds before the window (default 2)")
    ap.add_argument("--drain-timeout", type=float, default=15.0, help="seconds to wait for the backlog")
    ap.add_argument("--quick", action="store_true", help="200 chats, 2 steps, 2 s windows (smoke test)")
    args = ap.parse_args(argv)
    if args.chats is None:
        args.chats = 200 if args.quick else 2000
    if args.workers is None:
        args.workers = 2 if args.quick else 4
    if args.steps is None:
        args.steps = list(DEFAULT_STEPS[:2] if args.quick else DEFAULT_STEPS)
    else:
        args.steps = [float(x) for x in args.steps.split(",") if x.strip()]
    apply_run_defaults(args, 10.0)
    import uvloop

    return uvloop.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())

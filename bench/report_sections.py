"""The benchmark report's Markdown (bench/report.py): one section per benchmark kind, the machine, and how to
reproduce every figure."""

from __future__ import annotations

import math
import os
import shlex
import sys
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report_format import (RELAY, fmt_ms, fmt_rate, fmt_us, fmt_x,  # noqa: E402
                           server_order)
from report_data import FAIL, NOT_MEASURED, PASS, Run, SCRIPTS, Step, num, pick, pnum  # noqa: E402


# ------------------------------------------------------------------------------------------------
# Markdown
# ------------------------------------------------------------------------------------------------

def table(header: list[str], rows: list[list[str]]) -> list[str]:
    def esc(c: str) -> str:
        return str(c).replace("|", "\\|").replace("\n", " ")

    return (["| " + " | ".join(map(esc, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
            + ["| " + " | ".join(map(esc, r)) + " |" for r in rows])


def _marks(s: Step) -> str:
    return (" " + " ".join(s.flags)) if s.flags else ""


def side_by_side(steps: list[Step], cell: Callable[[Step], str], first: str = "step") -> dict[str, list[str]]:
    """One table per group: a row per step label, a column per server."""
    out: dict[str, list[str]] = {}
    for group in dict.fromkeys(s.group for s in steps):
        gsteps = [s for s in steps if s.group == group]
        servers = server_order(s.server for s in gsteps)
        labels = sorted(dict.fromkeys(s.label for s in gsteps),
                        key=lambda lab: min(s.order for s in gsteps if s.label == lab))
        by = {(s.label, s.server): s for s in gsteps}
        rows = []
        for lab in labels:
            row = [lab]
            for srv in servers:
                s = by.get((lab, srv))
                row.append("–" if s is None else f"skipped ({s.skipped})" if s.skipped else cell(s))
            rows.append(row)
        out[group] = table([first] + servers, rows)
    return out


def _cell_delivery(s: Step) -> str:
    return (f"{fmt_rate(s.deliveries_per_s)}/s · p99 {fmt_ms(s.p99)} ms · {fmt_us(s.cpu_us)} µs"
            + (f" ({fmt_us(s.cpu_si_us)} +softirq)" if s.cpu_si_us and s.cpu_us and s.cpu_si_us > s.cpu_us * 1.005
               else "") + _marks(s))


FLAG_LEGEND = ("Marks: SAT saturated (latency grew through the window or a backlog outlived the drain), "
               "GEN generator-limited (the load generator's core was ≥ 90 % busy: deliveries/s and latency are "
               "the generator's, CPU per delivery still holds), LOSS deliveries stopped short, DISC the server "
               "closed connections, NOISY other tenants used > 5 % of a benchmark core, DIED the server exited, "
               "ERR publish or connect errors; other marks as the benchmark printed them; – not run.")


def _notes(run: Run) -> str:
    a = run.args
    bits = [f"`{run.path.name}` ({run.when})"]
    if run.quick:
        bits.append("**--quick run: small and short, for smoke testing, not for quoting**")
    if a.get("duration") is not None:
        bits.append(f"{a['duration']:g} s windows" if isinstance(a["duration"], int | float) else "")
    return "Source: " + ", ".join(b for b in bits if b) + "."


def _value(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower() if isinstance(v, bool) else "–"
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, list | tuple):
        return ", ".join(_value(x) for x in v) or "–"
    return str(v)


def _summary_items(label: str, v: Any, depth: int = 0) -> list[str]:
    if isinstance(v, dict):
        if all(not isinstance(x, dict | list) or _scalars(x) for x in v.values()) and depth:
            return [f"{label}: " + "; ".join(f"{_label(k)} {_value(x)}" for k, x in v.items())]
        return [line for k, x in v.items()
                for line in _summary_items(f"{label} › {k}" if label else _label(k), x, depth + 1)]
    if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
        return [line for x in v for line in _summary_items(label, x, depth + 1)]
    return [f"{label}: {_value(v)}"]


def _label(key: str) -> str:
    return key.replace("p99_9", "p99.9").replace("_", " ")


def _scalars(v: Any) -> bool:
    return isinstance(v, list) and all(not isinstance(x, dict | list) for x in v)


def summary_lines(data: dict[str, Any]) -> list[str]:
    """The benchmark's own ``summary`` (figures, per-server dicts, lists of ratios), as a bullet list."""
    s = data.get("summary")
    if not isinstance(s, dict) or not s:
        return []
    items = [i for i in _summary_items("", s) if not i.endswith(": –") or "saturat" in i]
    return ["The benchmark's own summary:", ""] + [f"* {i}" for i in items] + [""]


def section_fanout(run: Run, f: dict[str, Any]) -> list[str]:
    out = [_notes(run), "",
           "Each cell: deliveries/s received · p99 latency · server CPU (utime+stime) per delivery; the "
           "figure with the server core's softirq time follows when it differs.", ""]
    subs = {}
    for s in f["steps"]:
        if s.extra.get("subscribers"):
            subs.setdefault(s.group, s.extra["subscribers"])
    for group, lines in side_by_side(f["steps"], _cell_delivery).items():
        title = f["titles"].get(group, "")
        n = f", {subs[group]:,.0f} subscribers" if group in subs else ""
        out += [f"**Case {group}**{': ' + title if title else ''}{n}", ""] + lines + [""]
    return out


def section_latency(run: Run, f: dict[str, Any]) -> list[str]:
    data = run.data or {}
    subs = pick(data, "args.subscribers")
    out = [_notes(run), ""]
    if f.get("cpu_quota"):
        out += [f"Every server runs in a cgroup capped at **{f['cpu_quota']:g} of one core** (CFS quota, 5 ms "
                "period), so that the load generator's one core can saturate it: deliveries/s at saturation then "
                "compare the servers on the same CPU budget. Throttling and the queues of a CPU-bound server add "
                "latency, so the p99 figures of this run are not the latency at load: that is the previous "
                "section's.", ""]
    if subs:
        out += [f"{subs:,} subscribers on one channel, one message per publisher frame, the offered rate rising "
                "step by step on the same connections until the server saturates.", ""]
    defs = pick(data, "definitions.saturated_step")
    if defs:
        out += [f"A step is saturated at: {defs}.", ""]
    if f.get("versions"):
        out += ["Servers: " + ", ".join(f"{k} ({v})" for k, v in f["versions"].items()) + ".", ""]
    if f.get("skipped"):
        out += ["Not run: " + "; ".join(f"{k}: {v}" for k, v in f["skipped"].items()) + ".", ""]
    out += ["Each cell: deliveries/s · p50 / p99 / p99.9 latency (ms) · server CPU per delivery.", ""]

    def cell(s: Step) -> str:
        return (f"{fmt_rate(s.deliveries_per_s)}/s · {fmt_ms(s.p50)} / {fmt_ms(s.p99)} / {fmt_ms(s.p999)} ms"
                f" · {fmt_us(s.cpu_us)} µs" + _marks(s))

    for group, lines in side_by_side(f["steps"], cell, "offered").items():
        out += ([f"**{group}**", ""] if group else []) + lines + [""]
    rows = []
    for srv, s in f["saturation"].items():
        if s["reached"]:
            how = "; ".join(map(str, s.get("reasons") or [])) or (f"at {s['step']}" if s.get("step") else "saturated")
        else:
            how = f"not reached ({s.get('ramp_end') or 'no step saturated'}): a lower bound"
        if s.get("generator_limited"):
            how += " GENERATOR-LIMITED"
        rows.append([srv, fmt_rate(s["deliveries_per_s"]), how, fmt_ms(s.get("p99_at_80")),
                     s.get("p99_at_80_step") or "–"])
    out += ["Saturation per server (the highest deliveries/s reached up to and including the saturated step) and "
            "the p99 at 80 % of it:", ""]
    out += table(["server", "deliveries/s at saturation", "saturated by", "p99 at 80 % (ms)", "the 80 % step"], rows)
    return out


def section_chats(run: Run, f: dict[str, Any]) -> list[str]:
    out = [_notes(run), "",
           "Each cell: deliveries/s (to the chat's other member) · p50 / p99 / p99.9 latency (ms) · server CPU "
           "per delivery.", ""]

    def cell(s: Step) -> str:
        return (f"{fmt_rate(s.deliveries_per_s)}/s · {fmt_ms(s.p50)} / {fmt_ms(s.p99)} / {fmt_ms(s.p999)} ms"
                f" · {fmt_us(s.cpu_us)} µs" + _marks(s))

    chans = next((s.extra["channels"] for s in f["steps"] if s.extra.get("channels")), None)
    if chans:
        out += [f"{chans:,.0f} two-member channels.", ""]
    for group, lines in side_by_side(f["steps"], cell).items():
        out += ([f"**{group}**", ""] if group else []) + lines + [""]
    return out + summary_lines(run.data or {})


def section_connrate(run: Run, f: dict[str, Any]) -> list[str]:
    out = [_notes(run), "",
           "Each cell (rows: connections/s offered): connections/s accepted · connect time p50 / p99 (ms) · server "
           "CPU per connection · failed connects.", ""]
    defs = pick(run.data or {}, "definitions.connection")
    if isinstance(defs, dict):
        out += ["What a connection is: " + "; ".join(f"{k}: {v}" for k, v in defs.items()) + ".", ""]

    def cell(s: Step) -> str:
        e = s.extra
        return (f"{fmt_rate(e.get('achieved'))}/s · {fmt_ms(s.p50)} / {fmt_ms(s.p99)} ms · "
                f"{fmt_us(e.get('cpu_per_conn'))} µs · {fmt_rate(e.get('failed')) if e.get('failed') else '0'} failed"
                + _marks(s))

    for group, lines in side_by_side(f["steps"], cell, "offered").items():
        out += ([f"**{group}**", ""] if group else []) + lines + [""]
    return out + summary_lines(run.data or {})


def section_idle(run: Run, f: dict[str, Any]) -> list[str]:
    rows = f["rows"]
    relay = next((r for r in rows if r["server"] == RELAY), None)
    body = []
    for r in sorted(rows, key=lambda r: server_order(x["server"] for x in rows).index(r["server"])):
        per = r["per_conn_bytes"]
        ratio = (relay["per_conn_bytes"] / per) if relay and per and r is not relay else None
        conns = f"{r['connections']:,.0f}" if r["connections"] is not None else "–"
        if r["requested"] and r["connections"] is not None and r["connections"] < r["requested"]:
            conns += f" of {r['requested']:,.0f}"
        body.append([r["server"], conns, "–" if per is None else f"{per / 1024:.2f}", fmt_x(ratio),
                     " ".join(r["flags"])])
    ch = relay.get("channel") if relay else None
    note = (f" relay's connections are connected and subscribed (channel `{ch}`)." if ch else "")
    return [_notes(run) + note, ""] + table(
        ["server", "idle connections", "RSS per connection (KiB)", "relay ÷ server", "marks"], body)


def section_redis(run: Run, f: dict[str, Any]) -> list[str]:
    out = [_notes(run), "",
           "Deployments side by side (the peer is relay on its memory broker). Each cell: deliveries/s · p99 · "
           "relay CPU per delivery (all processes) · Redis CPU per publication.", ""]

    def cell(s: Step) -> str:
        r = s.extra.get("redis_us_per_pub")
        return (f"{fmt_rate(s.deliveries_per_s)}/s · p99 {fmt_ms(s.p99)} ms · {fmt_us(s.cpu_us)} µs"
                + (f" · Redis {fmt_us(r)} µs/pub" if r else "") + _marks(s))

    for group, lines in side_by_side(f["steps"], cell).items():
        out += [f"**Case {group}**", ""] + lines + [""]
    return out


def section_recovery(run: Run, f: dict[str, Any]) -> list[str]:
    rows = f["rows"]
    out = [_notes(run), "",
           "Every client cut at once, publications made while they are away, then all reconnect together and "
           "recover (relay on Redis). The baseline is the same storm with `recovery_coalesce = false`, in the same "
           "run.", ""]
    body = [[r["mode"], f"{r['clients']:,.0f} / {r['channels']:,.0f}", f"{r['reads']:,.0f}",
             f"{r['reads_per_client']:.4f}", "–" if r["all_s"] is None else f"{r['all_s']:.2f} s",
             f"{fmt_ms(r['p50'])} / {fmt_ms(r['p99'])} ms", fmt_us(r["cpu_us"]),
             f"{r['ok']:,.0f}" + (f" ({r['bad']:,.0f} NOT)" if r["bad"] else "")] for r in rows]
    out += table(["mode", "clients / channels", "broker history reads", "reads per recovering client",
                  "all recovered in", "recovery p50 / p99", "relay CPU per client (µs)",
                  "recovered every missed publication"], body) + [""]
    co = next(r for r in rows if r["coalesce"] is True)  # extract_recovery guarantees one
    base = next((r for r in rows if r["coalesce"] is False), None)
    goal = f["goal"]
    verdict = PASS if co["reads_per_client"] <= goal and not co["bad"] else FAIL
    line = (f"Goal (issue 11): at most {goal:g} broker history reads per recovering client with coalescing: "
            f"**{verdict}** ({co['reads_per_client']:.4f}")
    if base and co["reads_per_client"]:
        line += (f"; {base['reads_per_client']:.4f} without, {base['reads_per_client'] / co['reads_per_client']:.0f}× "
                 "more, in the same run")
    return out + [line + ").", ""] + summary_lines(run.data or {})


def section_lanes(run: Run, f: dict[str, Any]) -> list[str]:
    data = run.data or {}
    a = run.args
    modes = f["modes"]
    out = [_notes(run), ""]
    if a:
        out += [f"{a.get('clients', 0):,} clients, {a.get('slow_fraction', 0):.0%} of them behind a proxy that "
                f"passes {num(a.get('slow_rate')) or 0:,.0f} B/s toward each; a flood of {a.get('bulk_rate')} bulk "
                f"publications/s × {a.get('bulk_size')} B to every client (`prices`, lane bulk) and "
                f"{a.get('chat_rate')} chat/s to each client's own channel (`chat`, history and recovery). "
                f"Queue cap {(num(a.get('queue_max')) or 0) / 1024:.0f} KiB, bulk limit "
                f"{(num(a.get('bulk_limit')) or 0) / 1024:.0f} KiB. Slow clients behave like an SDK: resubscribe "
                "after 2500, retry after 111, reconnect and recover their chat after a close. Lanes off is the "
                "baseline, in the same run.", ""]

    def lat(d: Any) -> str:
        d = d if isinstance(d, dict) else {}
        return f"{fmt_ms(pnum(d, 'p50'))} / {fmt_ms(pnum(d, 'p99'))} / {fmt_ms(pnum(d, 'max'))} ms"

    def loss(c: dict[str, Any]) -> str:
        lost, pub = pnum(c, "chats_lost"), pnum(c, "chats_published_in_window")
        if lost is None or not pub:
            return "–"
        return f"{lost:,.0f} of {pub:,.0f}" + (f" ({lost / pub:.2%})" if lost else "")

    def row(label: str, cell: Callable[[dict[str, Any]], str]) -> list[str]:
        return [label] + [cell(m) for m in modes]

    rows = [
        row("fast clients: chat latency p50 / p99 / max", lambda m: lat(m["fast"].get("chat_latency_ms"))),
        row("fast clients: chats lost", lambda m: loss(m["fast"])),
        row("slow clients: **chats lost**", lambda m: loss(m["slow"])),
        row("slow clients: chats recovered after a reconnect",
            lambda m: f"{pnum(m['slow'], 'chats_recovered') or 0:,.0f}"),
        row("slow clients: live chat latency p50 / p99 / max", lambda m: lat(m["slow"].get("chat_latency_ms"))),
        row("slow clients: recovered chat latency p50 / p99 / max",
            lambda m: lat(m["slow"].get("recovered_chat_latency_ms"))),
        row("slow clients: disconnected (relay's 3008 slow)",
            lambda m: f"{pnum(m['slow'], 'disconnects', 'closes_3008') or 0:,.0f} "
                      f"({pnum(m, 'relay_metrics.run.relay_slow_consumer_disconnects_total') or 0:,.0f})"),
        row("slow clients: 2500 unsubscribes / 111 replies",
            lambda m: f"{pnum(m['slow'], 'unsub_2500') or 0:,.0f} / {pnum(m['slow'], 'err_111') or 0:,.0f}"),
        row("bulk per client per second: fast / slow",
            lambda m: f"{_value(pnum(m['fast'], 'bulk_per_client_per_s'))} / "
                      f"{_value(pnum(m['slow'], 'bulk_per_client_per_s'))}"),
        row("relay CPU per delivery", lambda m: f"{fmt_us(pnum(m, 'server_cpu_us_per_delivery'))} µs"),
        row("relay_lane_drops_total", lambda m: f"{pnum(m, 'relay_metrics.run.relay_lane_drops_total') or 0:,.0f}"),
        row("relay_outbound_queue_bytes, highest seen",
            lambda m: f"{(pnum(m, 'relay_metrics.outbound_queue_bytes_max') or 0) / 1024:,.0f} KiB"),
        row("marks", lambda m: " ".join(str(x).split("(")[0] for x in m.get("marks") or []) or "–"),
    ]
    out += table([""] + [str(m.get("mode", "?")) for m in modes], rows) + [""]
    s = f["summary"]
    if "goal_slow_chat_loss_zero_with_lanes" in s:
        out += [f"Goal (issue 11): slow clients lose no chat with lanes on: "
                f"**{PASS if s['goal_slow_chat_loss_zero_with_lanes'] else FAIL}**.", ""]
    notes = data.get("notes")
    if isinstance(notes, list):
        out += [f"* {n}" for n in notes] + [""]
    return out


def section_backpressure(run: Run, f: dict[str, Any]) -> list[str]:
    a, rows = run.args, f["rows"]
    mib = 1 << 20
    ceiling = num(f.get("ceiling"))
    out = [_notes(run), ""]
    out += [f"{a.get('subscribers', 0):,} WebSocket subscribers on {a.get('channels', '?')} channels read as fast "
            f"as they can (\"stalled\" cases: they stop reading during the flood and catch up after it); one "
            f"publisher, {a.get('conns', '?')} keep-alive HTTP connections, `{a.get('method', '?')}` of "
            f"{a.get('payload', '?')} B, honouring 429 Retry-After per connection. Capacity (backpressure off, the "
            f"highest rate the subscribers kept up with): {_value(num(f.get('capacity')))} requests/s. On: "
            f"`backpressure_queue_bytes` {(num(f.get('queue_limit')) or 0) / mib:.0f} MiB and "
            f"`backpressure_memory_bytes` {(ceiling or 0) / mib:.0f} MiB (the ceiling); off: every limit 0. A fresh "
            "relay per run, `client_queue_max_size` 1 GiB in both. Kernel send queues: bytes in relay's TCP send "
            "queues (/proc/net/tcp), which relay's RSS does not show.", ""]
    body = []
    for r in rows:
        rss = f"{r['rss_peak_bytes'] / mib:,.0f}"
        if r["mode"] == "on" and r.get("ceiling_bytes"):
            rss += " (under)" if r.get("under_ceiling") else " (**OVER**)"
        drain = r.get("drain_s")
        body.append([str(r.get("case", "?")), r["mode"], f"{fmt_rate(num(r.get('offered_per_s')))}/s",
                     f"{fmt_rate(num(r.get('accepted_per_s')))}/s", f"{fmt_rate(num(r.get('refused_per_s')))}/s",
                     rss, f"{(num(r.get('kernel_send_queue_peak_bytes')) or 0) / mib:,.0f}",
                     f"{r.get('deliveries', 0):,}",
                     f"{r.get('missing')} / {r.get('duplicates')} / {r.get('unexpected')}",
                     "timeout" if drain is None else f"{drain:.2f} s", str(r.get("slow_disconnects_3008", "–")),
                     f"{num(r.get('relay_cpu_pct_flood')) or 0:.0f} %",
                     f"{num(r.get('generator_cpu_pct')) or 0:.0f} %"])
    out += table(["case", "backpressure", "offered req/s", "accepted", "refused (429)", "peak RSS (MiB)",
                  "kernel send queues (MiB)", "deliveries", "missing / dup / unexpected", "drain", "3008",
                  "relay CPU", "gen CPU"], body) + [""]
    on = [r for r in rows if r["mode"] == "on"]
    ok = bool(on) and all(r.get("under_ceiling") and not r.get("missing") and not r.get("duplicates")
                          for r in on)
    out += [f"Goal (issue 11): with backpressure on, peak RSS under the ceiling and every accepted publication "
            f"delivered: **{PASS if ok else FAIL}**. (With it off, \"missing\" counts what the subscribers had not "
            f"received when the drain timed out: the backlog the baseline built.)", ""]
    return out + summary_lines(run.data or {})


def _histogram_rows(bins: list[Any], bin_ms: float, rows: int = 20, width: int = 40) -> list[str]:
    """A ``bin_ms`` arrival histogram as at most ``rows`` text rows (merged bins; the highest bin of each row)."""
    counts = [int(num(b) or 0) for b in bins]
    if not counts or not max(counts):
        return []
    per, top = max(1, math.ceil(len(counts) / rows)), max(counts)
    out = []
    for i in range(0, len(counts), per):
        chunk = counts[i:i + per]
        out.append(f"{i * bin_ms / 1000:5.1f}–{(i + len(chunk)) * bin_ms / 1000:<5.1f} s {sum(chunk):>8,}  "
                   f"max {max(chunk):>7,}  " + "#" * max(1 if max(chunk) else 0, round(width * max(chunk) / top)))
    return out


def section_pacing(run: Run, f: dict[str, Any]) -> list[str]:
    a, (un, pa) = run.args, f["runs"]
    n = int(num(pa.get("subscribers")) or 0)
    bin_ms = num(pa.get("bin_ms")) or 100.0
    out = [_notes(run), ""]
    w = f.get("workers", 1)
    where = (f"one relay process (CPU 0, {f.get('broker', 'memory')} broker)" if w == 1 else
             f"one relay node with {w} worker processes on one core (CPU 0, SO_REUSEPORT, Redis broker with "
             f"redis-server on the same core; each worker paces its own subscribers)")
    out += [f"{n:,} WebSocket subscribers of one channel and {a.get('chats', '?')} 1:1 chats "
            f"({_value(num(a.get('chat_rate')))} msg/s in all, client publishes) on {where}; one broadcast "
            f"through the server API at once, then one paced over "
            f"{int(num(pa.get('pace_ms')) or 0):,} ms, same connections. Chat latency per window relative to the "
            f"publish: before ({_value(num(a.get('quiet')))} s), during (the window + 1 s, both runs), after."
            + (f" **Not 100,000 subscribers**: capped by the {f['capped']}." if f.get("capped") else ""), ""]

    def lat(r: dict[str, Any], w: str) -> str:
        d = r["chat_ms"].get(w) if isinstance(r["chat_ms"].get(w), dict) else {}
        return f"{fmt_ms(pnum(d, 'p50'))} / {fmt_ms(pnum(d, 'p99'))} / {fmt_ms(pnum(d, 'max'))} ms"

    def arr(r: dict[str, Any]) -> str:
        return " / ".join(fmt_ms(pnum(r, f"arrival_ms.{k}")) for k in ("p1", "p50", "p99", "max")) + " ms"

    def gc(r: dict[str, Any]) -> str:
        g = r.get("relay_gc")
        if not isinstance(g, dict):
            return "not logged"
        long = [x for w in ("during",) for x in (g.get(w) or {}).get("long") or []]
        return ", ".join(f"gen{x[1]} {x[2]:.0f} ms" for x in long) or "none ≥ 10 ms"

    rows = [["chat p50 / p99 / max, before", lat(un, "before"), lat(pa, "before")],
            ["chat p50 / p99 / max, **during**", lat(un, "during"), lat(pa, "during")],
            ["chat p50 / p99 / max, after", lat(un, "after"), lat(pa, "after")],
            ["arrival p1 / p50 / p99 / max", arr(un), arr(pa)],
            [f"**peak arrivals per {bin_ms:g} ms**", f"{pnum(un, 'peak_per_bin') or 0:,.0f}",
             f"{pnum(pa, 'peak_per_bin') or 0:,.0f}"],
            ["got it exactly once", *(f"{pnum(r, 'received_once') or 0:,.0f} of {n:,}"
                                      + ("" if r.get("every_subscriber_once") else " (**NOT all**)")
                                      for r in (un, pa))],
            ["relay deliveries" + (" (all workers)" if w > 1 else ""),
             *(f"{pnum(r, 'relay_deliveries_broadcast') or 0:,.0f}"
               + (f" ± {pnum(r, 'relay_deliveries_tolerance'):,.0f}" if pnum(r, 'relay_deliveries_tolerance') else "")
               for r in (un, pa))],
            ["relay CPU in the during window", *(f"{pnum(r, 'relay_cpu_during_s') or 0:.2f} s"
                                                 + (f" (+ redis {pnum(r, 'redis_cpu_during_s'):.2f} s)"
                                                    if pnum(r, 'redis_cpu_during_s') is not None else "")
                                                 for r in (un, pa))],
            ["relay GC pauses during", gc(un), gc(pa)],
            ["marks", *(" ".join(str(m).split("(")[0] for m in r.get("marks") or []) or "–" for r in (un, pa))]]
    out += table(["", "unpaced", f"paced ({int(num(pa.get('pace_ms')) or 0):,} ms)"], rows) + [""]
    for r in (un, pa):
        hist = _histogram_rows(r["bins"], bin_ms)
        if hist:
            out += [f"Arrivals of the {r['mode']} broadcast, per {bin_ms:g} ms from the publish (rows merge bins; "
                    "max = the highest bin in the row):", "", "```"] + hist + ["```", ""]
    s = f["summary"]
    if "paced_spread_over_half_window" in s:
        out += [f"Claim (issue 11): the paced arrivals spread over more than half the window: "
                f"**{PASS if s['paced_spread_over_half_window'] else FAIL}**; every subscriber got each broadcast "
                f"once: **{PASS if s.get('every_subscriber_once') else FAIL}**.", ""]
    return out


SECTIONS: dict[str, Callable[[Run, dict[str, Any]], list[str]]] = {
    "fanout": section_fanout, "latency": section_latency, "latency-quota": section_latency, "chats": section_chats,
    "connrate": section_connrate, "idle": section_idle, "redis": section_redis, "recovery": section_recovery,
    "lanes": section_lanes, "backpressure": section_backpressure, "pacing": section_pacing,
}

_MACHINE_ROWS = (("CPU", ("cpu_model",)), ("cores", ("cpus",)), ("kernel", ("kernel",)),
                 ("Python", ("python",)), ("relay", ("relay", "relay_core")),
                 ("pinning", ("server_cpu", "generator_cpu")))
_MACHINE_SKIP = {"nofile_limit", "layout"}


def machine_lines(runs: dict[str, Run]) -> list[str]:
    """The machine description, merged over the files (values that differ are listed per kind)."""
    machines = {k: r.data["machine"] for k, r in runs.items()
                if r.data and isinstance(r.data.get("machine"), dict)}
    if not machines:
        return [NOT_MEASURED + ": no result file has a machine description."]

    def val(key: str) -> str:
        vals: dict[str, list[str]] = {}
        for kind, m in machines.items():
            if m.get(key) is not None:
                vals.setdefault(str(m[key]), []).append(kind)
        if len(vals) <= 1:
            return next(iter(vals), "–")
        return "; ".join(f"{v} ({', '.join(ks)})" for v, ks in vals.items())

    known = {k for _, keys in _MACHINE_ROWS for k in keys} | _MACHINE_SKIP
    rows = [["CPU", val("cpu_model")], ["cores", val("cpus")], ["kernel", val("kernel")],
            ["Python", val("python")], ["relay", f"{val('relay')}, core `{val('relay_core')}`"],
            ["pinning", f"servers on CPU {val('server_cpu')}, load generator on CPU {val('generator_cpu')}"]]
    libs = [k for m in machines.values() for k in m if k not in known]
    for k in dict.fromkeys(libs):
        rows.append([k, val(k)])
    return table(["", ""], rows)


def _flag(k: str) -> str:
    return "--" + k.replace("_", "-")


def reproduce_command(run: Run) -> str:
    """The script's command line, rebuilt from the arguments recorded in the file."""
    argv = [".venv/bin/python", f"bench/{SCRIPTS.get(run.kind, run.kind + '.py')}"]
    for k, v in run.args.items():
        if v is None or v is False or k in ("payload",):
            continue
        if v is True:
            argv.append(_flag(k))
        elif isinstance(v, list | tuple):
            if v:
                argv += [_flag(k), ",".join(map(str, v))]
        elif isinstance(v, int | float | str):
            argv += [_flag(k), f"{v:g}" if isinstance(v, float) else str(v)]
    return shlex.join(argv)

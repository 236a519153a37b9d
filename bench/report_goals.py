"""The benchmark report's ratios and goals (bench/report.py): relay / peer from the same run, and each goal
checked against the figures: PASS, FAIL or NOT MEASURED."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report_format import P99_BOUND_MS, RELAY, fmt_ms, fmt_rate
from report_data import CPU_GOALS, FAIL, LOAD_FRACTION, NOT_MEASURED_V, PASS, Step  # noqa: E402


# ------------------------------------------------------------------------------------------------
# ratios and goals
# ------------------------------------------------------------------------------------------------

@dataclass
class Ratio:
    group: str
    label: str
    peer: str
    relay: float
    other: float
    flags: tuple[str, ...] = ()  #: marks of either server at that step

    @property
    def value(self) -> float:
        return self.relay / self.other


def cpu_ratios(steps: list[Step], peer: str, cpu: str = "cpu_us") -> list[Ratio]:
    """relay / ``peer`` CPU per delivery at every step (same group and label) both ran."""
    by = {(s.group, s.label, s.server): s for s in steps if not s.skipped}
    out = []
    for (group, label, server), s in by.items():
        p = by.get((group, label, peer))
        a, b = getattr(s, cpu), getattr(p, cpu) if p else None
        if server == RELAY and a and b:
            out.append(Ratio(group, label, peer, a, b, tuple(dict.fromkeys(s.flags + p.flags))))
    return out


@dataclass
class Goal:
    name: str
    verdict: str
    detail: str


def _where(r: Ratio, figures: dict[str, Any] | None = None) -> str:
    title = ((figures or {}).get("titles") or {}).get(r.group, "")
    case = f"case {r.group}" + (f" ({title})" if title else "") if r.group else ""
    return ", ".join(x for x in (case, r.label) if x)


def goal_cpu(fanout: dict[str, Any] | None, peer: str, factor: float) -> Goal:
    """relay's CPU per delivery <= ``factor`` x ``peer``'s at every fan-out step both ran."""
    name = f"relay's server CPU per delivery ≤ {factor:g}× the naive {peer} relay"
    if not fanout:
        return Goal(name, NOT_MEASURED_V, "no fan-out results")
    ratios = cpu_ratios(fanout["steps"], peer)
    if not ratios:
        return Goal(name, NOT_MEASURED_V, f"no fan-out step ran both relay and {peer}")
    ok = [r for r in ratios if r.value <= factor]
    worst = max(ratios, key=lambda r: r.value)
    best = min(ratios, key=lambda r: r.value)
    verdict = PASS if len(ok) == len(ratios) else FAIL
    cases = ", ".join(dict.fromkeys(r.group for r in ratios))
    detail = (f"fan-out (case{'s' if ',' in cases else ''} {cases}), utime+stime per delivery; holds at "
              f"{len(ok)} of {len(ratios)} step{'s' if len(ratios) > 1 else ''} both ran. ")
    if len(ratios) == 1:
        detail += f"{_where(worst, fanout)}: {worst.value:.2f}× ({worst.relay:.2f} vs {worst.other:.2f} µs)."
    else:
        detail += (f"Worst: {_where(worst, fanout)}: {worst.value:.2f}× ({worst.relay:.2f} vs {worst.other:.2f} µs)."
                   f" Best: {_where(best, fanout)}: {best.value:.2f}× ({best.relay:.2f} vs {best.other:.2f} µs).")
    marked = [r for r in ratios if set(r.flags) & {"SAT", "GEN", "NOISY", "LOSS", "DIED"}]
    if marked:
        which = f"{len(marked)} of these steps carry" if len(ratios) > 1 else "The step carries"
        detail += f" {which} marks ({', '.join(sorted({f for r in marked for f in r.flags}))}): see the fan-out table."
    if ok and verdict == FAIL:
        groups = sorted({r.group for r in ok})
        detail += (f" Passes at: {'; '.join(_where(r, fanout) for r in ok)}." if len(ok) <= 4
                   else f" Passes in case(s) {', '.join(groups)}.")
    return Goal(name, verdict, detail)


def goal_saturation(latency: dict[str, Any] | None, peer: str = "nats") -> Goal:
    """relay's deliveries/s at saturation > ``peer``'s, same cores (latency benchmark)."""
    name = f"relay's deliveries/s at saturation above {peer}-server's WebSocket listener, same cores"
    if not latency:
        return Goal(name, NOT_MEASURED_V, "no latency-against-offered-load results")
    sat = latency["saturation"]
    if peer not in sat or not sat[peer]["deliveries_per_s"] or not sat.get(RELAY, {}).get("deliveries_per_s"):
        why = "; ".join(f"{k} skipped: {v}" for k, v in latency.get("skipped", {}).items() if k in (RELAY, peer))
        return Goal(name, NOT_MEASURED_V, f"the latency run has no saturation figure for relay and {peer}"
                    + (f" ({why})" if why else ""))
    r, p = sat[RELAY], sat[peer]
    rv, pv = r["deliveries_per_s"], p["deliveries_per_s"]

    def how(x: dict[str, Any]) -> str:
        if x["reached"]:
            return ""
        return f" (not saturated{': ' + x['ramp_end'] if x.get('ramp_end') else ''}; a lower bound)"

    budget = (f", every server capped at {latency['cpu_quota']:g} of one core" if latency.get("cpu_quota")
              else "")
    desc = (f"relay {fmt_rate(rv)}/s{how(r)} vs {peer} {fmt_rate(pv)}/s{how(p)} ({rv / pv:.2f}×; latency "
            f"benchmark{budget}: the highest deliveries/s each reached up to its saturated step, 1 message per "
            "frame)")
    gen = [n for n, x in ((RELAY, r), (peer, p)) if x.get("generator_limited")]
    if gen:
        desc += f"; GENERATOR-LIMITED at the top step of {' and '.join(gen)}"
    if rv > pv:  # relay did at least rv; the peer's figure is its ceiling only if it saturated
        if p["reached"]:
            return Goal(name, PASS, desc)
        return Goal(name, NOT_MEASURED_V, desc + f"; {peer} did not saturate, so its ceiling is unknown")
    if r["reached"]:  # relay's ceiling is at or below what the peer did
        return Goal(name, FAIL, desc)
    return Goal(name, NOT_MEASURED_V, desc + "; relay did not saturate, so its ceiling is unknown")


def goal_p99(latency: dict[str, Any] | None) -> Goal:
    """relay's p99 at 80 % of its own saturation < 50 ms."""
    name = f"relay's p99 at {LOAD_FRACTION:.0%} of its own saturation < {P99_BOUND_MS:g} ms"
    if not latency or RELAY not in latency["saturation"]:
        return Goal(name, NOT_MEASURED_V, "no latency-against-offered-load results")
    s = latency["saturation"][RELAY]
    if s.get("p99_at_80") is None:
        return Goal(name, NOT_MEASURED_V, "no relay step at or below 80 % of its saturation rate")
    detail = (f"p99 {fmt_ms(s['p99_at_80'])} ms at step {s['p99_at_80_step']}; saturation "
              f"{fmt_rate(s['deliveries_per_s'])} deliveries/s (latency benchmark)")
    if not s["reached"]:
        return Goal(name, NOT_MEASURED_V, detail.replace("; saturation", "; relay did not saturate"
                                                         f" ({s.get('ramp_end') or 'no step saturated'}), so that "
                                                         "step is 80 % of the highest rate run, not of its saturation,"
                                                         " which is at least"))
    return Goal(name, PASS if s["p99_at_80"] < P99_BOUND_MS else FAIL, detail)


def check_goals(figures: dict[str, dict[str, Any] | None]) -> list[Goal]:
    """The goals of issue 6, each PASS / FAIL / NOT MEASURED with the figures it rests on."""
    return ([goal_cpu(figures.get("fanout"), peer, f) for peer, f in CPU_GOALS]
            + [goal_saturation(figures.get("latency-quota") or figures.get("latency")),
               goal_p99(figures.get("latency"))])

"""Scenario parameters shared by the shapes (in the Locust processes) and the runner (no Locust here).

``SCENARIOS[name]``: the runner's defaults (shoppers, duration, broker) and the arrival ramp
(``ramp_fraction`` of the duration, at most ``ramp_max`` seconds, unless ``--ramp`` is given).
``SMOKE[name]``: what ``run.py --smoke`` adds so that a run of a few seconds with a few dozen users
still exercises everything (fast chats, orders, announcements, churn; a short drain).
"""

from __future__ import annotations

__all__ = ["SCENARIOS", "SMOKE", "ramp_seconds", "parse_duration"]

SCENARIOS: dict[str, dict] = {
    "flash_sale": {"users": 200, "duration": "2m", "broker": "memory", "ramp_fraction": 2 / 3, "ramp_max": 600.0},
    "reconnect_storm": {"users": 200, "duration": "2m", "broker": "redis", "ramp_fraction": 0.25, "ramp_max": 60.0},
    "soak": {"users": 200, "duration": "30m", "broker": "memory", "ramp_fraction": 0.1, "ramp_max": 300.0},
}

_COMMON_SMOKE = {"chat_interval": 1.0, "order_interval": 2.0, "announce_interval": 0.5, "agent_think": 0.2}
SMOKE: dict[str, dict] = {
    "flash_sale": {"users": 30, "duration": "6s", "locust": {**_COMMON_SMOKE, "ramp": 2.0}, "relay": {},
                   "sample_interval": 1.0},
    "reconnect_storm": {"users": 30, "duration": "10s", "locust": {**_COMMON_SMOKE, "ramp": 1.5, "backoff_max": 1.0},
                        "relay": {"drain_window": 0.5}, "restart_at": 3.5, "sample_interval": 1.0},
    "soak": {"users": 30, "duration": "8s", "locust": {**_COMMON_SMOKE, "ramp": 1.5, "churn_interval": 3.0},
             "relay": {}, "sample_interval": 0.5},
}


def ramp_seconds(scenario: str, run_time: float, ramp: float = 0.0) -> float:
    """The arrival ramp: ``ramp`` if given, else the scenario's fraction of the run time, capped."""
    if ramp and ramp > 0:
        return float(ramp)
    s = SCENARIOS[scenario]
    if not run_time:
        return min(60.0, s["ramp_max"])
    return min(round(run_time * s["ramp_fraction"], 1), s["ramp_max"])


def parse_duration(text: str | float | int) -> float:
    """Seconds from ``90``, ``90s``, ``2m``, ``1h30m``."""
    if isinstance(text, (int, float)):
        return float(text)
    text = text.strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    total, num = 0.0, ""
    units = {"h": 3600, "m": 60, "s": 1}
    for ch in text:
        if ch.isdigit() or ch == ".":
            num += ch
        elif ch in units and num:
            total += float(num) * units[ch]
            num = ""
        else:
            raise ValueError(f"not a duration: {text!r} (e.g. 90, 90s, 2m, 1h30m)")
    if num:
        raise ValueError(f"not a duration: {text!r} (a number needs a unit after another unit)")
    return total

"""Soak: steady flash-sale traffic for a long time, with churn, watching for drift.

    python loadtests/run.py soak -u 2000 -t 4h          (make loadtest SCENARIO=soak DURATION=4h)

Shoppers arrive over ``--ramp`` (default a tenth of ``-t``, at most 5 minutes) and stay; each leaves
and comes back every ``--churn-interval`` s on average (default 120 s): half the time as the same
shopper (reconnect + recover, RECONNECT "ws churn"), half as a new one (new channels, new chat).
The runner samples relay's resident memory (``/proc/PID/status``), connections and server-side
fan-out latency (``/metrics``) every ``--sample-interval`` s and, with Locust's per-interval
percentiles, reports the drift between the start and the end of the steady part: memory growth and
the change of p99 delivery latency.
"""

from _path import ROOT  # noqa: F401  (puts the repository on sys.path)

from loadtests.shapes import ArrivalShape
from loadtests.users import DEFAULTS, Agent, Announcer, Bot, OrderBackend, ShopperTCP, ShopperWS

__all__ = ["ShopperWS", "ShopperTCP", "Agent", "Bot", "OrderBackend", "Announcer", "Soak"]

DEFAULTS.update(scenario_name="soak", churn_interval=120.0)


class Soak(ArrivalShape):
    scenario = "soak"

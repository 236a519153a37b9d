"""Reconnect storm: the flash-sale crowd, steady, while relay restarts under it.

    python loadtests/run.py reconnect_storm -u 2000 -t 3m          (make loadtest SCENARIO=reconnect_storm)

The runner (``loadtests/run.py``) owns relay and restarts it mid-test (``--restart-at``): SIGTERM
makes relay drain every client with 3001 "shutdown" over ``drain_window``, then the same ports are
served again. The broker is Redis (a throw-away redis-server started by the runner) so history and
epochs survive the restart. Clients come back with jittered exponential backoff (``--backoff-min``,
``--backoff-max``), resubscribe with ``recover`` from their last offset/epoch, and report
RECONNECT (disconnect to every channel resubscribed) and any publication lost (offset gaps,
``recovered: false``). Backend publishes are retried with their idempotency key while relay is down.
Shoppers arrive over ``--ramp`` (default a quarter of ``-t``, at most 60 s).
"""

from _path import ROOT  # noqa: F401  (puts the repository on sys.path)

from loadtests.shapes import ArrivalShape
from loadtests.users import DEFAULTS, Agent, Announcer, Bot, OrderBackend, ShopperTCP, ShopperWS

__all__ = ["ShopperWS", "ShopperTCP", "Agent", "Bot", "OrderBackend", "Announcer", "Storm"]

DEFAULTS.update(scenario_name="reconnect_storm", backoff_max=5.0)


class Storm(ArrivalShape):
    scenario = "reconnect_storm"

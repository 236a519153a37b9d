"""Load shapes of the scenarios: how many shoppers are online at each moment.

A shape reads Locust's common options (``use_common_options``): ``-u`` is the number of *shoppers*
(agents, bots, backends and the announcer come on top, see ``users.plan``), ``-t`` the test length
(the shape ends the test then), and ``--ramp`` the seconds over which shoppers arrive (0: the
scenario's default, a fraction of ``-t``). Shapes run on the master only.
"""

from __future__ import annotations

import bisect

from locust import LoadTestShape

from loadtests.params import ramp_seconds
from loadtests.users import fixed_users

__all__ = ["ArrivalShape", "linear", "surge"]


def linear(x: float) -> float:
    return x


# Flash sale arrivals: early birds, then the surge as the sale opens, then the tail.
# (fraction of the ramp, fraction of the shoppers arrived)
SURGE_POINTS = [(0.0, 0.0), (0.2, 0.1), (0.5, 0.7), (1.0, 1.0)]


def surge(x: float) -> float:
    xs = [p[0] for p in SURGE_POINTS]
    i = min(max(bisect.bisect_right(xs, x), 1), len(xs) - 1)
    (x0, y0), (x1, y1) = SURGE_POINTS[i - 1], SURGE_POINTS[i]
    return y0 + (y1 - y0) * (min(max(x, x0), x1) - x0) / (x1 - x0)


class ArrivalShape(LoadTestShape):
    """Shoppers arrive along ``curve`` over the ramp, then stay until ``-t`` ends the test."""

    abstract = True
    use_common_options = True
    scenario = "flash_sale"  # its default ramp: loadtests/params.py
    peak_slope = 1.0      # the curve's steepest slope (users per ramp), for the spawn rate

    @staticmethod
    def curve(x: float) -> float:
        return linear(x)

    def tick(self) -> tuple[int, float] | None:
        opts = self.runner.environment.parsed_options
        shoppers = int(opts.num_users or 1)
        run_time = float(opts.run_time or 0)
        t = self.get_run_time()
        if run_time and t >= run_time:
            return None
        ramp = ramp_seconds(self.scenario, run_time, opts.ramp)
        fixed = fixed_users(opts)
        arrived = round(shoppers * self.curve(min(1.0, t / ramp))) if ramp > 0 else shoppers
        # fast enough to follow the steepest part of the curve; the fixed users come first
        rate = max(10.0, fixed / 2.0, 1.5 * self.peak_slope * shoppers / max(ramp, 1.0))
        return fixed + arrived, rate


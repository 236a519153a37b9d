"""Holiday flash sale: shoppers arrive in a surge, each opens a 1:1 chat with an agent or the bot,
gets order-status pushes on its personal channel and follows the sale announcements.

    locust -f loadtests/scenarios/flash_sale.py --headless -u 20000 -t 15m --ramp 600
    (or: make loadtest SCENARIO=flash_sale USERS=20000 DURATION=15m)

``-u`` shoppers (a quarter on raw TCP, ``--tcp-share``) arrive over ``--ramp`` seconds (default: two
thirds of ``-t``, at most 10 minutes): 10 % in the first fifth, 60 % in the next three tenths (the
sale opens), the rest after. 30 % of the chats go to human agents (``--agent-share``), each holding
about ``--chats-per-agent`` chats; the others to the chatbot. Every shopper gets an order-status
update every ``--order-interval`` s and writes in its chat every ``--chat-interval`` s; the sale
channel broadcasts every ``--announce-interval`` s. Thresholds: ``loadtests/thresholds.py``.
"""

from _path import ROOT  # noqa: F401  (puts the repository on sys.path)

from loadtests.shapes import ArrivalShape, surge
from loadtests.users import DEFAULTS, Agent, Announcer, Bot, OrderBackend, ShopperTCP, ShopperWS

__all__ = ["ShopperWS", "ShopperTCP", "Agent", "Bot", "OrderBackend", "Announcer", "FlashSale"]

DEFAULTS.update(scenario_name="flash_sale")


class FlashSale(ArrivalShape):
    scenario = "flash_sale"
    peak_slope = 2.0  # 60 % of the shoppers in 30 % of the ramp
    curve = staticmethod(surge)

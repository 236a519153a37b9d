"""The node: the registry of sessions and users, the broker's callbacks into the fan-out core, server API
operations and pings (registry.py); one client connection's session (session.py), its subscribing
(subscribe.py) and its calls to the backend (proxycalls.py), which know the node by the contract in host.py;
subscribe-time stream reads coalesced per channel (recovery.py)."""

from relay.node.host import SessionHost
from relay.node.registry import Node, Stats
from relay.node.session import ClientSession

__all__ = ["ClientSession", "Node", "SessionHost", "Stats"]

"""The node: the registry of sessions and users, the broker's callbacks into the fan-out core, server API
operations and pings (registry.py); one client connection's session (session.py); subscribe-time stream reads
coalesced per channel (recovery.py)."""

from relay.node.registry import Node, Stats
from relay.node.session import ClientSession, SessionHost

__all__ = ["ClientSession", "Node", "SessionHost", "Stats"]

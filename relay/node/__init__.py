"""The node: the registry of sessions, users and channels, the broker's callbacks into the fan-out core and
the server API operations (registry.py), with its parts: admitting sockets (admission.py), the ping wheel
(pings.py), publishing and history (publishing.py), stream positions (streams.py), broker outages
(outages.py) and subscribe-time stream reads coalesced per channel (recovery.py). One client connection's
session (session.py), its subscribing (subscribe.py) and its calls to the backend (proxycalls.py) know the
node by the contract in host.py."""

from relay.node.host import SessionHost
from relay.node.registry import Node, Stats
from relay.node.session import ClientSession

__all__ = ["ClientSession", "Node", "SessionHost", "Stats"]

"""Delta compression's memory: the previous publication of each channel whose namespace publishes deltas, so
each new one goes to the subscribers ready for deltas as a fossil delta from it (relay/protocol/fossil.py),
computed once per publication on this node, whatever the number of subscribers.

A delta is only made between consecutive offsets of one stream: a subscriber ready for deltas has had the
previous publication through the hub (a gap resyncs every subscriber of the channel, and a subscriber that
missed one is dropped), so it holds the same base. It is only sent when smaller than the data, and, since JSON
subscribers get it as a string, only when it is valid UTF-8."""

from __future__ import annotations

import orjson

from relay.protocol.fossil import create_delta

__all__ = ["Deltas"]


class Deltas:
    def __init__(self) -> None:
        self.prev: dict[str, tuple[str, int, bytes]] = {}  # channel -> (epoch, offset, the data as JSON)
        self.made = 0  # deltas made (one per publication that had delta subscribers ready)
        self.saved = 0  # bytes they saved against the whole data, per delivery

    def next(self, channel: str, pub: dict, epoch: str, wanted: bool) -> bytes | None:
        """Remember ``pub`` as the channel's latest; its delta from the previous one if ``wanted`` (some
        subscriber here takes deltas), there is one just before it, and the delta is worth sending."""
        offset = pub.get("offset") or 0
        if not offset or not epoch:
            self.prev.pop(channel, None)
            return None
        data = orjson.dumps(pub.get("data"))
        prev = self.prev.get(channel)
        self.prev[channel] = (epoch, offset, data)
        if not wanted or prev is None or prev[0] != epoch or prev[1] != offset - 1:
            return None
        delta = create_delta(prev[2], data)
        if len(delta) >= len(data):
            return None
        try:
            delta.decode()
        except UnicodeDecodeError:
            return None
        self.made += 1
        self.saved += len(data) - len(delta)
        return delta

    def forget(self, channel: str) -> None:
        self.prev.pop(channel, None)

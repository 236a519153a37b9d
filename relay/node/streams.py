"""Stream positions: where this node's delivery of each recoverable channel stands, so no subscriber is
handed a stretch twice or with a hole.

The node feeds it every publication that arrives from the broker (``arrived``): one already delivered is
dropped, one after a gap (or of another epoch) makes the channel's subscribers resync (2500: their SDKs
resubscribe and recover from history). A subscribe checks its reply's position against the node's
(``track``): a client whose reply is ahead of the node's delivery waits outside the hub and joins when the
delivery reaches its position (``join_pending``). On brokers whose delivery can lose messages, a loop
compares each channel with its stream (``check_loop``) and resyncs one that stayed behind."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from relay.brokers.base import Broker, BrokerUnavailable, StreamPosition
from relay.config import Config
from relay.core import Hub
from relay.ops.stats import Stats

__all__ = ["Streams"]

log = logging.getLogger("relay.node")

#: a relay.node.session.ClientSession (``resync``, ``send``, ``subs``, ``closed``, ``conn``)
Session = Any


class Streams:
    def __init__(self, cfg: Config, broker: Broker, stats: Stats) -> None:
        self.cfg = cfg
        self.broker = broker
        self.stats = stats
        self.hub: Hub = None  # type: ignore[assignment]  # the node's, from bind()
        # the stream position this node has delivered, per recoverable channel with local subscribers
        self.positions: dict[str, StreamPosition] = {}
        self.behind: dict[str, int] = {}  # channel -> stream top seen ahead of us at the last check
        # subscribers whose reply is ahead of what this node has delivered of the channel: (session, offset
        # of the reply); each joins the hub when the node's delivery reaches that offset (track, join_pending)
        self.pending: dict[str, list[tuple[Session, int]]] = {}
        # subscribes waiting for this node's delivery of a channel to reach an offset (Session._catch_up)
        self.waiters: dict[str, list[tuple[int, asyncio.Future]]] = {}

    def bind(self, hub: Hub) -> None:
        self.hub = hub

    def arrived(self, channel: str, offset: int, epoch: str) -> bool:
        """A publication at ``offset`` of stream ``epoch`` came from the broker: whether to deliver it (False:
        delivered already, or after a gap, which resyncs the channel's subscribers instead)."""
        known = self.positions.get(channel)
        if known is None:
            return True
        if offset <= known.offset and epoch == known.epoch:
            return False  # delivered already
        self.positions[channel] = StreamPosition(offset, epoch)
        if epoch != known.epoch or offset > known.offset + 1:
            # a gap (or a lost stream): subscribers recover from history instead
            self.resync(channel)
            return False
        return True

    def forget(self, channel: str) -> None:
        """The node has no subscriber of ``channel`` left."""
        self.positions.pop(channel, None)
        self.behind.pop(channel, None)

    # --- subscribers catching up ------------------------------------------------------------------

    def delivered_offset(self, channel: str, epoch: str) -> int:
        """The offset this node has delivered up to in ``channel``'s stream ``epoch`` (0: not tracked)."""
        known = self.positions.get(channel)
        return known.offset if known is not None and known.epoch == epoch else 0

    async def offset_reached(self, channel: str, offset: int, timeout: float) -> None:
        """Return once a publication of ``channel`` with ``offset`` or a later one arrives here (or one of
        another stream: the caller checks again), or after ``timeout`` seconds."""
        fut = asyncio.get_running_loop().create_future()
        entry = (offset, fut)
        waiters = self.waiters.setdefault(channel, [])
        waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            pass
        finally:
            waiters = self.waiters.get(channel)
            if waiters is not None and entry in waiters:
                waiters.remove(entry)
                if not waiters:
                    del self.waiters[channel]

    def offset_arrived(self, channel: str, offset: int) -> None:
        """Wake the subscribes waiting for ``channel`` to reach ``offset`` or less (0: no offset)."""
        waiters = self.waiters.get(channel)
        if not waiters:
            return
        keep = []
        for want, fut in waiters:
            if offset >= want or offset == 0:  # reached, or no offset to compare: let it look again
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((want, fut))
        if keep:
            self.waiters[channel] = keep
        else:
            del self.waiters[channel]

    def track(self, channel: str, pos: StreamPosition) -> str:
        """Check ``channel``'s stream against what this node delivers. Called with the position a subscribe
        reply gave its client (the last offset it has), right before that client joins: 'join' (the hub
        carries on exactly from there), 'wait' (join later: ``wait_to_join``), or 'behind' (the node is past
        that position: the client would miss a stretch, so it gets 2500 instead).

        When the node's delivery is behind ``pos``, what is still to arrive up to ``pos`` is old to the new
        subscriber: pub/sub messages slower than the history read, or a backlog that Redis buffered for this
        node during a network cut. So the client waits outside the hub and joins once the node's delivery
        reaches ``pos``; the earlier subscribers meanwhile get the stream in order, as it comes. Another
        epoch: the stream this node was delivering is gone; it moves to ``pos`` and its earlier subscribers
        get 2500 (they recover from their own positions)."""
        if not pos.epoch:
            return "join"
        known = self.positions.get(channel)
        if known is None:
            self.positions[channel] = pos
        elif known.epoch != pos.epoch:
            self.positions[channel] = pos
            self.behind.pop(channel, None)
            if self.hub.num_subscribers(channel) or channel in self.pending:
                self.resync(channel)
        elif known.offset < pos.offset:
            return "wait"
        elif known.offset > pos.offset:
            return "behind"
        return "join"

    def wait_to_join(self, channel: str, s: Session, after: int) -> None:
        """``s`` has ``channel``'s stream up to ``after``, which the node's delivery has not reached yet."""
        self.pending.setdefault(channel, []).append((s, after))

    def drop_pending(self, channel: str, s: Session) -> None:
        pending = self.pending.get(channel)
        if pending is not None:
            pending = self.pending[channel] = [(p, a) for p, a in pending if p is not s]
            if not pending:
                del self.pending[channel]

    def join_pending(self, channel: str, pub: dict, offset: int) -> None:
        """A publication the hub has just delivered: the waiting subscribers it brings up to their position
        join the hub (one whose position it passed gets it first, as the hub went past it)."""
        pending = self.pending.get(channel)
        if pending is None:
            return
        keep = []
        for s, after in pending:
            if s.closed or channel not in s.subs:
                continue
            if offset < after:
                keep.append((s, after))
                continue
            if offset > after:
                s.send(s.pub_push(channel, pub))
            self.hub.subscribe(channel, s.conn, *s.hub_args(channel))
        if keep:
            self.pending[channel] = keep
        else:
            self.pending.pop(channel, None)

    def resync(self, channel: str) -> None:
        """Publications of ``channel`` may have been missed here: every local subscriber gets Centrifugo's
        'insufficient state' unsubscribe (2500) and its SDK resubscribes, recovering from history."""
        self.stats.resyncs += 1
        log.warning("gap detected in a channel's stream: resyncing its subscribers",
                    extra={"event": "resync", "channel": channel, "subscribers": self.hub.num_subscribers(channel)})
        for conn in self.hub.subscribers(channel):
            if conn.session is not None:
                conn.session.resync(channel)
        for s, _ in self.pending.pop(channel, ()):
            s.resync(channel)

    async def check_loop(self, interval: float) -> None:
        """Find publications this node never received (a dropped pub/sub link, a paused or restarted
        Redis) by comparing each tracked channel with its stream, twice before acting."""
        while True:
            await asyncio.sleep(interval)
            for channel in list(self.positions):
                try:
                    hr = await asyncio.wait_for(
                        self.broker.history(channel, since=None, limit=0, reverse=False,
                                            meta_ttl=self.cfg.history_meta_ttl), interval)
                except (TimeoutError, BrokerUnavailable):
                    continue
                mine = self.positions.get(channel)
                if mine is None:
                    continue
                top = hr.position
                if top.epoch != mine.epoch:
                    self.positions[channel] = top
                    self.resync(channel)
                elif top.offset > mine.offset:
                    seen_before = self.behind.get(channel)
                    if seen_before is not None and mine.offset < seen_before:
                        # what was published by the previous check never reached this node
                        self.positions[channel] = top
                        self.behind.pop(channel, None)
                        self.resync(channel)
                    else:
                        self.behind[channel] = top.offset
                else:
                    self.behind.pop(channel, None)

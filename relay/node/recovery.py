"""Coalesced stream reads for subscribes: one broker history read per channel serves every waiting client.

When thousands of clients reconnect at once (a node restarted, a mobile network blipped),
each one's subscribe reads its channel's stream: the position (``limit 0``) or, when it
recovers, the publications after its offset. Made one by one, that is one broker read per
client per channel, all for the same few channels. The :class:`RecoveryCoalescer` batches
them per channel:

* while a read of a channel is in flight, new requests for that channel wait for the NEXT
  read, which starts when the current one has finished and serves all of them;
* that read asks for the publications after the smallest offset among its waiters (or only
  the position, when none of them recovers); every waiter then takes the slice newer than
  its own offset and decides "recovered" exactly as a read of its own would have;
* in a storm (requests piling up behind a channel's read, or one read serving several), the
  recovering reads of that channel (those that carry missed publications; a position-only read
  is cheap and goes at once) start at most once per ``recovery_read_interval``: the next batch stays
  open meanwhile and gathers everyone who asks. Without that, reads follow each other as fast as
  Redis answers, and a relay busy with thousands of handshakes feeds each one only a few
  subscribes (measured: 0.4 reads per client instead of 0.005). A channel without contention
  is read at once, so a quiet subscribe never waits;
* a semaphore bounds the broker reads in flight on this node over all channels
  (``recovery_max_concurrent_reads``).

**The invariant.** A request never joins a read that started before it was made. The
subscribe path starts collecting the channel's live publications (``Node.collect``) before
it asks for the position; a read that had begun before that collector existed could miss a
publication that is then neither in the read nor in the collector. So a batch accepts
waiters only until the moment its broker call is issued (it may wait for the semaphore
meanwhile, still open), and everything asked after that waits for the next one.

The result of a read is shared, not copied: each waiter gets its own slice of the one list
of publications (a slice copies references, not publications).
"""

from __future__ import annotations

import asyncio
import bisect
from collections import Counter

from relay.brokers.base import Broker, HistoryResult, StreamPosition, UnrecoverablePosition

__all__ = ["RecoveryCoalescer", "serve"]

#: what a read leaves for its waiters: the stream position and the publications after the batch's smallest
#: offset, oldest first (None: no publications were read: a position-only read); after an epoch that did not
#: match, the whole stream of the current epoch
Outcome = tuple[StreamPosition, list[dict] | None]


def _offset(pub: dict) -> int:
    return pub.get("offset", 0)


def serve(since: StreamPosition | None, outcome: Outcome) -> tuple[StreamPosition, list[dict], bool]:
    """One waiter's answer from a shared read: (position, publications it missed, recovered).

    The same decision a read of its own would make: a stream that no longer holds the publication
    right after ``since`` is "not recovered" with no publications. Another epoch (Redis restarted
    empty, the stream expired) is "not recovered" too, since the old stream's tail is lost; but when
    the new stream still holds its first publication, the client gets the new stream from there:
    everything published since the broker came back is still delivered, nothing it has is lost."""
    pos, pubs = outcome
    if since is None or pubs is None:
        return pos, [], False
    if since.epoch and since.epoch != pos.epoch:  # an empty epoch is any epoch (as in Centrifugo)
        return pos, (pubs if pubs and pubs[0].get("offset") == 1 else []), False
    mine = pubs[bisect.bisect_right(pubs, since.offset, key=_offset):]
    top = pos.offset
    recovered = since.offset == top or (since.offset < top and bool(mine)
                                        and mine[0].get("offset") == since.offset + 1)
    return pos, (mine if recovered else []), recovered


class _Batch:
    """The requests one broker read will serve; open (accepting requests) until that read is issued."""

    __slots__ = ("future", "min_offset", "epochs", "size")

    def __init__(self) -> None:
        self.future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.min_offset: int | None = None  # smallest offset a waiter recovers from (None: only positions)
        self.epochs: set[str] = set()
        self.size = 0

    def add(self, since: StreamPosition | None) -> None:
        self.size += 1
        if since is not None:
            self.epochs.add(since.epoch)
            if self.min_offset is None or since.offset < self.min_offset:
                self.min_offset = since.offset


class _Channel:
    """Per channel: the read in flight (closed) and the next one (open, starts when the first finishes)."""

    __slots__ = ("running", "next", "last_start", "hot")

    def __init__(self) -> None:
        self.running: _Batch | None = None
        self.next: _Batch | None = None
        self.last_start = float("-inf")  # loop time the last read was issued
        self.hot = False  # the last read served several requests, or requests queued behind it: a storm


class RecoveryCoalescer:
    """Stream reads for subscribes (position, or recovery since an offset), batched per channel, at most one
    per ``read_interval`` seconds for a channel in a storm.

    ``reads`` counts the broker history reads made, by reason ("recover": the read has at least
    one recovering waiter; "position": positions only); ``coalesced`` counts requests served by
    a read made for another request too (each read's waiters but one). With ``coalesce`` off
    every request makes its own reads, as a subscribe without this class would (the baseline
    of ``bench/recovery.py``); the semaphore bounds them either way.
    """

    def __init__(self, broker: Broker, *, coalesce: bool = True, max_concurrent_reads: int = 32,
                 read_interval: float = 0.0, meta_ttl: float = 86400.0, reads: Counter[str] | None = None) -> None:
        self.broker = broker
        self.coalesce = coalesce
        self.read_interval = read_interval
        self.meta_ttl = meta_ttl
        self.reads: Counter[str] = reads if reads is not None else Counter()
        self.coalesced = 0
        self.max_concurrent_reads = max_concurrent_reads
        self._sem: asyncio.Semaphore | None = None  # made on first use: it needs the running loop
        self._channels: dict[str, _Channel] = {}
        self._tasks: set[asyncio.Task] = set()

    async def read(self, channel: str, since: StreamPosition | None) -> tuple[StreamPosition, list[dict], bool]:
        """``channel``'s stream position and, when ``since`` is given, the publications after it:
        (position, publications, recovered). Call it only after this node collects the channel's
        live publications (see the module's invariant). Raises ``BrokerUnavailable``."""
        if not self.coalesce:
            batch = _Batch()
            batch.add(since)
            async with self._semaphore():
                return serve(since, await self._read(channel, batch))
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _Channel()
        batch = state.next
        if batch is None:
            # Never the read in flight (state.running): it may have been issued before this request's
            # collector existed. This one is issued later, when that one is done.
            batch = state.next = _Batch()
            if state.running is None:
                self._start(channel, state, batch, queued=state.hot)
        elif batch.size:
            self.coalesced += 1  # served by a read another request started
        batch.add(since)
        # shielded: a waiter that goes away (its client disconnected) must not cancel the others' read
        return serve(since, await asyncio.shield(batch.future))

    def _semaphore(self) -> asyncio.Semaphore:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.max_concurrent_reads)
        return self._sem

    def _start(self, channel: str, state: _Channel, batch: _Batch, queued: bool) -> None:
        task = asyncio.get_running_loop().create_task(self._run(channel, state, batch, queued))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, channel: str, state: _Channel, batch: _Batch, queued: bool) -> None:
        loop = asyncio.get_running_loop()
        try:
            # Requests pile up on this channel: a storm. Space the recovering reads (they carry the missed
            # publications) and let more requests join; position-only reads are cheap and a crowd
            # subscribing afresh (a flash sale) must not wait for the interval.
            if queued and batch.min_offset is not None:
                wait = state.last_start + self.read_interval - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            async with self._semaphore():
                # Close the batch before its read is issued: from here on, requests wait for the next read
                # (this one may reach the broker before their collectors exist).
                state.next = None
                state.running = batch
                state.last_start = loop.time()
                state.hot = queued or batch.size > 1
                outcome = await self._read(channel, batch)
        except BaseException as e:
            if state.next is batch:
                state.next = None
            if not batch.future.done():
                if isinstance(e, Exception):
                    batch.future.set_exception(e)
                    batch.future.exception()  # retrieved: no "never retrieved" warning when every waiter left
                else:
                    batch.future.cancel()
            if not isinstance(e, Exception):
                raise
        else:
            batch.future.set_result(outcome)
        finally:
            state.running = None
            if state.next is not None:
                self._start(channel, state, state.next, queued=True)
            elif state.hot and self.read_interval > 0:  # a storm: the next request waits for the interval too
                loop.call_at(state.last_start + self.read_interval, self._forget, channel, state)
            else:
                self._forget(channel, state)

    def _forget(self, channel: str, state: _Channel) -> None:
        if self._channels.get(channel) is state and state.running is None and state.next is None:
            del self._channels[channel]

    async def _history(self, channel: str, since: StreamPosition | None, limit: int, reason: str) -> HistoryResult:
        self.reads[reason] += 1
        return await self.broker.history(channel, since=since, limit=limit, reverse=False, meta_ttl=self.meta_ttl)

    async def _read(self, channel: str, batch: _Batch) -> Outcome:
        """The broker read(s) for ``batch``: the same calls one subscribe would make when the batch is
        one request (a recovery whose epoch is gone reads the current stream whole)."""
        if batch.min_offset is None:
            return (await self._history(channel, None, 0, "position")).position, None
        if len(batch.epochs) > 1:  # waiters hold different epochs: read everything, each one checks its own
            hr = await self._history(channel, None, -1, "recover")
            return hr.position, hr.publications
        since = StreamPosition(batch.min_offset, next(iter(batch.epochs)))
        try:
            hr = await self._history(channel, since, -1, "recover")
        except UnrecoverablePosition:  # the epoch is gone: the new stream, whole (serve keeps it if complete)
            hr = await self._history(channel, None, -1, "recover")
        return hr.position, hr.publications

    def close(self) -> None:
        """Cancel the reads under way (the node is stopping): their waiters get CancelledError."""
        for task in list(self._tasks):
            task.cancel()

"""Reconnect storm: broker history reads per recovering client, and the time until every client has recovered.

Set-up (in one run, twice: ``recovery_coalesce = true``, then ``false`` as the baseline):

* a real ``redis-server`` and relay on it (``broker = "redis"``), both pinned to CPU 0, started fresh
  for each mode by ``relay.testing``; the ``bench`` namespace keeps 100 publications per channel with
  ``force_recovery``;
* ``--clients`` WebSocket clients (default 10,000) on ``--channels`` channels (default 10), client i on
  channel i mod channels, in ``--workers`` generator processes on CPU 1 (``bench/common.run_worker``:
  they die with this process). Each client is wsclient.py's minimal hand-written client: fixed upgrade
  request, frames masked with the zero key; it sends ``connect`` and ``subscribe`` in one frame and
  keeps the offset and epoch of its subscribe reply;
* **the cut**: every worker drops all its connections at once (RST), as a mobile network blip or a
  load balancer restart does; the run waits until relay has closed every session;
* ``--missed`` publications per channel (default 5) through relay's HTTP API while they are away;
* **the storm**: at one instant every client reconnects (``--spread`` seconds of uniform jitter, default
  0: all at once) and subscribes with ``recover: true`` from its offset.

Figures per mode: broker history reads made during the storm (``relay_history_reads_total``, reasons
``recover`` and ``position``, from relay's ``/metrics``) per recovering client (goal with coalescing:
<= 0.01; without it, 1); subscribes served by a shared read (``relay_recoveries_coalesced_total``); the
time from the storm's instant until the last client has its subscribe reply ("all recovered"), p50 and
p99 of that time per client; relay's CPU during the storm per recovered client; and every client's check:
``recovered: true`` and exactly the missed offsets, in order (anything else is counted as WRONG).

Prints one line per mode and the ratio, writes bench/results/recovery-<timestamp>.json.
Run: ``.venv/bin/python bench/recovery.py`` (``--quick``: 2,000 clients, under a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
import uuid
from multiprocessing.connection import Connection
from typing import Any

import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (GENERATOR_CPU, SERVER_CPU, RelayServer, machine_description, pin_to,  # noqa: E402
                    raise_nofile, run_worker, write_result)
from histogram import Histogram  # noqa: E402
from scenarios_common import Printer, WorkerPool, banner, fmt_ms, percentiles, serve_pipe, sleep_until_ns  # noqa: E402
from wsclient import (PONG, abort, abort_all, client_frame, closed_by_server, failure_kind, server_frames,  # noqa: E402
                      take_upgrade, upgrade_request)

from relay.testing import RedisProcess  # noqa: E402

__all__ = ["run_mode", "format_line", "main", "GOAL_READS_PER_CLIENT"]

GOAL_READS_PER_CLIENT = 0.01  #: issue 11: broker history reads per recovering client with coalescing
CHANNEL = "bench:storm{}"


# ------------------------------------------------------------------------------------------------
# worker process
# ------------------------------------------------------------------------------------------------

class _State:
    """A worker's clients and the figures of its current phase."""

    def __init__(self) -> None:
        self.clients: list[_Client] = []
        self.done = asyncio.Event()  # set when no client of the phase is pending
        self.reset(0, False, 0)

    def reset(self, t0: int, recover: bool, missed: int) -> None:
        self.t0, self.recover, self.missed = t0, recover, missed
        self.pending = 0
        self.ok = self.not_recovered = self.wrong = 0
        self.failures: dict[str, int] = {}
        self.failure_sample = ""
        self.wrong_sample = ""
        self.last_ns = 0
        self.hist = Histogram()

    def finished(self, now: int) -> None:
        self.pending -= 1
        self.last_ns = max(self.last_ns, now)
        if self.pending == 0:
            self.done.set()


class _Client(asyncio.Protocol):
    """One client: upgrade, then ``connect`` + ``subscribe`` (recovering from its offset in the storm)."""

    __slots__ = ("st", "channel", "offset", "epoch", "transport", "upgraded", "buf", "done", "request", "connect")

    def __init__(self, st: _State, channel: str, request: bytes, connect: bytes) -> None:
        self.st, self.channel, self.request, self.connect = st, channel, request, connect
        self.offset, self.epoch = 0, ""
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.buf = b""
        self.done = True

    def begin(self) -> None:
        self.transport, self.upgraded, self.buf, self.done = None, False, b"", False

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        transport.write(self.request)

    def _commands(self) -> bytes:
        sub: dict[str, Any] = {"channel": self.channel}
        if self.st.recover:
            sub.update(recover=True, offset=self.offset, epoch=self.epoch)
        return client_frame(self.connect + b"\n" + orjson.dumps({"id": 2, "subscribe": sub}))

    def failed(self, kind: str, detail: str = "") -> None:
        if self.done:
            return
        self.done = True
        st = self.st
        st.failures[kind] = st.failures.get(kind, 0) + 1
        st.failure_sample = st.failure_sample or f"{kind}: {detail}"[:200]
        st.finished(time.time_ns())
        if self.transport is not None:
            abort(self.transport)

    def _subscribed(self, res: dict, now: int) -> None:
        st = self.st
        self.done = True
        if st.recover:
            pubs = [p.get("offset") for p in res.get("publications", ())]
            want = list(range(self.offset + 1, self.offset + 1 + st.missed))
            if not res.get("recovered"):
                st.not_recovered += 1
            elif pubs != want or res.get("offset") != self.offset + st.missed or res.get("epoch") != self.epoch:
                st.wrong += 1
                st.wrong_sample = st.wrong_sample or f"got {pubs} at {res.get('offset')}, wanted {want}"
            else:
                st.ok += 1
        else:
            st.ok += 1
        self.offset, self.epoch = res.get("offset", 0), res.get("epoch", "")
        st.hist.add(now - st.t0)
        st.finished(now)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if not self.upgraded:
            buf = take_upgrade(self, buf)
            if buf is None:
                return
            self.transport.write(self._commands())  # type: ignore[union-attr]
        frames, self.buf = server_frames(buf)
        for opcode, payload in frames:
            if closed_by_server(self, opcode, payload):
                return
            if opcode != 1:
                continue
            for line in payload.split(b"\n"):
                if line == b"{}":
                    self.transport.write(PONG)  # type: ignore[union-attr]
                elif not self.done and line.startswith(b'{"id":'):
                    msg = orjson.loads(line)
                    if "error" in msg:
                        self.failed(f"error_{msg['error'].get('code')}", line[:200].decode(errors="replace"))
                        return
                    if msg.get("id") == 2:
                        self._subscribed(msg["subscribe"], time.time_ns())

    def connection_lost(self, exc) -> None:
        if not self.done:
            self.failed(failure_kind(exc) if exc else "closed_before_reply", repr(exc))


async def _connect_all(st: _State, host: str, port: int, spread_ns: int, limit: int, timeout: float) -> None:
    """(Re)connect every client: from ``st.t0`` on, spread uniformly over ``spread_ns`` (0: all at once), with
    at most ``limit`` handshakes under way (0: no limit); clients without an answer by ``timeout`` fail."""
    loop = asyncio.get_running_loop()
    st.pending = len(st.clients)
    st.done.clear()
    gate = asyncio.Semaphore(limit) if limit else None
    order = list(range(len(st.clients)))
    if spread_ns:
        random.shuffle(order)
    due = sorted(st.t0 + random.randrange(spread_ns) for _ in st.clients) if spread_ns else None
    await sleep_until_ns(st.t0)

    async def one(c: _Client) -> None:
        c.begin()
        try:
            await loop.create_connection(lambda: c, host, port)
        except OSError as e:
            c.failed(failure_kind(e), f"{type(e).__name__}: {e}")

    async def gated(c: _Client) -> None:
        async with gate:  # type: ignore[union-attr]
            await one(c)
            while not c.done:
                await asyncio.sleep(0.005)

    tasks = []
    for k, i in enumerate(order):
        if due is not None and due[k] > time.time_ns():
            await sleep_until_ns(due[k])
        tasks.append(loop.create_task(gated(st.clients[i]) if gate else one(st.clients[i])))
    try:
        await asyncio.wait_for(st.done.wait(), timeout)
    except TimeoutError:
        for c in st.clients:
            c.failed("timeout")
    await asyncio.gather(*tasks, return_exceptions=True)


async def _worker_async(pipe: Connection, host: str, port: int, path: str, token: str, first: int, n: int,
                        channels: int) -> None:
    request = upgrade_request(host, port, path)
    connect = orjson.dumps({"id": 1, "connect": {"token": token}})
    st = _State()
    st.clients = [_Client(st, CHANNEL.format(i % channels), request, connect) for i in range(first, first + n)]
    pipe.send(("ready",))

    async def handle(cmd: str, *args: Any) -> tuple:
        if cmd in ("open", "storm"):
            t0, missed, spread, limit, timeout = args
            st.reset(t0, cmd == "storm", missed)
            await _connect_all(st, host, port, int(spread * 1e9), limit, timeout)
            return ("report", {"clients": len(st.clients), "ok": st.ok, "not_recovered": st.not_recovered,
                               "wrong": st.wrong, "wrong_sample": st.wrong_sample, "failures": st.failures,
                               "failure_sample": st.failure_sample, "last_ns": st.last_ns,
                               "hist": st.hist.to_sparse()})
        if cmd == "cut":  # every connection dropped at once, with RST (no FIN, no close handshake)
            n_cut = 0
            for c in st.clients:
                if c.transport is not None and not c.transport.is_closing():
                    c.done = True
                    abort(c.transport)
                    n_cut += 1
            return ("cut", n_cut)
        return ("error", f"unknown command {cmd!r}")

    await serve_pipe(pipe, handle)
    abort_all(st.clients)


def worker_main(pipe: Connection, *args: Any) -> None:
    run_worker(_worker_async, pipe, *args)


# ------------------------------------------------------------------------------------------------
# coordinator
# ------------------------------------------------------------------------------------------------

def _reads(relay: RelayServer) -> dict[str, float]:
    m = relay.metrics()
    out = {r: m["relay_history_reads_total", {"reason": r}] for r in ("recover", "position", "history")}
    out["coalesced"] = m["relay_recoveries_coalesced_total"]
    out["connections"] = m.total("relay_connections")
    return out


def _merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    hist = Histogram()
    failures: dict[str, int] = {}
    for r in reports:
        hist.merge_sparse(r["hist"])
        for k, v in r["failures"].items():
            failures[k] = failures.get(k, 0) + v
    total = {k: sum(r[k] for r in reports) for k in ("clients", "ok", "not_recovered", "wrong")}
    return {**total, "failed": sum(failures.values()), "failures": failures,
            "failure_sample": next((r["failure_sample"] for r in reports if r["failure_sample"]), ""),
            "wrong_sample": next((r["wrong_sample"] for r in reports if r["wrong_sample"]), ""),
            "last_ns": max(r["last_ns"] for r in reports), "latency_ms": percentiles(hist)}


async def _until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(cond):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        await asyncio.sleep(0.1)


async def run_mode(coalesce: bool, args: argparse.Namespace, out: Printer) -> dict[str, Any]:
    """One storm on a fresh Redis and relay with ``recovery_coalesce = coalesce``: its figures."""
    redis = RedisProcess(cpu=SERVER_CPU)
    await asyncio.to_thread(redis.start)
    relay = RelayServer(extra_config={
        "broker": "redis", "redis_urls": [redis.url], "redis_prefix": f"bench{uuid.uuid4().hex[:6]}",
        "recovery_coalesce": coalesce, "recovery_max_concurrent_reads": args.max_reads,
        "recovery_read_interval": args.read_interval,
        "namespaces": {"bench": {"history_size": 100, "history_ttl": 600.0, "force_recovery": True}}})
    pool: WorkerPool | None = None
    try:
        await asyncio.to_thread(relay.start)
        for k in range(args.channels):  # each stream exists before anyone subscribes
            await asyncio.to_thread(relay.api, "publish", {"channel": CHANNEL.format(k), "data": {"n": "first"}})
        per = [args.clients // args.workers + (1 if i < args.clients % args.workers else 0)
               for i in range(args.workers)]
        firsts = [sum(per[:i]) for i in range(args.workers)]
        pool = WorkerPool(worker_main, [("127.0.0.1", relay.ws_port, "/connection/websocket", relay.token(),
                                         firsts[i], per[i], args.channels) for i in range(args.workers)])
        await asyncio.to_thread(pool.recv_all, 60)
        # everyone connected and subscribed, at a gentle pace (at most 200 handshakes under way per worker)
        t0 = time.time_ns() + 200_000_000
        opened = _merge([r[1] for r in await asyncio.to_thread(pool.all, "open", t0, 0, 0.0, 200, 120.0,
                                                               timeout=180)])
        if opened["ok"] != args.clients:
            raise RuntimeError(f"only {opened['ok']} of {args.clients} clients subscribed: {opened['failures']} "
                               f"{opened['failure_sample']}")
        cut = sum(r[1] for r in await asyncio.to_thread(pool.all, "cut"))
        await _until(lambda: _reads(relay)["connections"] == 0, 60, "relay to close every session")
        for m in range(args.missed):
            for k in range(args.channels):
                await asyncio.to_thread(relay.api, "publish", {"channel": CHANNEL.format(k), "data": {"n": m}})
        before = await asyncio.to_thread(_reads, relay)
        cpu0 = relay.cpu_seconds()
        t0 = time.time_ns() + 300_000_000
        storm = _merge([r[1] for r in await asyncio.to_thread(pool.all, "storm", t0, args.missed, args.spread, 0,
                                                              args.timeout, timeout=args.timeout + 60)])
        cpu = relay.cpu_seconds() - cpu0
        after = await asyncio.to_thread(_reads, relay)
    finally:
        if pool is not None:
            await asyncio.to_thread(pool.close)
        alive = relay.alive()
        if not alive:
            out(f"  relay log tail:\n{relay.log()[-2000:]}")
        relay.cleanup()
        redis.cleanup()
    recovering = storm["clients"]
    reads = {r: int(after[r] - before[r]) for r in ("recover", "position", "history")}
    subscribe_reads = reads["recover"] + reads["position"]
    return {
        "server": "relay", "mode": "coalesced" if coalesce else "baseline", "recovery_coalesce": coalesce,
        "recovery_max_concurrent_reads": args.max_reads, "recovery_read_interval": args.read_interval,
        "clients": args.clients, "channels": args.channels,
        "missed_per_channel": args.missed, "spread_s": args.spread, "cut": cut,
        "recovered_ok": storm["ok"], "not_recovered": storm["not_recovered"], "wrong": storm["wrong"],
        "wrong_sample": storm["wrong_sample"], "failed": storm["failed"], "failures": storm["failures"],
        "failure_sample": storm["failure_sample"],
        "history_reads": reads, "history_reads_per_client": round(subscribe_reads / recovering, 5),
        "coalesced": int(after["coalesced"] - before["coalesced"]),
        "all_recovered_s": round((storm["last_ns"] - t0) / 1e9, 3) if storm["last_ns"] else None,
        "recovery_ms": storm["latency_ms"],
        "server_cpu_s": round(cpu, 3),
        "server_cpu_us_per_recovery": round(cpu * 1e6 / storm["ok"], 1) if storm["ok"] else None,
        "server_alive": alive,
    }


def format_line(r: dict[str, Any]) -> str:
    lat = r["recovery_ms"]
    bad = r["not_recovered"] + r["wrong"] + r["failed"]
    return (f"  {r['mode']:<9} {r['clients']:,} clients, {r['channels']} channels: "
            f"{r['history_reads']['recover'] + r['history_reads']['position']:,} history reads = "
            f"{r['history_reads_per_client']:.4f} per recovering client; all recovered in {r['all_recovered_s']} s "
            f"(p50 {fmt_ms(lat['p50'])} ms, p99 {fmt_ms(lat['p99'])} ms); relay CPU {r['server_cpu_s']:.2f} s "
            f"({r['server_cpu_us_per_recovery']} us per client); {r['recovered_ok']:,} recovered every missed "
            f"publication in order" + (f"; {bad} NOT: {r['not_recovered']} not recovered, {r['wrong']} WRONG "
                                       f"({r['wrong_sample']}), {r['failed']} failed {r['failures']} "
                                       f"{r['failure_sample']}" if bad else ""))


async def amain(args: argparse.Namespace) -> int:
    pin_to(GENERATOR_CPU)
    raise_nofile()
    out = Printer()
    machine = machine_description()
    out(banner(machine))
    out(f"reconnect storm: relay and redis-server on CPU {SERVER_CPU}, {args.workers} generator processes on CPU "
        f"{GENERATOR_CPU}; {args.clients:,} WebSocket clients on {args.channels} channels cut together (RST), "
        f"{args.missed} publications per channel while away, then all reconnect"
        + (f" within {args.spread:g} s" if args.spread else " at once") + " and subscribe with recover")
    results = []
    for coalesce in (True, False):
        r = await run_mode(coalesce, args, out)
        results.append(r)
        out(format_line(r))
    co, base = results
    goal = co["history_reads_per_client"] <= GOAL_READS_PER_CLIENT
    correct = all(r["recovered_ok"] == r["clients"] for r in results)
    summary = {
        "reads_per_client": {"coalesced": co["history_reads_per_client"],
                             "baseline": base["history_reads_per_client"]},
        "reads_ratio": round(base["history_reads_per_client"] / co["history_reads_per_client"], 1)
        if co["history_reads_per_client"] else None,
        "all_recovered_s": {"coalesced": co["all_recovered_s"], "baseline": base["all_recovered_s"]},
        "goal_reads_per_client": GOAL_READS_PER_CLIENT, "goal_met": goal, "every_client_recovered": correct,
    }
    out(f"same run: coalescing makes {summary['reads_ratio']}x fewer broker history reads "
        f"({co['history_reads_per_client']:.4f} against {base['history_reads_per_client']:.4f} per client; goal "
        f"<= {GOAL_READS_PER_CLIENT}: {'met' if goal else 'NOT MET'}); all recovered in {co['all_recovered_s']} s "
        f"against {base['all_recovered_s']} s")
    path = write_result("recovery", {
        "machine": machine, "args": vars(args), "scenario": "recovery", "kind": "recovery",
        "definitions": {
            "history_reads_per_client": "broker history reads (relay_history_reads_total, reasons recover and "
                                        "position) during the storm / clients recovering",
            "all_recovered_s": "from the storm's instant to the last client's subscribe reply",
            "recovery_ms": "per client: the storm's instant -> its subscribe reply (recovered publications in it)",
            "server_cpu_us_per_recovery": "relay utime+stime during the storm / clients recovered",
        },
        "results": results, "summary": summary, "printed": out.lines})
    print(f"results: {path}")
    return 0 if correct else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="reconnect storm: coalesced recovery against one read per client",
                                 epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=None, help="WebSocket clients (default 10000; --quick 2000)")
    ap.add_argument("--channels", type=int, default=10, help="channels, client i on channel i mod N (default 10)")
    ap.add_argument("--missed", type=int, default=5, help="publications per channel while the clients are away")
    ap.add_argument("--spread", type=float, default=0.0, help="seconds over which the reconnects are spread "
                    "(uniform jitter; default 0: all at once)")
    ap.add_argument("--workers", type=int, default=None, help="generator processes on CPU 1 (default 4; --quick 2)")
    ap.add_argument("--max-reads", type=int, default=32, help="recovery_max_concurrent_reads (default 32)")
    ap.add_argument("--read-interval", type=float, default=None,
                    help="recovery_read_interval (default: relay's, 0.5 s)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds the storm may take before clients fail")
    ap.add_argument("--quick", action="store_true", help="2,000 clients (under a minute)")
    args = ap.parse_args(argv)
    if args.clients is None:
        args.clients = 2000 if args.quick else 10000
    if args.workers is None:
        args.workers = 2 if args.quick else 4
    if args.read_interval is None:
        from relay.config import Config

        args.read_interval = Config().recovery_read_interval
    import uvloop

    return uvloop.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())

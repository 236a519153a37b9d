"""Outbox benchmark: commit-to-delivery latency and drain throughput of relay's PostgreSQL outbox consumer.

Setup: relay pinned to CPU 0 (``RelayServer``) consuming a fresh outbox table; the
backend (asyncpg, a pool of 4 connections) and one WebSocket subscriber of ``bench:outbox``
in this process, pinned to CPU 1; PostgreSQL is a private throw-away server
(``relay.testing.PostgresProcess``, fsync off), else the machine's server at
127.0.0.1:5432 (a fresh database), or ``--dsn``.

* **Latency at a rate**: each row is its own transaction (``INSERT`` + ``COMMIT``, one
  statement), paced at R rows/s for ``--duration`` s; its payload carries its sequence
  number and the wall-clock time before the commit. Commit-to-delivery = the subscriber's
  receive time - the time the commit returned to the backend (same clock, same process).
  The consumer is woken by NOTIFY; ``outbox_poll_interval`` stays at its 1 s default.
  The peer in the same run: the same rate published straight through ``POST /api/publish``
  (no transaction, no outbox), request sent -> delivery.
* **Drain**: N rows committed in one transaction, then the time until the subscriber has
  them all: rows/s, for each ``--batch-sizes`` (``outbox_batch_size``).

Relay's CPU time (utime + stime from /proc) is charged to the rows of each step.
Prints one line per step and writes bench/results/outbox-<timestamp>.json.
Run: ``.venv/bin/python bench/outbox.py`` (``--quick`` for a smoke test).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import GENERATOR_CPU, RelayServer, machine_description, pin_to, write_result  # noqa: E402

__all__ = ["main"]

CHANNEL = "bench:outbox"
INSERT = ("INSERT INTO {table} (method, payload, partition) VALUES ('publish', "
          "jsonb_build_object('channel', $1::text, 'data', jsonb_build_object('seq', $2::int, 't', $3::float8)), $4)")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class Subscriber:
    """One WebSocket subscriber (Centrifugo JSON protocol, aiohttp): receive time per ``seq``."""

    def __init__(self) -> None:
        self.received: dict[int, float] = {}
        self.count = 0
        self.wanted = 0
        self.done = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def open(self, url: str, token: str) -> None:
        import aiohttp
        import orjson

        self._http = aiohttp.ClientSession()
        self.ws = await self._http.ws_connect(url, max_msg_size=0)
        await self.ws.send_str(orjson.dumps({"id": 1, "connect": {"token": token}}).decode())
        await self.ws.send_str(orjson.dumps({"id": 2, "subscribe": {"channel": CHANNEL}}).decode())
        replies = 0
        while replies < 2:
            for line in (await self.ws.receive_str()).split("\n"):
                msg = orjson.loads(line)
                if msg.get("id") in (1, 2):
                    assert "error" not in msg, msg
                    replies += 1
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        import orjson

        async for msg in self.ws:
            now = time.perf_counter()
            for line in msg.data.split("\n"):
                push = orjson.loads(line).get("push")
                if push and "pub" in push:
                    self.received[push["pub"]["data"]["seq"]] = now
                    self.count += 1
                    if self.count >= self.wanted:
                        self.done.set()

    def expect(self, n: int) -> None:
        self.received.clear()
        self.count = 0
        self.wanted = n
        self.done.clear()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.ws.close()
        await self._http.close()


async def wait_done(sub: Subscriber, timeout: float) -> bool:
    try:
        await asyncio.wait_for(sub.done.wait(), timeout)
        return True
    except TimeoutError:
        return False


async def rate_step(relay: RelayServer, pool: Any, sub: Subscriber, table: str, rate: int, duration: float,
                    partitions: int, via_api: bool = False) -> dict[str, Any]:
    """``rate`` rows/s for ``duration`` s; latency from commit (or API request) to delivery."""
    import aiohttp

    n = max(1, int(rate * duration))
    sub.expect(n)
    committed: dict[int, float] = {}
    sql = INSERT.format(table=table)
    http = aiohttp.ClientSession() if via_api else None
    url = f"http://127.0.0.1:{relay.api_port}/api/publish"

    async def one(seq: int) -> None:
        if http is not None:
            t = time.perf_counter()
            async with http.post(url, json={"channel": CHANNEL, "data": {"seq": seq, "t": time.time()}},
                                 headers={"X-API-Key": relay.api_key}) as r:
                await r.read()
            committed[seq] = t
            return
        async with pool.acquire() as conn:
            await conn.execute(sql, CHANNEL, seq, time.time(), seq % partitions)
        committed[seq] = time.perf_counter()

    cpu0 = relay.cpu_seconds()
    t0 = time.perf_counter()
    tasks = []
    for seq in range(n):
        due = t0 + seq / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.get_running_loop().create_task(one(seq)))
    await asyncio.gather(*tasks)
    sent_in = time.perf_counter() - t0
    complete = await wait_done(sub, 15.0)
    cpu = relay.cpu_seconds() - cpu0
    if http is not None:
        await http.close()
    lat = [(sub.received[s] - committed[s]) * 1000 for s in committed if s in sub.received]
    return {"mode": "api" if via_api else "outbox", "rate": rate, "rows": n, "achieved_rate": n / sent_in,
            "delivered": len(lat), "complete": complete,
            "p50_ms": percentile(lat, 0.50), "p99_ms": percentile(lat, 0.99), "max_ms": max(lat, default=float("nan")),
            "relay_cpu_us_per_row": cpu / max(1, len(lat)) * 1e6}


async def drain_step(relay: RelayServer, pool: Any, sub: Subscriber, table: str, rows: int,
                     partitions: int) -> dict[str, Any]:
    """``rows`` rows committed at once; rows/s until the subscriber has them all."""
    sub.expect(rows)
    cpu0 = relay.cpu_seconds()
    async with pool.acquire() as conn:
        await conn.execute(
            f"INSERT INTO {table} (method, payload, partition) SELECT 'publish', jsonb_build_object('channel', "
            "$1::text, 'data', jsonb_build_object('seq', g)), g % $3 FROM generate_series(0, $2 - 1) AS g",
            CHANNEL, rows, partitions)
    t0 = time.perf_counter()
    complete = await wait_done(sub, 120.0)
    elapsed = (max(sub.received.values()) if sub.received else time.perf_counter()) - t0
    cpu = relay.cpu_seconds() - cpu0
    return {"rows": rows, "delivered": sub.count, "complete": complete, "seconds": elapsed,
            "rows_per_s": sub.count / elapsed if elapsed > 0 else float("nan"),
            "relay_cpu_us_per_row": cpu / max(1, sub.count) * 1e6}


class Database:
    """The benchmark's PostgreSQL: ``--dsn``, else a private server, else the machine's (a fresh database)."""

    def __init__(self, dsn: str | None) -> None:
        self.proc = None
        self.admin = None
        self.database = None
        self.dsn = dsn

    async def open(self) -> str:
        import asyncpg

        from relay.testing import PostgresProcess

        if self.dsn:
            return "given by --dsn"
        if PostgresProcess.unavailable() is None:
            self.proc = PostgresProcess().start()
            self.dsn = self.proc.dsn
            return "private PostgreSQL (fsync off)"
        self.admin = "postgresql://postgres@127.0.0.1:5432/postgres"
        self.database = f"relay_bench_{secrets.token_hex(4)}"
        conn = await asyncpg.connect(self.admin)
        await conn.execute(f"CREATE DATABASE {self.database}")
        await conn.close()
        self.dsn = self.admin.rsplit("/", 1)[0] + "/" + self.database
        return "the machine's PostgreSQL at 127.0.0.1:5432"

    async def close(self) -> None:
        import asyncpg

        if self.database:
            conn = await asyncpg.connect(self.admin)
            await conn.execute(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")
            await conn.close()
        if self.proc is not None:
            self.proc.cleanup()


async def amain(args: argparse.Namespace) -> int:
    import asyncpg

    from relay.integrations.outbox import init_table

    pin_to(GENERATOR_CPU)
    db = Database(args.dsn)
    where = await db.open()
    result: dict[str, Any] = {"machine": machine_description(), "postgres_where": where, "partitions": args.partitions,
                              "duration": args.duration, "steps": [], "drain": []}
    try:
        probe = await asyncpg.connect(db.dsn)
        result["postgres"] = await probe.fetchval("SHOW server_version")
        await probe.close()
        print(f"PostgreSQL {result['postgres']}: {where}; relay on CPU 0, "
              f"backend and subscriber on CPU {GENERATOR_CPU}")
        pool = await asyncpg.create_pool(db.dsn, min_size=4, max_size=4)
        for batch in args.batch_sizes:
            table = f"bench_outbox_{secrets.token_hex(3)}"
            await init_table(db.dsn, table)
            relay = RelayServer(extra_config={"outbox_dsn": db.dsn, "outbox_table": table,
                                              "outbox_partitions": args.partitions, "outbox_batch_size": batch})
            relay.start()
            sub = Subscriber()
            try:
                await sub.open(relay.ws_url, relay.token())
                if batch == args.batch_sizes[0]:
                    for rate in args.rates:
                        for via_api in (False, True):
                            step = await rate_step(relay, pool, sub, table, rate, args.duration, args.partitions,
                                                   via_api)
                            result["steps"].append(step)
                            print(f"{'outbox' if not via_api else 'HTTP API':>8} {rate:>5} rows/s "
                                  f"(achieved {step['achieved_rate']:.0f}): p50 {step['p50_ms']:.2f} ms, "
                                  f"p99 {step['p99_ms']:.2f} ms, max {step['max_ms']:.1f} ms, "
                                  f"{step['delivered']}/{step['rows']} delivered, "
                                  f"relay {step['relay_cpu_us_per_row']:.0f} µs CPU/row", flush=True)
                d = await drain_step(relay, pool, sub, table, args.drain_rows, args.partitions)
                d["batch_size"] = batch
                result["drain"].append(d)
                print(f"   drain {d['rows']} rows, outbox_batch_size {batch}: {d['rows_per_s']:.0f} rows/s "
                      f"({d['seconds']:.2f} s, {d['delivered']} delivered), "
                      f"relay {d['relay_cpu_us_per_row']:.0f} µs CPU/row", flush=True)
            finally:
                await sub.close()
                relay.cleanup()
        await pool.close()
    finally:
        await db.close()
    path = write_result("outbox", result)
    print(f"results: {path}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description="relay outbox: commit-to-delivery latency and drain rate",
                                 epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", help="PostgreSQL DSN to use (default: a private server, else 127.0.0.1:5432)")
    ap.add_argument("--rates", help="rows/s of the latency steps, comma-separated (default 100,500,1000,2000)")
    ap.add_argument("--duration", type=float, default=None, help="seconds per latency step (default 5)")
    ap.add_argument("--drain-rows", type=int, default=None, help="rows of the drain step (default 50000)")
    ap.add_argument("--batch-sizes", help="outbox_batch_size values of the drain step (default 100,1000)")
    ap.add_argument("--partitions", type=int, default=16, help="outbox_partitions (default 16)")
    ap.add_argument("--quick", action="store_true", help="short run (smoke test)")
    args = ap.parse_args()
    args.rates = [int(x) for x in (args.rates or ("100,500" if args.quick else "100,500,1000,2000")).split(",")]
    args.batch_sizes = [int(x) for x in (args.batch_sizes or ("100" if args.quick else "100,1000")).split(",")]
    if args.duration is None:
        args.duration = 2.0 if args.quick else 5.0
    if args.drain_rows is None:
        args.drain_rows = 5000 if args.quick else 50000
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())

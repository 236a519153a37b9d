"""The PostgreSQL outbox, end to end: a real PostgreSQL, real relay processes, real WebSocket clients.

The backend's side is an asyncpg connection inserting rows in its own transactions; what
subscribers saw is read from their sockets, or from a channel's history (the stream every
subscriber of that channel gets, on any node).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time

import asyncpg
import orjson
import pytest

from relay.auth import make_connect_token
from relay.integrations.outbox import schema_sql
from relay.testing import merge
from tests.rawclients import ws_connected
from tests.relayproc import ROOT, SECRET, RelayProcess

pytestmark = pytest.mark.timeout(90)


def outbox_config(pg, table: str, **extra) -> dict:
    """relay config consuming ``table``; the ``news`` namespace (anonymous subscribe) keeps a long history."""
    return merge({"outbox_dsn": pg.dsn, "outbox_table": table, "outbox_partitions": 4, "outbox_poll_interval": 0.2,
                  "namespaces": {"news": {"history_size": 1000, "history_ttl": 300.0}}}, extra)


async def insert(conn, table: str, rows: list[tuple]) -> None:
    """Insert ``(method, payload, partition[, idempotency_key])`` rows with ONE statement."""
    rows = [r if len(r) == 4 else (*r, None) for r in rows]
    await conn.execute(
        f"INSERT INTO {table} (method, payload, partition, idempotency_key) "
        "SELECT * FROM unnest($1::text[], $2::jsonb[], $3::int[], $4::text[])",
        [r[0] for r in rows], [orjson.dumps(r[1]).decode() for r in rows], [r[2] for r in rows], [r[3] for r in rows])


def publish(channel: str, data, partition: int = 0, key: str | None = None) -> tuple:
    return ("publish", {"channel": channel, "data": data}, partition, key)


async def pending(conn, table: str) -> int:
    return await conn.fetchval(f"SELECT count(*) FROM {table} WHERE failed_at IS NULL")


async def drained(conn, table: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while (n := await pending(conn, table)) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert n == 0, f"{n} rows still pending in {table}"


async def subscriber(relay, *channels: str, user: str = ""):
    ws = await ws_connected(relay.ws_port, make_connect_token(user or f"u-{secrets.token_hex(3)}", SECRET, ttl=60))
    for ch in channels:
        reply = await ws.call("subscribe", {"channel": ch})
        assert "subscribe" in reply, reply
    return ws


async def no_pub(ws, within: float) -> None:
    with pytest.raises(TimeoutError):
        got = await ws.pub(timeout=within)
        raise AssertionError(f"unexpected publication {got}")


def history(relay, channel: str) -> list:
    res = relay.api("history", {"channel": channel, "limit": 5000})["result"]
    return [p["data"] for p in res["publications"]]


async def wait_metric(relay, name: str, want, timeout: float = 15.0, labels: dict | None = None) -> float:
    deadline = time.monotonic() + timeout
    while True:
        value = relay.metrics()[name, labels or {}]
        if value == want or time.monotonic() > deadline:
            assert value == want, f"{name}{labels or ''} = {value}, expected {want}"
            return value
        await asyncio.sleep(0.2)


# --- one relay, memory broker: a poll every 2 s, so anything faster came from NOTIFY -------------------

@pytest.fixture(scope="module")
def mem_relay(postgres):
    from relay.integrations.outbox import init_table

    table = f"ob_mem_{secrets.token_hex(4)}"
    asyncio.run(init_table(postgres.dsn, table))
    r = RelayProcess(outbox_config(postgres, table, outbox_poll_interval=2.0)).start()
    r.table = table
    yield r
    r.cleanup()


async def test_a_commit_reaches_the_subscriber_at_once(mem_relay, db):
    ws = await subscriber(mem_relay, "news:commit")
    async with db.transaction():
        await insert(db, mem_relay.table, [publish("news:commit", {"order": 42, "status": "shipped"}, 1)])
    t0 = time.monotonic()
    push = await ws.pub(timeout=5)
    assert push["channel"] == "news:commit" and push["pub"]["data"] == {"order": 42, "status": "shipped"}
    assert time.monotonic() - t0 < 1.5, "woken by NOTIFY, not by the 2 s poll"
    await drained(db, mem_relay.table)
    ws.close()


async def test_a_rollback_reaches_nobody(mem_relay, db):
    ws = await subscriber(mem_relay, "news:rollback")
    with pytest.raises(RuntimeError):
        async with db.transaction():
            await insert(db, mem_relay.table, [publish("news:rollback", {"n": "rolled back"}, 2)])
            raise RuntimeError("the business change failed")
    # a later row of the same partition: the rolled-back one would have come first
    await insert(db, mem_relay.table, [publish("news:rollback", {"n": "marker"}, 2)])
    assert (await ws.pub(timeout=5))["pub"]["data"] == {"n": "marker"}
    await no_pub(ws, 0.5)
    assert history(mem_relay, "news:rollback") == [{"n": "marker"}]
    ws.close()


async def test_polling_finds_rows_without_notify(mem_relay, db):
    ws = await subscriber(mem_relay, "news:poll")
    await db.execute("SET session_replication_role = replica")  # this session's inserts fire no trigger
    try:
        await insert(db, mem_relay.table, [publish("news:poll", "polled", 3)])
    finally:
        await db.execute("SET session_replication_role = DEFAULT")
    assert (await ws.pub(timeout=6))["pub"]["data"] == "polled"
    ws.close()


async def test_bad_rows_are_marked_failed_and_do_not_block_their_partition(mem_relay, db):
    ws = await subscriber(mem_relay, "news:bad")
    async with db.transaction():
        await insert(db, mem_relay.table, [
            ("no_such_method", {"channel": "news:bad"}, 0),
            ("publish", {"data": "no channel"}, 0),
            ("publish", {"channel": "nowhere:x", "data": 1}, 0),
            ("publish", ["not", "an", "object"], 0),
            publish("news:bad", "after the bad ones", 0),
        ])
    assert (await ws.pub(timeout=5))["pub"]["data"] == "after the bad ones"
    await drained(db, mem_relay.table)
    failed = await db.fetch(f"SELECT method, error, attempts FROM {mem_relay.table} "
                            "WHERE failed_at IS NOT NULL ORDER BY id")
    assert [r["method"] for r in failed] == ["no_such_method", "publish", "publish", "publish"]
    assert "unknown method" in failed[0]["error"] and failed[1]["error"].startswith("107")
    assert failed[2]["error"].startswith("102") and "JSON object" in failed[3]["error"]
    assert all(r["attempts"] == 1 for r in failed)
    await wait_metric(mem_relay, "relay_outbox_rows_total", 4, labels={"result": "failed"})
    await no_pub(ws, 0.3)
    ws.close()


async def test_an_idempotency_key_delivers_once(mem_relay, db):
    ws = await subscriber(mem_relay, "news:idem")
    key = f"order-7-paid-{secrets.token_hex(3)}"
    await insert(db, mem_relay.table, [publish("news:idem", "first", 1, key), publish("news:idem", "again", 1, key)])
    await insert(db, mem_relay.table, [publish("news:idem", "next", 1)])
    assert [(await ws.pub(timeout=5))["pub"]["data"] for _ in range(2)] == ["first", "next"]
    assert history(mem_relay, "news:idem") == ["first", "next"]
    ws.close()


async def test_other_server_api_methods(mem_relay, db):
    ws = await subscriber(mem_relay, "news:methods", user="ob-user")
    await insert(db, mem_relay.table, [("unsubscribe", {"channel": "news:methods", "user": "ob-user"}, 2)])
    push = await ws.push(timeout=5)
    assert push["channel"] == "news:methods" and push["unsubscribe"]["code"] == 2000
    await insert(db, mem_relay.table, [("disconnect", {"user": "ob-user"}, 2)])
    code, _ = await ws.expect_close(timeout=5)
    assert code == 3503
    await drained(db, mem_relay.table)


async def test_metrics_of_a_single_node(mem_relay, db):
    m = mem_relay.metrics()
    assert m["relay_outbox_partitions_owned"] == 4
    assert m["relay_outbox_rows_total", {"result": "ok"}] >= 5
    assert m["relay_outbox_lag_seconds"] >= 0 and m["relay_outbox_reconnects_total"] == 0


# --- crashes and restarts --------------------------------------------------------------------------------

async def test_relay_killed_mid_batch_every_row_delivered_exactly_once(postgres, redis_server, make_table, db):
    import redis

    table = await make_table("ob_kill")
    prefix = f"ob{secrets.token_hex(3)}"
    cfg = outbox_config(postgres, table, broker="redis", redis_urls=[redis_server.url], redis_prefix=prefix,
                        outbox_batch_size=2000)
    channels = [f"news:kill-{p}" for p in range(4)]
    first = RelayProcess(cfg).start()
    try:
        ws = await subscriber(first, *channels)
        async with db.transaction():  # one transaction, claimed as one batch
            await insert(db, table, [publish(channels[i % 4], {"p": i % 4, "seq": i // 4}, i % 4)
                                     for i in range(2000)])
        await ws.pub(timeout=10)
        first.proc.kill()  # SIGKILL after the first push: no drain, no commit; PostgreSQL ends its session
        first.proc.wait()
        ws.close()
    finally:
        first.cleanup()
    left = await pending(db, table)
    r = redis.Redis.from_url(redis_server.url)
    published = sum(r.llen(f"{prefix}:hist:{{{ch}}}") for ch in channels)
    r.close()
    assert left == 2000 and published > 0, (f"not killed mid-batch ({published} published, {2000 - left} "
                                            "committed): the machine is too slow for this test's timing")
    second = RelayProcess(cfg).start()
    try:
        await drained(db, table)
        # the second relay ran the whole batch again; the rows the first had published were answered
        # from the broker's idempotency window: each publication is in the stream exactly once, in order
        for p, ch in enumerate(channels):
            assert history(second, ch) == [{"p": p, "seq": s} for s in range(500)], ch
        assert await db.fetchval(f"SELECT count(*) FROM {table}") == 0
        assert second.metrics()["relay_outbox_rows_total", {"result": "ok"}] == 2000
    finally:
        second.cleanup()


async def test_a_missing_table_is_waited_for_and_relay_serves_meanwhile(postgres, db):
    from relay.integrations.outbox import init_table

    table = f"ob_late_{secrets.token_hex(4)}"
    relay = RelayProcess(outbox_config(postgres, table)).start()  # ready although the table does not exist
    try:
        ws = await subscriber(relay, "news:late")
        await asyncio.sleep(0.3)
        assert relay.ready() and relay.metrics()["relay_outbox_errors_total"] >= 1
        await init_table(postgres.dsn, table)
        await insert(db, table, [publish("news:late", "finally", 0)])
        assert (await ws.pub(timeout=10))["pub"]["data"] == "finally"
        assert "relay outbox init" in relay.log()
        ws.close()
        await asyncio.sleep(0.05)
    finally:
        relay.cleanup()


async def test_postgres_restart_the_consumer_resumes_by_itself(private_postgres, make_table):
    table = await make_table("ob_restart")
    relay = RelayProcess(outbox_config(private_postgres, table)).start()
    try:
        ws = await subscriber(relay, "news:restart")
        conn = await asyncpg.connect(private_postgres.dsn)
        await insert(conn, table, [publish("news:restart", "before", 0)])
        assert (await ws.pub(timeout=5))["pub"]["data"] == "before"
        await conn.close()
        private_postgres.restart()  # fast shutdown (every session ended), then the same cluster again
        conn = await asyncpg.connect(private_postgres.dsn)
        try:
            await insert(conn, table, [publish("news:restart", "after", 0)])
            assert (await ws.pub(timeout=15))["pub"]["data"] == "after"
        finally:
            await conn.close()
        assert relay.alive()
        m = relay.metrics()
        assert m["relay_outbox_reconnects_total"] >= 1 and m["relay_outbox_partitions_owned"] == 4
        ws.close()
        await asyncio.sleep(0.05)  # let the close reach the server before the relay drains
    finally:
        relay.cleanup()


async def test_broker_down_rows_wait_and_keep_their_order(postgres, redis_factory, make_table, db):
    redis_server = redis_factory()
    table = await make_table("ob_broker")
    relay = RelayProcess(outbox_config(postgres, table, broker="redis", redis_urls=[redis_server.url])).start()
    try:
        redis_server.stop()  # publishes now fail with the temporary error 100
        await insert(db, table, [publish("news:down", i, 0) for i in range(10)]
                     + [publish("news:down-other", i, 1) for i in range(5)])
        deadline = time.monotonic() + 10
        while not await db.fetchval(f"SELECT min(attempts) FROM {table} WHERE id IN "
                                    f"(SELECT min(id) FROM {table} GROUP BY partition)") \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        rows = await db.fetch(f"SELECT partition, attempts, error, failed_at FROM {table} ORDER BY id")
        assert len(rows) == 15 and all(r["failed_at"] is None for r in rows)
        heads = [rows[0], rows[10]]  # the first row of each partition is retried; the rest wait behind it
        assert all(r["attempts"] >= 1 and r["error"].startswith("100") for r in heads), heads
        assert all(r["attempts"] == 0 for r in rows[1:10] + rows[11:])
        redis_server.start()  # empty (no persistence): the channels' streams start again
        await drained(db, table)
        assert history(relay, "news:down") == list(range(10))
        assert history(relay, "news:down-other") == list(range(5))
        assert relay.metrics()["relay_outbox_errors_total"] >= 2
    finally:
        relay.cleanup()


# --- two nodes on one table ----------------------------------------------------------------------------

async def test_two_nodes_split_partitions_without_duplicates_in_order(postgres, redis_server, make_table, db):
    table = await make_table("ob_two")
    cfg = outbox_config(postgres, table, broker="redis", redis_urls=[redis_server.url],
                        redis_prefix=f"ob{secrets.token_hex(3)}", outbox_partitions=8, outbox_batch_size=10)
    channels = [f"news:two-{p}" for p in range(8)]
    sessions_sql = f"SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'relay outbox {table} %'"
    a = RelayProcess(cfg).start()
    b = RelayProcess(cfg).start()
    try:
        await wait_metric(a, "relay_outbox_partitions_owned", 4)
        await wait_metric(b, "relay_outbox_partitions_owned", 4)
        assert await db.fetchval(sessions_sql) == 2
        ws_a = await subscriber(a, *channels)
        ws_b = await subscriber(b, *channels)
        seq = [0] * 8
        for tx in range(20):  # 20 transactions of 20 rows, the partitions interleaved
            rows = []
            for i in range(20):
                p = (tx * 7 + i * 3) % 8
                rows.append(publish(channels[p], {"p": p, "seq": seq[p]}, p))
                seq[p] += 1
            async with db.transaction():
                await insert(db, table, rows)
        await drained(db, table)
        for p, ch in enumerate(channels):
            assert history(a, ch) == [{"p": p, "seq": s} for s in range(seq[p])], ch
        ok_a = a.metrics()["relay_outbox_rows_total", {"result": "ok"}]
        ok_b = b.metrics()["relay_outbox_rows_total", {"result": "ok"}]
        assert ok_a > 0 and ok_b > 0 and ok_a + ok_b == 400  # both worked, no row ran twice
        # both nodes' subscribers saw every publication once, in order per channel
        for ws in (ws_a, ws_b):
            got: dict[int, list[int]] = {p: [] for p in range(8)}
            for _ in range(400):
                data = (await ws.pub(timeout=10))["pub"]["data"]
                got[data["p"]].append(data["seq"])
            assert got == {p: list(range(seq[p])) for p in range(8)}
            ws.close()

        # a node that dies leaves its partitions to the other
        a.proc.kill()
        a.proc.wait()
        await wait_metric(b, "relay_outbox_partitions_owned", 8)
        rows = [publish(channels[p], {"p": p, "seq": seq[p]}, p) for p in range(8)]
        await insert(db, table, rows)
        await drained(db, table)
        for p, ch in enumerate(channels):
            assert history(b, ch)[-1] == {"p": p, "seq": seq[p]}
        # stopping is prompt and ends the session (its locks with it)
        t0 = time.monotonic()
        b.stop()
        assert time.monotonic() - t0 < 5
        deadline = time.monotonic() + 3
        while await db.fetchval(sessions_sql) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await db.fetchval(sessions_sql) == 0
    finally:
        a.cleanup()
        b.cleanup()


# --- the table's SQL and the CLI ----------------------------------------------------------------------

def test_deploy_sql_is_the_code_s_sql():
    assert (ROOT / "deploy" / "outbox.sql").read_text() == schema_sql("relay_outbox"), \
        ("regenerate: python -c 'from relay.integrations.outbox import schema_sql; "
         "print(schema_sql(), end=\"\")' > deploy/outbox.sql")


def _relay_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHONPATH=str(ROOT))
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "relay", *args], capture_output=True, text=True, env=e,
                          cwd=str(ROOT), timeout=30)


async def test_cli_outbox_init(postgres, db, tmp_path):
    table = f"ob_cli_{secrets.token_hex(4)}"
    conf = tmp_path / "relay.toml"
    conf.write_text(f'outbox_table = "{table}"\n')
    for _ in range(2):  # running it again is harmless
        r = await asyncio.to_thread(_relay_cli, "outbox", "init", "-c", str(conf), "--dsn", postgres.dsn)
        assert r.returncode == 0, r.stderr
        assert table in r.stdout
    cols = await db.fetch("SELECT column_name FROM information_schema.columns WHERE table_name = $1", table)
    assert {"id", "method", "payload", "partition", "idempotency_key", "created_at", "failed_at", "error"} <= \
        {c["column_name"] for c in cols}
    assert await db.fetchval("SELECT count(*) FROM pg_trigger WHERE tgname = $1", f"{table}_notify") == 1
    r = await asyncio.to_thread(_relay_cli, "outbox", "init", env={"RELAY_OUTBOX_DSN": ""})
    assert r.returncode == 2 and "--dsn" in r.stderr

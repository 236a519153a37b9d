"""The PostgreSQL outbox consumer: server API commands a backend wrote in its own transaction.

A backend inserts a row (``method``, ``payload``, ``partition``, ``idempotency_key``)
into the outbox table in the same transaction as its business change; the row
becomes visible when that transaction commits, and an INSERT trigger NOTIFYs the
consumers. Each relay node keeps one connection to PostgreSQL and on it:

* ``LISTEN``\\ s on the table's channel: a notification starts a poll at once; without
  one it polls every ``outbox_poll_interval`` anyway;
* owns some of the ``outbox_partitions`` partitions through session-level advisory
  locks (``pg_try_advisory_lock(<table key>, partition)``). Every node also holds a
  shared "member" lock, so ``pg_locks`` says how many nodes are alive; each node aims
  for ``ceil(partitions / nodes)`` and gives up the excess (between batches, after a
  commit), so a partition is consumed by one node at a time, in order. A node that
  dies loses its session and, with it, its locks: the others take its partitions;
* claims a batch (``SELECT ... FOR UPDATE SKIP LOCKED``, oldest first) from the
  partitions it owns, executes the rows through the server API's method table
  (partitions concurrently, the rows of one partition one after the other), then
  deletes the rows done and marks the failed ones in the same transaction.

At-least-once from the table: a node killed after a publish and before its commit
leaves the row for the next owner. ``publish`` and ``broadcast`` carry the row's
idempotency key (``outbox:<table>:<id>`` when it has none), which the broker
remembers for ``idempotency_window``, so the second execution reaches no subscriber.

A row that can never succeed (unknown method, a payload the API refuses) is marked
``failed_at``/``error`` and skipped; a transient failure (broker unreachable: error
100, or an exception) keeps the row and retries its partition with backoff, never
skipping ahead of it. A lost connection (PostgreSQL restarted) is retried with
jittered backoff; the new session listens and takes locks again. docs/outbox.md
has the whole story.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from relay.codes import ClientError

if TYPE_CHECKING:  # pragma: no cover
    from relay.config import Config
    from relay.node.registry import Node

__all__ = ["OutboxConsumer", "init_table", "schema_sql", "notify_channel", "DEFAULT_TABLE"]

log = logging.getLogger("relay.outbox")

DEFAULT_TABLE = "relay_outbox"

#: the table, its index and the NOTIFY trigger; ``{table}`` (as configured, maybe ``schema.name``),
#: ``{base}`` (the name without schema), ``{func}`` and ``{channel}`` are filled in by ``schema_sql``.
#: deploy/outbox.sql is this text for the default table (tests/integrations/outbox checks that they agree).
SCHEMA_TEMPLATE = """\
-- The relay outbox: server API commands a backend inserts in the same transaction as its
-- business change; relay executes them after the commit (docs/outbox.md).
--
-- This is what `relay outbox init` runs for the table {table} (relay.integrations.outbox.schema_sql).
-- Running it again is harmless.
--
-- A backend writes, inside its own transaction:
--   INSERT INTO {table} (method, payload, partition, idempotency_key)
--   VALUES ('publish', '{"channel": "news:order-42", "data": {"status": "shipped"}}', 42 % 16,
--           'order-42-shipped');
-- The partition (0 .. outbox_partitions-1) orders rows: those of one partition are executed
-- in commit order, one after the other. Rows relay gave up on keep failed_at and error.

BEGIN;

CREATE TABLE IF NOT EXISTS {table} (
    id              bigserial   PRIMARY KEY,
    method          text        NOT NULL,               -- publish, broadcast, unsubscribe, disconnect, ...
    payload         jsonb       NOT NULL DEFAULT '{}',  -- the method's parameters, as /api/<method> takes them
    partition       integer     NOT NULL DEFAULT 0 CHECK (partition >= 0),
    idempotency_key text,                               -- publish, broadcast: executed twice, delivered once
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer     NOT NULL DEFAULT 0,     -- executions that failed
    failed_at       timestamptz,                        -- relay gave up on the row (see error) and skips it
    error           text                                -- the last failure
);

-- the rows still to execute, by partition
CREATE INDEX IF NOT EXISTS {base}_pending ON {table} (partition, id) WHERE failed_at IS NULL;

-- a committed INSERT wakes the consumers at once (they LISTEN on '{channel}'); they poll anyway
CREATE OR REPLACE FUNCTION {func}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{channel}', '');
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS {base}_notify ON {table};
CREATE TRIGGER {base}_notify AFTER INSERT ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {func}();

COMMIT;
"""

#: a publish to a channel already taken through the idempotency window is answered, not repeated
IDEMPOTENT_METHODS = frozenset({"publish", "broadcast"})


def notify_channel(table: str) -> str:
    """The LISTEN/NOTIFY channel of ``table``: its name, lower case, ``.`` replaced by ``_``."""
    return table.lower().replace(".", "_")[:63]


def schema_sql(table: str = DEFAULT_TABLE) -> str:
    """The SQL that creates (or updates) the outbox ``table``: deploy/outbox.sql for the default."""
    schema, _, base = table.rpartition(".")
    names = {"table": table, "base": base, "func": f"{schema + '.' if schema else ''}{base}_notify",
             "channel": notify_channel(table)}
    sql = SCHEMA_TEMPLATE
    for key, value in names.items():
        sql = sql.replace("{" + key + "}", value)
    return sql


async def init_table(dsn: str, table: str = DEFAULT_TABLE) -> None:
    """Create the outbox table, its index and its NOTIFY trigger (``relay outbox init``)."""
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(schema_sql(table))
    finally:
        await conn.close()


def _key(text: str) -> int:
    """A stable 31-bit advisory lock key (the same on every node and every Python)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big") & 0x7FFFFFFF


OK, FAILED, RETRY = "ok", "failed", "retry"


@dataclass(slots=True)
class _Outcome:
    """What became of one partition's rows in a batch."""

    partition: int
    done: list[int] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)   # (id, error): given up on
    retry: tuple[int, str] | None = None                          # (id, error): it and the rest run again


class OutboxConsumer:
    """Consumes the outbox table of ``cfg.outbox_dsn`` into ``node``; see the module docstring.

    Counters (plain ints, exported by relay.ops.metrics): ``rows_done``, ``rows_failed`` (given up on),
    ``batches`` (committed), ``errors`` (database errors and transient execution failures, each
    followed by a retry), ``reconnects``; and ``lag_seconds`` (the age of the oldest row claimed by
    the last poll, 0 when it found none) and ``partitions_owned``.
    """

    rebalance_interval = 1.0   #: seconds between partition ownership checks
    stop_grace = 2.0           #: seconds stop() lets a batch in flight finish before abandoning it
    retry_base = 0.1           #: first backoff after a failure (doubles, jittered) ...
    retry_max = 5.0            #: ... up to this
    command_timeout = 30.0     #: seconds any query may take before the session counts as lost

    def __init__(self, node: Node, cfg: Config) -> None:
        self.node = node
        self.dsn = cfg.outbox_dsn
        self.table = cfg.outbox_table
        self.partitions = cfg.outbox_partitions
        self.batch_size = cfg.outbox_batch_size
        self.poll_interval = cfg.outbox_poll_interval
        self.channel = notify_channel(self.table)
        self.lock_key = _key(f"relay-outbox:{self.table}")
        self.member_key = _key(f"relay-outbox-members:{self.table}")
        t = self.table
        self._claim_sql = (f"SELECT id, method, payload::text AS payload, partition, idempotency_key, "
                           f"extract(epoch FROM clock_timestamp() - created_at)::float8 AS age FROM {t} "
                           f"WHERE partition = ANY($1::int[]) AND failed_at IS NULL "
                           f"ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED")
        self._delete_sql = f"DELETE FROM {t} WHERE id = ANY($1::bigint[])"
        self._fail_sql = (f"UPDATE {t} SET attempts = attempts + 1, error = e.error, failed_at = now() "
                          f"FROM unnest($1::bigint[], $2::text[]) AS e(id, error) WHERE {t}.id = e.id")
        self._retry_sql = (f"UPDATE {t} SET attempts = attempts + 1, error = e.error "
                           f"FROM unnest($1::bigint[], $2::text[]) AS e(id, error) WHERE {t}.id = e.id")
        self._stray_sql = f"SELECT count(*) FROM {t} WHERE partition >= $1 AND failed_at IS NULL"
        self.rows_done = 0
        self.rows_failed = 0
        self.batches = 0
        self.errors = 0
        self.reconnects = 0
        self.lag_seconds = 0.0
        self.owned: set[int] = set()
        self._conn: Any = None
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._polled = False  # a poll succeeded in the current session
        self._sessions = 0
        self._failures: dict[int, int] = {}     # partition -> consecutive transient failures
        self._retry_at: dict[int, float] = {}   # partition -> monotonic time it may run again
        self._next_stray_check = 0.0

    @property
    def partitions_owned(self) -> int:
        return len(self.owned)

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start consuming in the background (a database that is down is retried, never fatal)."""
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name="relay-outbox")

    async def stop(self) -> None:
        """Stop claiming; a batch in flight gets ``stop_grace`` seconds to commit, else it is abandoned
        uncommitted (its rows run again elsewhere, deduplicated). Closing the session releases the
        partition locks."""
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=self.stop_grace)
            if not done:
                task.cancel()
                await asyncio.wait({task}, timeout=self.stop_grace)
        await self._close()

    # --- the session loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0  # consecutive sessions that ended before a poll succeeded
        while not self._stopping:
            self._polled = False
            try:
                await self._connect()
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if self._stopping:
                    break
                self.errors += 1
                failures = 1 if self._polled else failures + 1
                self._log_session_error(e)
            finally:
                await self._close()
            if not self._stopping:
                self._wake.clear()  # set by the lost session's termination listener
                await self._sleep(self._backoff(failures))

    def _log_session_error(self, e: Exception) -> None:
        import asyncpg

        ids = {"event": "outbox_error", "table": self.table}
        if isinstance(e, asyncpg.UndefinedTableError):
            log.error("outbox table %s does not exist: create it with `relay outbox init`", self.table, extra=ids)
        elif isinstance(e, (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)):
            log.warning("outbox session ended (%s: %s); reconnecting", type(e).__name__, e, extra=ids)
        else:
            log.exception("outbox consumer failed; reconnecting", extra=ids)

    def _backoff(self, failures: int) -> float:
        return min(self.retry_max, self.retry_base * 2 ** max(0, failures - 1)) * random.uniform(0.5, 1.5)

    async def _sleep(self, seconds: float) -> None:
        """Sleep until ``seconds`` pass, a NOTIFY arrives, the session ends or stop() is called."""
        if self._stopping or seconds <= 0:
            return
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass

    async def _connect(self) -> None:
        import asyncpg

        name = f"relay outbox {self.table} {self.node.name}"[:63]  # pg_stat_activity: who consumes what
        conn = await asyncpg.connect(self.dsn, timeout=10, command_timeout=self.command_timeout,
                                     server_settings={"application_name": name})
        self._conn = conn
        conn.add_termination_listener(lambda _c: self._wake.set())
        await conn.add_listener(self.channel, self._on_notify)
        # every node holds this shared lock while connected: pg_locks counts the live nodes
        await conn.fetchval("SELECT pg_try_advisory_lock_shared($1, 0)", self.member_key)
        self._sessions += 1
        if self._sessions > 1:
            self.reconnects += 1
        log.info("outbox consumer connected (table %s, channel %s)", self.table, self.channel,
                 extra={"event": "outbox_connected", "table": self.table})

    def _on_notify(self, *_: Any) -> None:
        self._wake.set()

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        self.owned.clear()
        self._failures.clear()
        self._retry_at.clear()
        self.lag_seconds = 0.0
        if conn is None or conn.is_closed():
            return
        try:
            await asyncio.wait_for(conn.close(), 2.0)  # the session's end releases its advisory locks
        except BaseException:
            conn.terminate()
            raise

    async def _consume(self) -> None:
        conn = self._conn
        next_rebalance = 0.0
        while not self._stopping:
            now = time.monotonic()
            if now >= next_rebalance:
                await self._rebalance(conn)
                next_rebalance = now + self.rebalance_interval
            self._wake.clear()
            claimed = await self._batch(conn)
            self._polled = True
            if claimed >= self.batch_size:
                continue  # a backlog: claim the next batch at once
            if conn.is_closed():
                raise ConnectionError("connection closed")
            now = time.monotonic()
            until = min(now + self.poll_interval, next_rebalance,
                        *(t for p, t in self._retry_at.items() if p in self.owned))
            await self._sleep(until - now)

    # --- partition ownership ----------------------------------------------------------------------

    async def _rebalance(self, conn: Any) -> None:
        """Aim for ceil(partitions / live nodes): take free partitions, or give up the excess."""
        rows = await conn.fetch(
            "SELECT classid::int8 AS k, objid::int8 AS p, count(*) AS n FROM pg_locks "
            "WHERE locktype = 'advisory' AND granted AND objsubid = 2 "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND classid IN ($1::int8::oid, $2::int8::oid) GROUP BY 1, 2", self.lock_key, self.member_key)
        nodes = max(1, sum(r["n"] for r in rows if r["k"] == self.member_key))
        held = {r["p"] for r in rows if r["k"] == self.lock_key}
        target = math.ceil(self.partitions / nodes)
        before = set(self.owned)
        if len(self.owned) > target:
            give = sorted(self.owned)[target:]
            await conn.execute("SELECT pg_advisory_unlock($1, p) FROM unnest($2::int[]) AS p", self.lock_key, give)
            self.owned.difference_update(give)
            for p in give:
                self._failures.pop(p, None)
                self._retry_at.pop(p, None)
        elif len(self.owned) < target:
            free = [p for p in range(self.partitions) if p not in held]
            random.shuffle(free)  # nodes starting together rarely race for the same ones
            want = free[:target - len(self.owned)]
            if want:
                got = await conn.fetch("SELECT p, pg_try_advisory_lock($1, p) AS ok FROM unnest($2::int[]) AS p",
                                       self.lock_key, want)
                self.owned.update(r["p"] for r in got if r["ok"])
        if self.owned != before:
            log.info("outbox partitions: %d owned of %d (%d nodes)", len(self.owned), self.partitions, nodes,
                     extra={"event": "outbox_partitions", "owned": sorted(self.owned), "nodes": nodes})
        now = time.monotonic()
        if now >= self._next_stray_check:
            self._next_stray_check = now + 60.0
            stray = await conn.fetchval(self._stray_sql, self.partitions)
            if stray:
                log.warning("outbox table %s has %d rows in partitions >= outbox_partitions (%d): no node "
                            "consumes them", self.table, stray, self.partitions,
                            extra={"event": "outbox_stray_rows", "rows": stray})

    # --- batches ----------------------------------------------------------------------------------

    async def _batch(self, conn: Any) -> int:
        """Claim, execute and settle one batch; the number of rows claimed."""
        now = time.monotonic()
        runnable = sorted(p for p in self.owned if self._retry_at.get(p, 0.0) <= now)
        if not runnable:
            if not self.owned:
                self.lag_seconds = 0.0
            return 0
        async with conn.transaction():
            rows = await conn.fetch(self._claim_sql, runnable, self.batch_size)
            if not rows:
                self.lag_seconds = 0.0
                return 0
            self.lag_seconds = max(0.0, rows[0]["age"])
            by_partition: dict[int, list] = defaultdict(list)
            for r in rows:
                by_partition[r["partition"]].append(r)
            outcomes = await asyncio.gather(*(self._run_partition(rs) for rs in by_partition.values()))
            done = [i for o in outcomes for i in o.done]
            failed = [f for o in outcomes for f in o.failed]
            retry = [o.retry for o in outcomes if o.retry is not None]
            if done:
                await conn.execute(self._delete_sql, done)
            if failed:
                await conn.execute(self._fail_sql, [i for i, _ in failed], [e for _, e in failed])
            if retry:
                await conn.execute(self._retry_sql, [i for i, _ in retry], [e for _, e in retry])
        self.batches += 1
        self.rows_done += len(done)
        self.rows_failed += len(failed)
        self.errors += len(retry)
        for o in outcomes:
            if o.retry is None:
                self._failures.pop(o.partition, None)
                self._retry_at.pop(o.partition, None)
            else:
                n = self._failures[o.partition] = self._failures.get(o.partition, 0) + 1
                self._retry_at[o.partition] = time.monotonic() + self._backoff(n)
        return len(rows)

    async def _run_partition(self, rows: list) -> _Outcome:
        """Execute one partition's rows in order; stop at the first transient failure (that row and
        the ones after it stay for the retry)."""
        out = _Outcome(rows[0]["partition"])
        for r in rows:
            result, error = await self._execute(r)
            if result == OK:
                out.done.append(r["id"])
                continue
            ids = {"row": r["id"], "method": r["method"], "partition": out.partition, "table": self.table}
            if result == FAILED:
                out.failed.append((r["id"], error))
                log.warning("outbox row %d (%s) failed for good: %s", r["id"], r["method"], error,
                            extra={"event": "outbox_row_failed", **ids})
            else:
                out.retry = (r["id"], error)
                log.warning("outbox row %d (%s) will be retried: %s", r["id"], r["method"], error,
                            extra={"event": "outbox_row_retry", **ids})
                break
        return out

    async def _execute(self, row: Any) -> tuple[str, str]:
        """Run one row as a server API command: (OK | FAILED | RETRY, error text)."""
        from relay.api.http import API_METHODS

        method = row["method"]
        handler = API_METHODS.get(method)
        if handler is None:
            return FAILED, f"unknown method {method!r}"
        payload = orjson.loads(row["payload"])
        if not isinstance(payload, dict):
            return FAILED, "payload must be a JSON object"
        if method in IDEMPOTENT_METHODS:
            payload["idempotency_key"] = (row["idempotency_key"] or payload.get("idempotency_key")
                                          or f"outbox:{self.table}:{row['id']}")
        try:
            result = await handler(self.node, payload)
        except ClientError as e:
            return (RETRY if e.temporary else FAILED), f"{e.code}: {e.message}"
        except Exception as e:
            return RETRY, f"{type(e).__name__}: {e}"
        if method == "broadcast":
            errors = [r["error"] for r in result.get("responses", ()) if "error" in r]
            if any(e.get("temporary") for e in errors):
                return RETRY, "; ".join(f"{e['code']}: {e['message']}" for e in errors)
            if errors and len(errors) == len(result["responses"]):
                return FAILED, "; ".join(f"{e['code']}: {e['message']}" for e in errors)
        return OK, ""

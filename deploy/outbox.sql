-- The relay outbox: server API commands a backend inserts in the same transaction as its
-- business change; relay executes them after the commit (docs/outbox.md).
--
-- This is what `relay outbox init` runs for the table relay_outbox (relay.integrations.outbox.schema_sql).
-- Running it again is harmless.
--
-- A backend writes, inside its own transaction:
--   INSERT INTO relay_outbox (method, payload, partition, idempotency_key)
--   VALUES ('publish', '{"channel": "news:order-42", "data": {"status": "shipped"}}', 42 % 16,
--           'order-42-shipped');
-- The partition (0 .. outbox_partitions-1) orders rows: those of one partition are executed
-- in commit order, one after the other. Rows relay gave up on keep failed_at and error.

BEGIN;

CREATE TABLE IF NOT EXISTS relay_outbox (
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
CREATE INDEX IF NOT EXISTS relay_outbox_pending ON relay_outbox (partition, id) WHERE failed_at IS NULL;

-- a committed INSERT wakes the consumers at once (they LISTEN on 'relay_outbox'); they poll anyway
CREATE OR REPLACE FUNCTION relay_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('relay_outbox', '');
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS relay_outbox_notify ON relay_outbox;
CREATE TRIGGER relay_outbox_notify AFTER INSERT ON relay_outbox FOR EACH STATEMENT EXECUTE FUNCTION relay_outbox_notify();

COMMIT;

-- The Northwind shop backend's tables (examples/shop_backend). Running it again is harmless.
-- relay's outbox table (relay_outbox) is relay's own: create it with `relay outbox init`
-- (deploy/outbox.sql) in the same database, so an order's status change and its push
-- commit together.

BEGIN;

CREATE TABLE IF NOT EXISTS customers (
    id          integer     GENERATED ALWAYS AS IDENTITY PRIMARY KEY,   -- relay user "c-<id>"
    name        text        NOT NULL,
    email       text        NOT NULL UNIQUE
);

CREATE TABLE IF NOT EXISTS agents (
    id          integer     GENERATED ALWAYS AS IDENTITY PRIMARY KEY,   -- relay user "a-<id>"
    name        text        NOT NULL
);

-- the shop_session cookie: one row per login, a customer's or an agent's
CREATE TABLE IF NOT EXISTS sessions (
    token       text        PRIMARY KEY,
    customer_id integer     REFERENCES customers ON DELETE CASCADE,
    agent_id    integer     REFERENCES agents ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL DEFAULT now() + interval '30 days',
    CHECK ((customer_id IS NULL) <> (agent_id IS NULL))
);

CREATE TABLE IF NOT EXISTS orders (
    id          integer     GENERATED ALWAYS AS IDENTITY PRIMARY KEY,   -- its chat: support:order-<id>
    customer_id integer     NOT NULL REFERENCES customers ON DELETE CASCADE,
    product     text        NOT NULL,
    size        text,
    status      text        NOT NULL DEFAULT 'paid',
    version     integer     NOT NULL DEFAULT 1,                         -- +1 per status change
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS orders_customer ON orders (customer_id);

CREATE TABLE IF NOT EXISTS stock (
    product     text        NOT NULL,
    size        text        NOT NULL,
    quantity    integer     NOT NULL CHECK (quantity >= 0),
    PRIMARY KEY (product, size)
);

-- one support chat per order; the bot's state machine (bot.py) between messages
CREATE TABLE IF NOT EXISTS support_chats (
    channel       text        PRIMARY KEY,                              -- support:order-<id>
    order_id      integer     NOT NULL REFERENCES orders ON DELETE CASCADE,
    unanswered    integer     NOT NULL DEFAULT 0,                       -- questions the bot could not answer
    handed_off_at timestamptz,                                          -- set: a person has the chat, the bot is quiet
    opened_at     timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE support_chats ADD COLUMN IF NOT EXISTS opened_at timestamptz NOT NULL DEFAULT now();  -- older databases

-- every chat message: the customer's, the agents' and the bot's (data: the publication as published)
CREATE TABLE IF NOT EXISTS chat_messages (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel     text        NOT NULL,
    user_id     text        NOT NULL,                                   -- c-<id>, a-<id> or bot
    data        jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS chat_messages_channel ON chat_messages (channel, id);

COMMIT;

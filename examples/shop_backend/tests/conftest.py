"""PostgreSQL for the shop backend's tests: a fresh database per test session, dropped at the end.

The server is the machine's (``SHOP_TEST_PG``, default ``postgresql://postgres@127.0.0.1:5432/postgres``,
trust authentication). When it does not answer and PostgreSQL's server binaries are installed, a
private throw-away server is started instead (``relay.testing.PostgresProcess``). Under ``CI=true``
no usable server fails the run; elsewhere the tests that need one are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import os
import secrets

import asyncpg
import pytest

from examples.shop_backend.app import create_session, init_db
# test_demo_browser.py's fixtures, as tests/browser has them: chromium (skip or, under CI, fail without it),
# one browser per module, pages in fresh contexts whose uncaught errors fail the test
from tests.browser.conftest import browser, chromium_path, new_page  # noqa: F401

ADMIN_DSN = os.environ.get("SHOP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def need(reason: str) -> None:
    """Skip (or, under CI, fail) a test whose infrastructure is missing."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (required under CI=true)")
    pytest.skip(reason)


def outbox_unavailable() -> str | None:
    """Why relay's outbox consumer cannot be used here (None: it can)."""
    try:
        import relay.integrations.outbox  # noqa: F401
    except ImportError as e:
        return f"relay.integrations.outbox cannot be imported ({e}): order-status pushes need relay's outbox consumer"
    return None


async def _admin(admin_dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(admin_dsn, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _private_server(why: str):
    """A throw-away PostgreSQL server when the machine's is not usable (``why``), else skip/fail."""
    from relay import testing

    process = getattr(testing, "PostgresProcess", None)
    cannot = "relay.testing has no PostgresProcess" if process is None else process.unavailable()
    if cannot:
        need(f"{why}; and no private server: {cannot}")
    return process().start()


@pytest.fixture(scope="session")
def shop_dsn():
    """The DSN of a fresh ``shop_test_<random>`` database with the shop's tables (schema.sql)."""
    name = f"shop_test_{secrets.token_hex(4)}"
    admin_dsn, private = ADMIN_DSN, None
    try:
        asyncio.run(_admin(admin_dsn, f'CREATE DATABASE "{name}"'))
    except (OSError, TimeoutError, asyncpg.PostgresError) as e:
        private = _private_server(f"PostgreSQL at {ADMIN_DSN} is not usable ({type(e).__name__}: {e})")
        admin_dsn = private.dsn
        asyncio.run(_admin(admin_dsn, f'CREATE DATABASE "{name}"'))
    dsn = f"{admin_dsn.rpartition('/')[0]}/{name}"
    try:
        asyncio.run(init_db(dsn))
        yield dsn
    finally:
        if private is not None:
            private.cleanup()
        else:
            asyncio.run(_admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def add_customer(conn: asyncpg.Connection, name: str, *orders: tuple[str, str | None, str]
                       ) -> tuple[int, str, list[int]]:
    """A customer with ``orders`` ((product, size, status), ...): (id, session cookie, order ids)."""
    cid = await conn.fetchval("INSERT INTO customers (name, email) VALUES ($1, $2) RETURNING id", name,
                              f"{name.lower()}-{secrets.token_hex(4)}@example.com")
    oids = [await conn.fetchval("INSERT INTO orders (customer_id, product, size, status) VALUES ($1, $2, $3, $4) "
                                "RETURNING id", cid, product, size, status) for product, size, status in orders]
    return cid, await create_session(conn, customer_id=cid), oids


async def add_agent(conn: asyncpg.Connection, name: str) -> tuple[int, str]:
    """An agent: (id, session cookie)."""
    aid = await conn.fetchval("INSERT INTO agents (name) VALUES ($1) RETURNING id", name)
    return aid, await create_session(conn, agent_id=aid)

"""PostgreSQL for the outbox tests.

A private throw-away server (``relay.testing.PostgresProcess``: initdb in a temporary
directory, a free port) is preferred: nothing global is touched, and the restart test
restarts it. Failing that, the machine's server at 127.0.0.1:5432 (trust auth, user
postgres). Either way the tests get a fresh database ``relay_test_<random>``, dropped at
the end, and every test its own outbox table. Under ``CI=true`` having neither fails the
run; elsewhere the tests skip and say why.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from dataclasses import dataclass

import pytest

from relay.integrations.outbox import init_table
from relay.testing import PostgresProcess

MACHINE_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass
class Postgres:
    """Where the tests' database is: ``dsn`` (the fresh database), ``proc`` (None: the machine's server)."""

    dsn: str
    admin_dsn: str
    database: str
    proc: PostgresProcess | None

    def restart(self) -> None:
        """Fast shutdown and start of the private server (same port, same data)."""
        assert self.proc is not None
        self.proc.stop()
        self.proc.start()


async def _admin(dsn: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _with_database(dsn: str, database: str) -> str:
    return dsn.rsplit("/", 1)[0] + "/" + database


@pytest.fixture(scope="session")
def postgres():
    reasons: list[str] = []
    proc = None
    why = PostgresProcess.unavailable()
    if why is None:
        try:
            proc = PostgresProcess().start()
        except Exception as e:  # e.g. no shared memory in a container: try the machine's server
            reasons.append(f"private PostgreSQL failed to start: {e}")
            proc = None
    else:
        reasons.append(f"no private PostgreSQL: {why}")
    admin = proc.dsn if proc is not None else MACHINE_SERVER
    database = f"relay_test_{secrets.token_hex(4)}"
    try:
        asyncio.run(_admin(admin, f"CREATE DATABASE {database}"))
    except Exception as e:
        if proc is not None:
            proc.cleanup()
        reasons.append(f"no PostgreSQL at {admin}: {type(e).__name__}: {e}")
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL is required under CI=true: " + "; ".join(reasons))
        pytest.skip("no PostgreSQL for the outbox tests: " + "; ".join(reasons))
    pg = Postgres(_with_database(admin, database), admin, database, proc)
    yield pg
    try:
        asyncio.run(_admin(admin, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
    except Exception:
        pass
    if proc is not None:
        proc.cleanup()


@pytest.fixture
def private_postgres(postgres):
    if postgres.proc is None:
        if os.environ.get("CI") == "true" and PostgresProcess.unavailable() is None:
            pytest.fail("the private PostgreSQL could not start under CI=true")
        pytest.skip("needs a private PostgreSQL to restart (the machine's server is in use)")
    return postgres


@pytest.fixture
def make_table(postgres):
    """``await make_table()``: a new outbox table (``relay outbox init``'s SQL) with a unique name."""

    async def make(prefix: str = "ob") -> str:
        table = f"{prefix}_{secrets.token_hex(4)}"
        await init_table(postgres.dsn, table)
        return table

    return make


@pytest.fixture
async def db(postgres):
    """An asyncpg connection to the tests' database (the backend's side)."""
    import asyncpg

    conn = await asyncpg.connect(postgres.dsn, timeout=5)
    yield conn
    await conn.close()

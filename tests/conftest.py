import os
import shutil

import pytest

from relay.testing import RedisClusterProcess, RedisProcess
from tests.relayproc import RelayProcess


@pytest.fixture(scope="session")
def relay():
    """A relay process with the test defaults, shared by the session (use unique channel names)."""
    with RelayProcess() as r:
        yield r


@pytest.fixture
def relay_factory():
    """Start relays with config overrides: ``relay_factory({"client_queue_max_size": 1000})``."""
    started = []

    def make(overrides=None, env=None):
        r = RelayProcess(overrides, env).start()
        started.append(r)
        return r

    yield make
    for r in started:
        r.cleanup()


def need_redis_server() -> None:
    """Real Redis only: under CI a missing redis-server fails the run, elsewhere it is a clear skip."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed (required under CI=true)")
        pytest.skip("redis-server is not installed")


@pytest.fixture(scope="session")
def redis_server():
    """One real redis-server on a free port for the session (tests use unique key prefixes)."""
    need_redis_server()
    with RedisProcess() as r:
        yield r


@pytest.fixture
def redis_factory():
    """Start extra redis-servers (e.g. three independent shards) for one test."""
    need_redis_server()
    started = []

    def make(**kw):
        r = RedisProcess(**kw).start()
        started.append(r)
        return r

    yield make
    for r in started:
        r.cleanup()


@pytest.fixture(scope="session")
def redis_cluster():
    """A real three-master Redis Cluster (redis-server --cluster-enabled + redis-cli --cluster create)."""
    need_redis_server()
    with RedisClusterProcess(3) as c:
        yield c

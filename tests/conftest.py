import pytest

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

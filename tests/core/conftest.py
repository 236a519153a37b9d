import importlib

import pytest

IMPLS = ["relay.core._core_py"]
try:
    importlib.import_module("relay.core._core")
    IMPLS.insert(0, "relay.core._core")
except ImportError:  # test_core_loaded reports this when the compiled core was expected
    pass


@pytest.fixture(params=IMPLS)
def impl(request):
    """Each core implementation in turn: the same tests run on both."""
    return importlib.import_module(request.param)


class FakeLoop:
    """Collects call_soon callbacks; ``run()`` plays them like one loop iteration."""

    def __init__(self):
        self.ready = []

    def call_soon(self, cb, *args):
        self.ready.append((cb, args))

    def run(self):
        ready, self.ready = self.ready, []
        for cb, args in ready:
            cb(*args)


class RecordingTransport:
    """Records what the core writes (a stand-in for the socket: these tests check the queue logic)."""

    def __init__(self):
        self.writes = []

    def write(self, data):
        self.writes.append(bytes(data))


@pytest.fixture
def loop():
    return FakeLoop()

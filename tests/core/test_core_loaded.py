"""CI proves the compiled core was really loaded (make test sets RELAY_EXPECT_COMPILED=1)."""

import os

import pytest

from relay import core


def test_compiled_core_loaded_when_expected():
    if os.environ.get("RELAY_EXPECT_COMPILED") != "1":
        pytest.skip("RELAY_EXPECT_COMPILED is not set (running the pure-Python pass)")
    assert core.IMPORT_ERROR is None, core.IMPORT_ERROR
    assert core.IMPLEMENTATION == "cython"
    import relay.core._core

    assert relay.core._core.__file__.endswith(".so")


def test_pure_python_forced():
    if os.environ.get("RELAY_PUREPYTHON") != "1":
        pytest.skip("RELAY_PUREPYTHON is not set")
    assert core.IMPLEMENTATION == "python"


def test_both_cores_export_the_same_api():
    import relay.core._core_py as py

    try:
        import relay.core._core as cy
    except ImportError:
        pytest.skip("compiled core not built")
    assert set(py.__all__) == set(cy.__all__)
    for cls in ("Hub", "Conn", "FrameReader"):
        pub = {n for n in dir(getattr(py, cls)) if not n.startswith("_")}
        cpub = {n for n in dir(getattr(cy, cls)) if not n.startswith("_")}
        assert pub <= cpub, (cls, pub - cpub)

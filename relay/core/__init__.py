"""Chooses the fan-out core: compiled (relay.core._core) unless RELAY_PUREPYTHON=1.

A compiled core that fails to import is never a silent fallback: the failure
is logged at ERROR level, kept in ``IMPORT_ERROR`` and shown by ``relay info``
and the ``relay_core_info`` metric.
"""

from __future__ import annotations

import logging
import os

__all__ = ["IMPLEMENTATION", "IMPORT_ERROR", "Hub", "Conn", "FrameReader", "ws_frame", "tcp_frame",
           "fnv1a32", "WIRE_WS", "WIRE_TCP", "WIRE_WS_PB", "FORCED_PURE", "LANE_CHAT", "LANE_UPDATE", "LANE_BULK",
           "LANES", "QUEUED", "DROPPED", "OVER_CAP", "FRAGMENTS_MAX"]

log = logging.getLogger("relay.core")

FORCED_PURE = os.environ.get("RELAY_PUREPYTHON", "") not in ("", "0")
IMPORT_ERROR: str | None = None

if FORCED_PURE:
    from relay.core import _core_py as _impl
else:
    try:
        from relay.core import _core as _impl  # type: ignore[attr-defined]
    except ImportError as e:  # pragma: no cover - exercised by test_core_loaded
        IMPORT_ERROR = f"{type(e).__name__}: {e}"
        log.error("compiled core relay.core._core failed to import (%s); running the pure-Python core, "
                  "which is several times slower. Run `make build` (or pip install -e .).", IMPORT_ERROR)
        from relay.core import _core_py as _impl

IMPLEMENTATION: str = _impl.IMPLEMENTATION
Hub = _impl.Hub
Conn = _impl.Conn
FrameReader = _impl.FrameReader
ws_frame = _impl.ws_frame
tcp_frame = _impl.tcp_frame
fnv1a32 = _impl.fnv1a32
WIRE_WS: int = _impl.WIRE_WS
WIRE_TCP: int = _impl.WIRE_TCP
WIRE_WS_PB: int = _impl.WIRE_WS_PB
LANE_CHAT: int = _impl.LANE_CHAT
LANE_UPDATE: int = _impl.LANE_UPDATE
LANE_BULK: int = _impl.LANE_BULK
#: a publication class's name (config, server API) -> its lane
LANES: dict[str, int] = {"chat": LANE_CHAT, "update": LANE_UPDATE, "bulk": LANE_BULK}
QUEUED: int = _impl.QUEUED
DROPPED: int = _impl.DROPPED
OVER_CAP: int = _impl.OVER_CAP
FRAGMENTS_MAX: int = _impl.FRAGMENTS_MAX

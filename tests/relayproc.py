"""A real relay process with the test suite's configuration (see relay/testing.py).

``RelayProcess(overrides)`` starts relay on free ports with ``DEFAULTS`` updated by
``overrides``. The child inherits the environment, so ``RELAY_PUREPYTHON=1`` reaches it.
"""

from __future__ import annotations

from typing import Any

from relay import testing
from relay.testing import ROOT, free_port, merge

__all__ = ["ROOT", "SECRET", "API_KEY", "DEFAULTS", "RelayProcess", "free_port"]

SECRET = "test-secret-0123456789abcdef0123456789"
API_KEY = "test-api-key"

DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1",
    "token_hmac_secret": SECRET,
    "api_key": API_KEY,
    "ping_interval": 25.0,
    "drain_window": 0.5,  # SIGTERM ends a test relay quickly
    "channel": {"presence": True},
    "namespaces": {
        "chat": {"publish_access": "subscribers", "presence": True, "join_leave": True, "force_push_join_leave": True,
                 "history_size": 100, "history_ttl": 300.0, "force_recovery": True},
        "news": {"history_size": 10, "history_ttl": 300.0, "force_recovery": True, "subscribe_access": "anonymous"},
        "pub": {"publish_access": "subscribers"},
        "closed": {"subscribe_access": "token"},
    },
}


class RelayProcess(testing.RelayProcess):
    def __init__(self, overrides: dict | None = None, env: dict | None = None) -> None:
        super().__init__(merge(DEFAULTS, overrides or {}), env=env)

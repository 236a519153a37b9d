"""Start a real relay process on free ports for tests (and benchmarks).

``RelayProcess(overrides)`` writes a TOML config (the test defaults below, then
``overrides``), runs ``python -m relay serve`` and waits for ``/readyz``. The
child inherits the environment, so ``RELAY_PUREPYTHON=1`` reaches it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

SECRET = "test-secret-0123456789abcdef0123456789"
API_KEY = "test-api-key"

DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1",
    "token_hmac_secret": SECRET,
    "api_key": API_KEY,
    "ping_interval": 25.0,
    "channel": {"presence": True},
    "namespaces": {
        "chat": {"allow_publish": True, "presence": True, "join_leave": True, "force_push_join_leave": True,
                 "history_size": 100, "history_ttl": 300.0, "force_recovery": True},
        "news": {"history_size": 10, "history_ttl": 300.0, "force_recovery": True, "allow_anonymous": True},
        "pub": {"allow_publish": True},
        "closed": {"allow_subscribe": False},
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(v)


def to_toml(cfg: dict) -> str:
    lines = [f"{k} = {_toml_value(v)}" for k, v in cfg.items() if not isinstance(v, dict)]
    for k, v in cfg.items():
        if isinstance(v, dict) and k != "namespaces":
            lines.append(f"\n[{k}]")
            lines += [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items()]
    for ns, opts in cfg.get("namespaces", {}).items():
        lines.append(f"\n[namespaces.{ns}]")
        lines += [f"{kk} = {_toml_value(vv)}" for kk, vv in opts.items()]
    return "\n".join(lines) + "\n"


def merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class RelayProcess:
    def __init__(self, overrides: dict | None = None, env: dict | None = None) -> None:
        self.ws_port = free_port()
        self.tcp_port = free_port()
        self.api_port = free_port()
        self.config = merge(DEFAULTS, {"ws_port": self.ws_port, "tcp_port": self.tcp_port,
                                       "api_port": self.api_port})
        self.config = merge(self.config, overrides or {})
        self.env = env
        self.proc: subprocess.Popen | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="relay-test-")
        self.log_path = Path(self._dir.name) / "relay.log"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}{self.config.get('ws_path', '/connection/websocket')}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/api"

    @property
    def api_key(self) -> str:
        return self.config["api_key"]

    def token(self, user: str, ttl: float | None = 3600, **kw: Any) -> str:
        from relay.auth import make_connect_token

        return make_connect_token(user, self.config["token_hmac_secret"], ttl=ttl, **kw)

    def start(self) -> "RelayProcess":
        cfg_path = Path(self._dir.name) / "relay.toml"
        cfg_path.write_text(to_toml(self.config))
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.update(self.env or {})
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "relay", "serve", "-c", str(cfg_path)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"relay did not become ready:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()
        self._dir.cleanup()

    def __enter__(self) -> "RelayProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

"""Run real relay processes (and other servers) for tests, benchmarks and load tests.

relay is tested over real sockets against a real process: ``RelayProcess`` writes a
TOML config, starts ``python -m relay serve`` (optionally pinned to one CPU with
``taskset``) and waits for ``/readyz``. ``ServerProcess`` is the generic part, also
used for benchmark peers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["ROOT", "free_port", "to_toml", "merge", "ServerProcess", "RelayProcess", "RedisProcess", "Samples",
           "RedisClusterProcess", "PostgresProcess"]

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def merge(a: dict, b: dict) -> dict:
    """``a`` updated by ``b``, recursively for nested tables."""
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_toml(cfg: dict) -> str:
    """relay's config dict as TOML (scalars, ``[channel]`` and ``[namespaces.NAME]`` tables)."""
    def scalar(v: Any) -> str:
        if isinstance(v, (bool, int, float, str)):
            return json.dumps(v)  # JSON booleans, numbers and strings are valid TOML
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        if isinstance(v, dict):  # an inline table
            return "{" + ", ".join(f"{json.dumps(k)} = {scalar(x)}" for k, x in v.items()) + "}"
        raise TypeError(f"not a TOML scalar: {v!r}")

    lines = [f"{k} = {scalar(v)}" for k, v in cfg.items() if not isinstance(v, dict)]
    for k, v in cfg.items():
        if isinstance(v, dict) and k != "namespaces":
            lines += [f"\n[{k}]"] + [f"{kk} = {scalar(vv)}" for kk, vv in v.items()]
    for ns, opts in cfg.get("namespaces", {}).items():
        lines += [f"\n[namespaces.{json.dumps(ns)}]"] + [f"{kk} = {scalar(vv)}" for kk, vv in opts.items()]
    return "\n".join(lines) + "\n"


class ServerProcess:
    """A server in a child process, logged to a temporary file, optionally pinned to ``cpu``.

    Subclasses give ``argv()`` and ``ready()``.
    """

    name = "server"

    def __init__(self, cpu: int | None = None, env: dict[str, str] | None = None,
                 unset_env: tuple[str, ...] = ()) -> None:
        self.cpu = cpu
        self.env = env or {}
        self.unset_env = unset_env
        self.proc: subprocess.Popen | None = None
        self.tmp = tempfile.TemporaryDirectory(prefix=f"relay-{self.name}-")
        self._log = None

    @property
    def log_path(self) -> Path:
        return Path(self.tmp.name) / "server.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def argv(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def ready(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def start(self, timeout: float = 30.0):
        cmd = self.argv()
        if self.cpu is not None and self.cpu < (os.cpu_count() or 1):
            cmd = ["taskset", "-c", str(self.cpu)] + cmd  # taskset execs: Popen.pid is the server's
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        for name in self.unset_env:
            env.pop(name, None)
        env.update(self.env)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            if self.ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready:\n{self.log()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def cleanup(self) -> None:
        self.stop()
        self.tmp.cleanup()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()


def http_ok(url: str) -> bool:
    import ssl

    ctx = ssl._create_unverified_context() if url.startswith("https:") else None  # test certs are self-signed
    try:
        with urllib.request.urlopen(url, timeout=1, context=ctx) as r:
            return r.status == 200
    except OSError:
        return False


class RelayProcess(ServerProcess):
    """``python -m relay serve`` with ``config`` (ports are filled in with free ones)."""

    name = "relay"

    def __init__(self, config: dict, cpu: int | None = None, env: dict[str, str] | None = None,
                 unset_env: tuple[str, ...] = (), name: str | None = None) -> None:
        if name:
            self.name = name
        super().__init__(cpu, env, unset_env)
        ports = {k: free_port() for k in ("ws_port", "tcp_port", "api_port") if not config.get(k)}
        self._auto_ports = tuple(ports)
        self.config = merge(config, ports)

    def start(self, timeout: float = 30.0):
        """Start; if a port picked here was taken meanwhile by another process (free_port can only
        say it was free a moment ago), pick new ones and try again."""
        for attempt in range(3):
            try:
                return super().start(timeout)
            except RuntimeError as e:
                if attempt == 2 or not self._auto_ports or "address already in use" not in str(e):
                    raise
                self.stop()
                self.config = merge(self.config, {k: free_port() for k in self._auto_ports})
        raise AssertionError("unreachable")  # pragma: no cover

    ws_port = property(lambda self: self.config["ws_port"])
    tcp_port = property(lambda self: self.config["tcp_port"])
    api_port = property(lambda self: self.config["api_port"])
    api_key = property(lambda self: self.config.get("api_key", ""))

    @property
    def tls(self) -> bool:
        return bool(self.config.get("tls_cert_file"))

    @property
    def ws_url(self) -> str:
        scheme = "wss" if self.tls else "ws"
        return f"{scheme}://127.0.0.1:{self.ws_port}{self.config.get('ws_path', '/connection/websocket')}"

    @property
    def api_url(self) -> str:
        return f"http{'s' if self.tls else ''}://127.0.0.1:{self.api_port}/api"

    def token(self, user: str, ttl: float | None = 3600, **kw: Any) -> str:
        from relay.auth import make_connect_token

        return make_connect_token(user, self.config["token_hmac_secret"], ttl=ttl, **kw)

    def argv(self) -> list[str]:
        path = Path(self.tmp.name) / "relay.toml"
        path.write_text(to_toml(self.config))
        return [sys.executable, "-m", "relay", "serve", "-c", str(path)]

    def metrics(self) -> "Samples":
        """One scrape of ``/metrics``."""
        import urllib.request

        url = f"http{'s' if self.tls else ''}://127.0.0.1:{self.api_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            return Samples(r.read().decode())

    def api(self, method: str, params: dict | None = None) -> dict:
        """Call the HTTP server API (blocking); the decoded answer."""
        import json
        import urllib.request

        req = urllib.request.Request(f"{self.api_url}/{method}", method="POST", data=json.dumps(params or {}).encode(),
                                     headers={"X-API-Key": self.config["api_key"]})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def ready(self) -> bool:
        return http_ok(f"http{'s' if self.tls else ''}://127.0.0.1:{self.api_port}/readyz")

    def core(self) -> str:
        """The fan-out core the server reported in its start line (``core=cython``)."""
        for line in self.log().splitlines():
            if "core=" in line:
                return line.split("core=", 1)[1].split()[0]
        return "unknown"


class Samples:
    """A Prometheus text exposition, read by prometheus-client's parser:
    ``samples["relay_deliveries_total", {"transport": "tcp"}]`` (0.0 when absent)."""

    def __init__(self, text: str) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        self.text = text
        self.values: dict[tuple[str, frozenset], float] = {}
        self.families: set[str] = set()
        for fam in text_string_to_metric_families(text):
            self.families.add(fam.name)
            for s in fam.samples:
                self.values[(s.name, frozenset(s.labels.items()))] = s.value

    def __getitem__(self, key: str | tuple[str, dict]) -> float:
        name, labels = (key, {}) if isinstance(key, str) else key
        return self.values.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str) -> float:
        """The sum of ``name`` over all its label sets."""
        return sum(v for (n, _), v in self.values.items() if n == name)


class RedisProcess(ServerProcess):
    """A throw-away ``redis-server`` on a free port (no persistence), for tests and benchmarks.

    ``extra`` are more ``--option value`` arguments (e.g. ``["--cluster-enabled", "yes"]``).
    """

    name = "redis"

    def __init__(self, port: int | None = None, extra: list[str] | None = None, cpu: int | None = None) -> None:
        super().__init__(cpu=cpu)
        self.port = port or free_port()
        self.extra = extra or []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        return ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.tmp.name, *self.extra]

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False


def free_cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free too."""
    for _ in range(200):
        p = free_port()
        if p + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 10000))
            except OSError:
                continue
        return p
    raise RuntimeError("no free port pair for a Redis Cluster node")


class RedisClusterProcess:
    """A throw-away Redis Cluster of ``masters`` redis-servers, each with ``replicas`` replicas (which take
    over when their master fails: node timeout 2 s), built with ``redis-cli --cluster create``."""

    def __init__(self, masters: int = 3, replicas: int = 0) -> None:
        self.replicas = replicas
        self.nodes = [RedisProcess(port=free_cluster_port(),
                                   extra=["--cluster-enabled", "yes", "--cluster-node-timeout", "2000",
                                          # a failing master stops its own slots only (docs/deploy.md)
                                          "--cluster-require-full-coverage", "no"])
                      for _ in range(masters * (1 + replicas))]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self, timeout: float = 30.0) -> "RedisClusterProcess":
        for n in self.nodes:
            n.extra += ["--cluster-config-file", f"{n.tmp.name}/nodes.conf"]
            n.start()
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        r = subprocess.run(["redis-cli", "--cluster", "create", *addrs, "--cluster-replicas", str(self.replicas),
                            "--cluster-yes"], capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            self.cleanup()
            raise RuntimeError(f"redis-cli --cluster create failed:\n{r.stdout}\n{r.stderr}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = [subprocess.run(["redis-cli", "-p", str(n.port), "cluster", "info"], capture_output=True,
                                     text=True).stdout for n in self.nodes]
            if all("cluster_state:ok" in s for s in states) and (not self.replicas or all(
                    "master_link_status:up" in subprocess.run(["redis-cli", "-p", str(p), "info", "replication"],
                                                              capture_output=True, text=True).stdout
                    for p in self.replica_ports())):
                return self
            time.sleep(0.1)
        self.cleanup()
        raise RuntimeError("Redis Cluster did not reach cluster_state:ok")

    def cleanup(self) -> None:
        for n in self.nodes:  # all at once: a master stopping alone waits up to 10 s for its replicas
            if n.proc is not None and n.proc.poll() is None:
                n.proc.terminate()
        for n in self.nodes:
            n.cleanup()

    def _role_ports(self, role: str) -> list[int]:
        out = []
        for n in self.nodes:
            info = subprocess.run(["redis-cli", "-p", str(n.port), "info", "replication"], capture_output=True,
                                  text=True).stdout
            if f"role:{role}" in info:
                out.append(n.port)
        return out

    def master_ports(self) -> list[int]:
        """The ports of the nodes that are masters now (a failover changes them)."""
        return self._role_ports("master")

    def replica_ports(self) -> list[int]:
        return self._role_ports("slave")

    def __enter__(self) -> "RedisClusterProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()


class PostgresProcess(ServerProcess):
    """A throw-away PostgreSQL server (``initdb`` + ``postgres``) on a free port, TCP on 127.0.0.1 only,
    trust authentication for the superuser ``postgres``, durability off (fsync) for speed.

    Run as root, initdb and the server run as the ``postgres`` user (initdb refuses root).
    ``stop()`` is a fast shutdown (SIGINT: sessions are ended, nothing waits for clients), so
    ``stop(); start()`` restarts the same cluster on the same port. ``unavailable()`` says why
    none can run here.
    """

    name = "postgres"

    def __init__(self, port: int | None = None) -> None:
        super().__init__()
        self.port = port or free_port()
        self.bindir = self.find_bindir()
        os.chmod(self.tmp.name, 0o711)  # the postgres user reaches its data directory inside
        self.data = Path(self.tmp.name) / "data"

    @staticmethod
    def find_bindir() -> Path | None:
        """The directory with initdb and postgres: PATH, then Debian's /usr/lib/postgresql/<newest>/bin."""
        import glob
        import shutil

        found = shutil.which("initdb")
        if found and shutil.which("postgres", path=str(Path(found).parent)):
            return Path(found).parent
        dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
                      if p.split("/")[4].isdigit() else 0)
        return Path(dirs[-1]).parent if dirs else None

    @classmethod
    def unavailable(cls) -> str | None:
        """Why no private PostgreSQL can run here (None: it can)."""
        import pwd
        import shutil

        if cls.find_bindir() is None:
            return "no initdb (PostgreSQL server binaries) on PATH or in /usr/lib/postgresql/*/bin"
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root and there is no 'postgres' user to run initdb as"
            if shutil.which("setpriv") is None:
                return "running as root and setpriv (util-linux) is missing to drop to the 'postgres' user"
        return None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_owner(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *argv]

    def start(self, timeout: float = 30.0):
        if self.bindir is None:
            raise RuntimeError(self.unavailable() or "no PostgreSQL binaries")
        if not self.data.exists():
            self.data.mkdir(mode=0o700)
            if os.geteuid() == 0:
                import pwd

                pw = pwd.getpwnam("postgres")
                os.chown(self.data, pw.pw_uid, pw.pw_gid)
            r = subprocess.run(self._as_owner([str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                                               "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions"]),
                               capture_output=True, text=True, cwd=self.tmp.name, timeout=120)
            if r.returncode != 0:
                raise RuntimeError(f"initdb failed:\n{r.stdout}\n{r.stderr}")
        return super().start(timeout)

    def argv(self) -> list[str]:
        return self._as_owner([str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                               "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                               "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                               "-c", "max_connections=100", "-c", "shared_buffers=32MB"])

    def ready(self) -> bool:
        if "ready to accept connections" not in self.log():
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: fast shutdown
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        super().stop()

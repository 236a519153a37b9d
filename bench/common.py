"""Shared plumbing for relay's benchmarks (see /work/shared/BENCHMARKING.md).

What lives here, so that ``fanout.py`` and ``idle.py`` do not repeat it:

* launching a server pinned to one core (``taskset -c 0``) and waiting until it
  accepts WebSocket connections: :class:`RelayServer` (relay itself, from a
  temporary TOML config) and the peers it is measured against:
  :class:`PicowsPeer` (the naive picows relay in ``bench/peers/picows_relay.py``),
  :class:`WebsocketsPeer` (``bench/peers/websockets_relay.py``), :class:`NodeWsPeer`
  (``bench/peers/ws_relay.js`` on Node ``ws``) and :class:`NatsPeer` (nats-server's
  WebSocket listener); a peer that cannot run here says why (:meth:`Peer.unavailable`);
* reading a process's CPU time and RSS from ``/proc`` (the figures are charged
  to the server *process*, never to the machine, because the machine is shared);
* the machine description and JSON result files in ``bench/results/``;
* a benchmark's command-line boilerplate: :func:`bench_parser`, :func:`quick_defaults`, :func:`save_result`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from relay import testing  # noqa: E402
from relay.testing import free_port  # noqa: E402

__all__ = [
    "ROOT", "PYTHON", "SERVER_CPU", "GENERATOR_CPU", "RELAY_SECRET", "FANOUT_CHANNEL",
    "free_port", "raise_nofile", "CpuQuota", "SERVER_CPU_QUOTA",
    "pin_to", "die_with_parent", "run_worker", "proc_cpu_times", "sum_cpu_times", "proc_cpu_seconds", "cpu_stat",
    "proc_rss_bytes", "child_pids", "apply_run_defaults", "bench_parser", "quick_defaults", "save_result",
    "ServerProcess", "RelayServer", "Peer", "PicowsPeer", "WebsocketsPeer", "NodeWsPeer", "NatsPeer", "PEERS",
    "machine_description", "write_result", "fmt_rate",
]

ROOT = Path(__file__).resolve().parent.parent
#: the project's interpreter: servers and load generator run on the same Python
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() \
    else sys.executable
SERVER_CPU = 0     #: the core every server under test is pinned to
GENERATOR_CPU = 1  #: the core the load generator (workers and publisher) is pinned to
RELAY_SECRET = "bench-secret-0123456789abcdef0123456789"
FANOUT_CHANNEL = "bench:fanout"
RESULTS_DIR = ROOT / "bench" / "results"

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def raise_nofile() -> int:
    """Raise this process's open-file soft limit to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies (prctl PR_SET_PDEATHSIG): a generator
    worker whose benchmark was interrupted must not go on spinning on the generator core."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass


def run_worker(main, *args) -> None:
    """Body of a load-generator worker process: it dies with its parent, runs pinned to the
    generator core with the fd limit raised, and ``uvloop.run(main(*args))`` until the pipe closes."""
    import uvloop

    die_with_parent()
    pin_to(GENERATOR_CPU)
    raise_nofile()
    try:
        uvloop.run(main(*args))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass


def pin_to(cpu: int) -> None:
    """Pin the calling process (all its threads) to ``cpu`` when the machine has it."""
    if cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


def proc_cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of ``pid`` in seconds, from /proc/PID/stat (all threads, children excluded)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # the command name (field 2) may contain spaces: split after its closing parenthesis
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK  # fields 14 and 15 of stat(5)


def sum_cpu_times(pids) -> tuple[float, float]:
    """(user, system) CPU seconds summed over ``pids``; processes already gone count as 0."""
    user = system = 0.0
    for pid in pids:
        try:
            u, s = proc_cpu_times(pid)
        except OSError:
            continue
        user += u
        system += s
    return user, system


def apply_run_defaults(args, duration: float) -> None:
    """Fill ``--duration``, ``--warmup`` and ``--drain-timeout`` for a full or a ``--quick`` run."""
    if args.duration is None:
        args.duration = 2.0 if args.quick else duration
    if args.warmup is None:
        args.warmup = 0.5 if args.quick else 2.0
    if args.quick:
        args.drain_timeout = min(args.drain_timeout, 5.0)


def bench_parser(description: str, doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's command line: ``description`` above the options, its module docstring ``doc`` below them,
    line breaks kept."""
    return argparse.ArgumentParser(description=description, epilog=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def quick_defaults(args, *table: tuple[str, Any, Any]) -> None:
    """Give every option of ``table`` (name, full run's default, ``--quick`` run's default) that was not given
    (is None) its default for this run."""
    for key, full, quick in table:
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds."""
    u, s = proc_cpu_times(pid)
    return u + s


_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_stat() -> dict[int, dict[str, float]]:
    """Per-CPU time in seconds by kind (user, nice, system, idle, iowait, irq, softirq, steal).

    Used to see what ran on the benchmark's cores besides the processes under test: softirq
    time (on loopback the receiving side's TCP work runs as softirq on the *sender's* core
    and, with IRQ time accounting, is charged to no process) and other tenants' load.
    """
    out: dict[int, dict[str, float]] = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *vals = line.split()
            out[int(name[3:])] = {k: int(v) / _CLK_TCK for k, v in zip(_STAT_FIELDS, vals, strict=False)}
    return out


def child_pids(pid: int) -> list[int]:
    """Child pids of ``pid`` from /proc/PID/task/*/children."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def proc_rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (/proc/PID/statm)."""
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


def _tcp_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class CpuQuota:
    """A cgroup that caps its processes at ``share`` of one core (CFS bandwidth control).

    On a 2-core machine one load-generator core cannot saturate a server that has a whole
    core (at one message per frame the generator spends about as much per delivery as the
    server). Capping every server at the same share of a core (``--cpu-quota``) makes the
    server the bottleneck, so deliveries/s at saturation can be compared between servers
    "given the same cores". The period is short (5 ms) so throttling adds at most
    ``(1 - share) * 5`` ms to a delivery. cgroup v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us``).
    Time the kernel charges as softirq rather than to a task escapes the cap, equally for
    every server.
    """

    PERIOD_US = 5000

    def __init__(self, share: float) -> None:
        if not 0 < share <= 1:
            raise ValueError("cpu quota: a share of one core in (0, 1]")
        self.share = share
        quota = max(1000, int(share * self.PERIOD_US))
        name = f"relay-bench-{os.getpid()}-{id(self):x}"
        v2 = Path("/sys/fs/cgroup/cgroup.controllers")
        if v2.exists():
            self.path = Path("/sys/fs/cgroup") / name
            self.path.mkdir()
            (self.path / "cpu.max").write_text(f"{quota} {self.PERIOD_US}")
        else:
            self.path = Path("/sys/fs/cgroup/cpu") / name
            self.path.mkdir()
            (self.path / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))

    @staticmethod
    def unavailable() -> str | None:
        """Why no CPU quota can be set here (None: it can)."""
        for base in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/cpu")):
            if (base / "cgroup.controllers").exists() or (base / "cpu.cfs_quota_us").exists():
                return None if os.access(base, os.W_OK) else f"{base} is not writable (run as root)"
        return "no cgroup cpu controller under /sys/fs/cgroup"

    def add(self, pid: int) -> None:
        """Move process ``pid`` (every thread of it) into the cgroup."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def throttled_seconds(self) -> float:
        """Time the cgroup's processes were held back by the quota so far."""
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines() if line)
        if "throttled_usec" in stat:
            return int(stat["throttled_usec"]) / 1e6
        return int(stat.get("throttled_time", 0)) / 1e9

    def remove(self) -> None:
        try:
            procs = (self.path / "cgroup.procs").read_text().split()
            parent = self.path.parent / "cgroup.procs"
            for pid in procs:  # leftovers (a server that outlived stop()) go back to the root group
                parent.write_text(pid)
            self.path.rmdir()
        except OSError:
            pass


#: set by a benchmark's ``--cpu-quota``: every server started afterwards runs under this share of a core
SERVER_CPU_QUOTA: float | None = None


class ServerProcess(testing.ServerProcess):
    """A server under test, pinned to ``SERVER_CPU``, with its CPU time and RSS read from /proc.

    With ``SERVER_CPU_QUOTA`` set, the server also runs in its own cgroup capped at that
    share of the core (:class:`CpuQuota`), entered as soon as it is ready, before any load.
    """

    quota: CpuQuota | None = None

    def start(self, timeout: float = 30.0):
        out = super().start(timeout)
        if SERVER_CPU_QUOTA is not None:
            if self.quota is None:
                self.quota = CpuQuota(SERVER_CPU_QUOTA)
            self.quota.add(self.pid)
        return out

    def cleanup(self) -> None:
        super().cleanup()
        if self.quota is not None:
            self.quota.remove()
            self.quota = None

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def cpu_times(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the server process."""
        return proc_cpu_times(self.pid)

    def rss_bytes(self) -> int:
        return proc_rss_bytes(self.pid)


class RelayServer(testing.RelayProcess, ServerProcess):
    """relay itself (``python -m relay serve``) with the benchmark configuration.

    ``client_queue_max_size`` is raised to 4 MiB so a burst never trips 3008 (slow)
    before the socket buffers do; the ``bench`` namespace allows client publishing.
    The compiled core is benchmarked even when RELAY_PUREPYTHON is set in the shell.
    """

    def __init__(self, name: str = "relay", extra_config: dict[str, Any] | None = None) -> None:
        cfg: dict[str, Any] = {
            "host": "127.0.0.1", "token_hmac_secret": RELAY_SECRET, "api_key": "bench",
            "client_queue_max_size": 4194304, "ping_interval": 25.0, "drain_window": 0.5,
            # the benchmark publisher is one connection sending thousands of publishes per second
            "client_command_rate": 1e9, "client_command_burst": 1000000,
            "client_publish_rate": 1e9, "client_publish_burst": 1000000,
            # every benchmark client comes from 127.0.0.1 and most share one user
            "max_connections_per_ip": 0, "max_connections_per_user": 0,
            "namespaces": {"bench": {"publish_access": "subscribers"}},
        }
        super().__init__(testing.merge(cfg, extra_config or {}), cpu=SERVER_CPU,
                         unset_env=("RELAY_PUREPYTHON",), name=name)

    def argv(self) -> list[str]:
        return [PYTHON] + super().argv()[1:]

    def token(self, user: str = "bench") -> str:  # type: ignore[override]
        return super().token(user, ttl=None)


class Peer(ServerProcess):
    """A peer relay under test: subscribers on ``ws_url``, the publisher on ``pub_url``.

    ``protocol`` is the load generator's ``Target.kind`` for it ("raw": every frame one
    payload; "nats": the NATS text protocol over WebSocket), ``channel`` what subscribers
    subscribe to (only the "nats" protocol has a subject).
    """

    name = "peer"
    protocol = "raw"
    channel = FANOUT_CHANNEL

    def __init__(self, env: dict[str, str] | None = None) -> None:
        super().__init__(cpu=SERVER_CPU, env=env)
        self.port = free_port()

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this peer cannot run on this machine (None: it can). May install what it needs."""
        return None

    @classmethod
    def version(cls) -> str:
        """The peer's library or server version, for the results."""
        return ""

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def pub_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/pub"

    def ready(self) -> bool:
        return _tcp_accepts(self.port)


class PicowsPeer(Peer):
    """The naive picows relay (bench/peers/picows_relay.py) on uvloop."""

    name = "picows"

    def __init__(self) -> None:
        super().__init__()

    @classmethod
    def version(cls) -> str:
        return f"picows {_version('picows')}, uvloop {_version('uvloop')}"

    def argv(self) -> list[str]:
        return [PYTHON, str(ROOT / "bench" / "peers" / "picows_relay.py"), "--port", str(self.port)]


class WebsocketsPeer(Peer):
    """The naive websockets relay (bench/peers/websockets_relay.py, ``websockets.broadcast``) on uvloop."""

    name = "websockets"

    @classmethod
    def unavailable(cls) -> str | None:
        if _version("websockets") == "not installed":
            return "the websockets package is not installed in .venv (pip install -e '.[test]')"
        return None

    @classmethod
    def version(cls) -> str:
        return f"websockets {_version('websockets')}, uvloop {_version('uvloop')}"

    def argv(self) -> list[str]:
        return [PYTHON, str(ROOT / "bench" / "peers" / "websockets_relay.py"), "--port", str(self.port)]


NODE_PEER_DIR = ROOT / "bench" / "peers" / "node"


def _node_ws_installed() -> str | None:
    """The ws version installed in bench/peers/node/node_modules, or None."""
    try:
        return json.loads((NODE_PEER_DIR / "node_modules" / "ws" / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def _node_ws_pinned() -> str:
    return json.loads((NODE_PEER_DIR / "package.json").read_text())["dependencies"]["ws"]


class NodeWsPeer(Peer):
    """The Node ``ws`` broadcast server (bench/peers/ws_relay.js), ws pinned in bench/peers/node."""

    name = "node-ws"

    @classmethod
    def unavailable(cls) -> str | None:
        """None when node and the pinned ws are there; installs ws with ``npm ci`` on first use."""
        if shutil.which("node") is None:
            return "node not found on PATH"
        pinned = _node_ws_pinned()
        if _node_ws_installed() == pinned:
            return None
        npm = shutil.which("npm")
        if npm is None:
            return f"npm not found on PATH, and bench/peers/node/node_modules has no ws {pinned}"
        print(f"  [node-ws: installing ws {pinned} with npm ci in bench/peers/node]", flush=True)
        try:
            r = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=str(NODE_PEER_DIR),
                               capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"npm ci in bench/peers/node failed: {e}"
        if r.returncode != 0 or _node_ws_installed() != pinned:
            tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
            return f"npm ci in bench/peers/node failed (exit {r.returncode}): {' / '.join(tail)}"
        return None

    @classmethod
    def version(cls) -> str:
        return f"ws {_node_ws_installed() or 'not installed'}, node {_command_version(['node', '--version'])}"

    def argv(self) -> list[str]:
        return ["node", str(ROOT / "bench" / "peers" / "ws_relay.js"), "--port", str(self.port)]


class NatsPeer(Peer):
    """nats-server's WebSocket listener (no TLS), GOMAXPROCS=1, from a generated config file.

    Subscribers and the publisher speak the NATS text protocol over WebSocket on subject
    ``bench.fanout``; the client listener (a free port on 127.0.0.1) is unused. Every
    other setting is nats-server's default (max_pending 64 MiB, write_deadline, ping
    interval 2 min, no permessage-deflate).
    """

    name = "nats"
    protocol = "nats"
    channel = "bench.fanout"

    def __init__(self) -> None:
        super().__init__(env={"GOMAXPROCS": "1"})
        self.client_port = free_port()

    @classmethod
    def unavailable(cls) -> str | None:
        if shutil.which("nats-server") is None:
            return "nats-server not found on PATH"
        return None

    @classmethod
    def version(cls) -> str:
        return _command_version(["nats-server", "--version"])

    @property
    def pub_url(self) -> str:
        return self.ws_url

    @property
    def config_path(self) -> Path:
        return Path(self.tmp.name) / "nats.conf"

    def config(self) -> str:
        return (f'listen: "127.0.0.1:{self.client_port}"\n'
                "websocket {\n"
                '  host: "127.0.0.1"\n'
                f"  port: {self.port}\n"
                "  no_tls: true\n"
                "}\n")

    def argv(self) -> list[str]:
        self.config_path.write_text(self.config())
        return ["nats-server", "-c", str(self.config_path)]


#: the peers by name (``fanout.py --servers``)
PEERS: dict[str, type[Peer]] = {p.name: p for p in (PicowsPeer, WebsocketsPeer, NodeWsPeer, NatsPeer)}


def _command_version(argv: list[str]) -> str:
    """First line of ``argv``'s output (e.g. ``node --version``), or "not installed"."""
    if shutil.which(argv[0]) is None:
        return "not installed"
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    out = (r.stdout or r.stderr).strip().splitlines()
    return out[0] if out else "unknown"


def _version(mod: str) -> str:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return "not installed"


def machine_description() -> dict[str, Any]:
    """CPU model, cores, kernel, Python, library versions and relay's core implementation."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        sys.path.insert(0, str(ROOT))
        os.environ.pop("RELAY_PUREPYTHON", None)
        from relay import __version__ as relay_version
        from relay import core as relay_core

        core_impl = relay_core.IMPLEMENTATION
    except Exception as e:  # pragma: no cover - reported, not fatal
        relay_version, core_impl = "unknown", f"import failed: {e}"
    return {
        "cpu_model": model, "cpus": os.cpu_count(), "kernel": platform.release(),
        "python": platform.python_version(), "picows": _version("picows"), "uvloop": _version("uvloop"),
        "orjson": _version("orjson"), "websockets": _version("websockets"),
        "node": _command_version(["node", "--version"]), "node_ws": _node_ws_installed() or "not installed",
        "nats_server": _command_version(["nats-server", "--version"]),
        "relay": relay_version, "relay_core": core_impl,
        "server_cpu": SERVER_CPU, "generator_cpu": GENERATOR_CPU,
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
    }


def write_result(kind: str, data: dict[str, Any]) -> Path:
    """Write ``data`` to bench/results/<kind>-<timestamp>.json and return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def save_result(kind: str, data: dict[str, Any]) -> Path:
    """``write_result``, then the last line a benchmark prints: where the result went."""
    path = write_result(kind, data)
    print(f"results: {path}")
    return path


def fmt_rate(x: float) -> str:
    """12345678 -> '12.35M', 45678 -> '45.7k'."""
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"

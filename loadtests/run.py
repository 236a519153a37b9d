#!/usr/bin/env python3
"""Run one load-test scenario headless and check its thresholds (``make loadtest``).

    python loadtests/run.py SCENARIO [-u SHOPPERS] [-t DURATION] [options] [-- extra Locust options]

Unless ``--url`` is given, starts relay with ``loadtests/relay.loadtest.toml`` on free ports (and,
for the reconnect storm, a throw-away redis-server as its broker), runs Locust headless on
``loadtests/scenarios/SCENARIO.py`` (``--processes N`` for one master and N workers), writes Locust's
CSV and HTML reports plus a summary into ``--out``, restarts relay mid-test for the reconnect storm,
samples relay's memory and server-side latency for the drift report, then checks the scenario's
thresholds (``loadtests/thresholds.py``) and exits 1 naming each one missed.
``--check-only`` checks the reports already in ``--out`` again (e.g. with other ``--threshold``s).

This process never imports Locust (nor asyncio): Locust runs as a child process.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loadtests import thresholds  # noqa: E402
from loadtests.params import SCENARIOS, SMOKE, parse_duration, ramp_seconds  # noqa: E402

CONFIG = ROOT / "loadtests" / "relay.loadtest.toml"


def log(msg: str) -> None:
    print(f"[loadtest] {msg}", flush=True)


# --- relay (and Redis) owned by the runner -----------------------------------------------------------


class OwnedRelay:
    """relay started from the load-test config; restartable on the same ports."""

    def __init__(self, config: dict, broker: str) -> None:
        from relay.testing import RedisProcess, free_port

        self.redis = None
        cfg = dict(config)
        for key in ("ws_port", "tcp_port", "api_port"):
            cfg[key] = free_port()
        if broker == "redis":
            self.redis = RedisProcess().start()
            cfg["broker"] = "redis"
            cfg["redis_urls"] = [self.redis.url]
        else:
            cfg["broker"] = "memory"
        self.config = cfg
        self.logs: list[str] = []
        self.proc = self._start()

    def _start(self):
        from relay.testing import RelayProcess

        return RelayProcess(self.config, name="relay").start(timeout=60)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.alive()

    def restart(self) -> dict:
        """SIGTERM (relay drains its clients with 3001 over drain_window), then start on the same ports."""
        t0 = time.monotonic()
        self.proc.stop()
        exited = time.monotonic() - t0
        self.logs.append(self.proc.log())
        self.proc.cleanup()
        self.proc = self._start()
        return {"drain_and_exit_s": round(exited, 3), "down_s": round(time.monotonic() - t0, 3)}

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.logs.append(self.proc.log())
            self.proc.cleanup()
            self.proc = None
        if self.redis is not None:
            self.redis.cleanup()
            self.redis = None


# --- sampling relay for the drift report -----------------------------------------------------------


def rss_kb(pid: int) -> int | None:
    """VmRSS of ``pid`` and its children (relay --workers), kB."""
    pids = [pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            if p == pid:
                return None
    return total


def scrape(url: str) -> dict:
    """relay_connections and the fan-out latency histogram from /metrics."""
    from relay.testing import Samples

    with urllib.request.urlopen(url, timeout=5) as r:
        s = Samples(r.read().decode())
    buckets = {}
    for (name, labels), v in s.values.items():
        if name == "relay_fanout_latency_seconds_bucket":
            le = dict(labels).get("le", "+Inf")
            buckets[float("inf") if le == "+Inf" else float(le)] = v
    return {"connections": s.total("relay_connections"), "fanout_buckets": buckets}


def bucket_quantile(prev: dict, cur: dict, q: float) -> float | None:
    """The ``q`` quantile (ms, bucket upper bound) of the observations between two scrapes."""
    les = sorted(cur)
    if not les:
        return None
    total = cur[les[-1]] - prev.get(les[-1], 0.0)
    if total <= 0:
        return None
    for le in les:
        if cur[le] - prev.get(le, 0.0) >= q * total:
            return le * 1000.0 if le != float("inf") else None
    return None


class Sampler(threading.Thread):
    """Every ``interval`` s: relay's RSS, connections and p99 fan-out latency, into a CSV."""

    def __init__(self, interval: float, pid, metrics_url: str | None, path: Path) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.pid = pid  # a callable: the current relay pid (or None)
        self.metrics_url = metrics_url
        self.path = path
        self.rows: list[dict] = []
        self.halt = threading.Event()
        self._prev: dict = {}

    def run(self) -> None:
        t0 = time.time()
        while not self.halt.wait(self.interval):
            row: dict = {"t": round(time.time() - t0, 2), "rss_kb": None, "connections": None, "fanout_p99_ms": None}
            pid = self.pid()
            if pid:
                row["rss_kb"] = rss_kb(pid)
            if self.metrics_url:
                try:
                    m = scrape(self.metrics_url)
                except OSError:
                    m = None
                if m is not None:
                    row["connections"] = m["connections"]
                    cur = m["fanout_buckets"]
                    if self._prev and all(cur.get(k, 0) >= v for k, v in self._prev.items()):
                        p = bucket_quantile(self._prev, cur, 0.99)
                        row["fanout_p99_ms"] = None if p is None else round(p, 3)
                    self._prev = cur
            row["time"] = time.time()
            self.rows.append(row)
        self.write()

    def write(self) -> None:
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["t", "time", "rss_kb", "connections", "fanout_p99_ms"])
            w.writeheader()
            w.writerows(self.rows)


def read_samples(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as f:
        return [{k: (float(v) if v not in ("", "None") else None) for k, v in row.items()} for row in csv.DictReader(f)]


def deliver_p99_series(history_csv: Path) -> list[tuple[float, float]]:
    """(unix time, p99 ms of the last 10 s) from Locust's full stats history: the worst DELIVER name."""
    if not history_csv.exists():
        return []
    by_t: dict[float, float] = {}
    with open(history_csv) as f:
        for row in csv.DictReader(f):
            if row.get("Type") != "DELIVER" or row.get("Name") == "lost":
                continue
            try:
                v = float(row["99%"])
                t = float(row["Timestamp"])
            except (KeyError, ValueError):
                continue
            by_t[t] = max(by_t.get(t, 0.0), v)
    return sorted(by_t.items())


def steady_start(history_csv: Path) -> float | None:
    """When the user count first reached its maximum (the end of the ramp), from Locust's history."""
    if not history_csv.exists():
        return None
    best, at = 0.0, None
    with open(history_csv) as f:
        for row in csv.DictReader(f):
            try:
                n, t = float(row.get("User Count") or 0), float(row["Timestamp"])
            except (KeyError, ValueError):
                continue
            if n > best:
                best, at = n, t
    return at


def drift(samples: list[dict], p99: list[tuple[float, float]], steady_from: float) -> dict:
    """Start vs end of the steady part (after the ramp): memory growth and p99 delivery change."""
    out: dict = {"rss_growth_pct": None, "rss_start_mb": None, "rss_end_mb": None,
                 "deliver_p99_drift_ms": None, "deliver_p99_start_ms": None, "deliver_p99_end_ms": None,
                 "fanout_p99_start_ms": None, "fanout_p99_end_ms": None}

    def ends(values: list[float]) -> tuple[float, float] | None:
        if len(values) < 2:
            return None
        k = max(1, len(values) // 4)
        return statistics.median(values[:k]), statistics.median(values[-k:])

    steady = [s for s in samples if s.get("time") and s["time"] >= steady_from]
    rss = ends([s["rss_kb"] for s in steady if s.get("rss_kb")])
    if rss:
        out["rss_start_mb"], out["rss_end_mb"] = round(rss[0] / 1024, 1), round(rss[1] / 1024, 1)
        out["rss_growth_pct"] = round((rss[1] - rss[0]) / rss[0] * 100.0, 2)
    fan = ends([s["fanout_p99_ms"] for s in steady if s.get("fanout_p99_ms") is not None])
    if fan:
        out["fanout_p99_start_ms"], out["fanout_p99_end_ms"] = fan
    lat = ends([v for t, v in p99 if t >= steady_from])
    if lat:
        out["deliver_p99_start_ms"], out["deliver_p99_end_ms"] = lat
        out["deliver_p99_drift_ms"] = round(lat[1] - lat[0], 3)
    return out


# --- thresholds ----------------------------------------------------------------------------------------


def metrics_from(summary: dict, extra: dict) -> dict:
    lat = summary.get("latency", {})
    counters = summary.get("counters", {})
    total = summary.get("total", {})

    def p(key: str, q: str) -> float | None:
        return lat[key][q] if key in lat and lat[key].get("count") else None

    m = {
        "error_ratio": round(total["failures"] / total["requests"], 6) if total.get("requests") else None,
        "deliver_p95_ms": p("DELIVER", "p95"),
        "deliver_p99_ms": p("DELIVER", "p99"),
        "connect_p95_ms": p("CONNECT", "p95"),
        "subscribe_p95_ms": p("SUBSCRIBE", "p95"),
        "publish_p95_ms": p("PUBLISH", "p95"),
        "chat_p95_ms": p("CHAT", "p95"),
        "reconnect_p95_ms": p("RECONNECT", "p95"),
        "lost_messages": counters.get("lost_messages", 0),
        "unrecovered": counters.get("unrecovered", 0),
        "reconnect_give_ups": counters.get("reconnect_give_ups", 0),
        "reconnects": counters.get("reconnects", 0),
        "deliveries": counters.get("deliveries", 0),
    }
    m.update({k: extra[k] for k in ("rss_growth_pct", "deliver_p99_drift_ms", "relay_errors") if k in extra})
    return m


def relay_errors(logs: list[str]) -> tuple[int, list[str]]:
    """Error lines in relay's logs (JSON or text format), and the first few messages."""
    lines = [line for text in logs for line in text.splitlines()
             if '"level":"error"' in line or '"level":"critical"' in line or " ERROR " in line]
    firsts = []
    for line in lines[:5]:
        try:
            rec = json.loads(line)
            exc = (rec.get("exc") or "").strip().splitlines()
            firsts.append(f"{rec.get('msg', '')}{': ' + exc[-1] if exc else ''}")
        except ValueError:
            firsts.append(line[:200])
    return len(lines), firsts


def evaluate(scenario: str, out: Path, overrides: dict, run_info: dict) -> int:
    """Check the reports in ``out``; print the verdict; 0 if every threshold holds."""
    prefix = out / scenario
    summary_path = Path(f"{prefix}_summary.json")
    problems = list(run_info.get("problems", []))
    if not summary_path.exists():
        problems.append(f"no summary at {summary_path} (Locust did not finish)")
        summary: dict = {}
    else:
        summary = json.loads(summary_path.read_text())
    extra = run_info.get("drift")
    if extra is None:  # --check-only: the runner's result if there is one, else from the samples
        info_path = Path(f"{prefix}_result.json")
        if info_path.exists():
            extra = json.loads(info_path.read_text()).get("drift", {})
        else:
            history = Path(f"{prefix}_stats_history.csv")
            extra = drift(read_samples(Path(f"{prefix}_samples.csv")), deliver_p99_series(history),
                          steady_start(history) or 0.0)
    metrics = metrics_from(summary, extra) if summary else {}
    results = thresholds.check(scenario, metrics, overrides)

    print()
    print(f"=== relay load test: {scenario} ===")
    by_type = summary.get("by_type", {})
    lat = summary.get("latency", {})
    print(f"{'type':<11}{'requests':>10}{'failures':>10}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'max ms':>11}")
    for t in sorted(by_type):
        h = lat.get(t, {})
        print(f"{t:<11}{by_type[t]['requests']:>10}{by_type[t]['failures']:>10}{h.get('p50', 0):>10.2f}"
              f"{h.get('p95', 0):>10.2f}{h.get('p99', 0):>10.2f}{h.get('max', 0):>11.2f}")
    counters = summary.get("counters", {})
    keys = ("deliveries", "recovered", "lost_messages", "unrecovered", "duplicates", "reconnects",
            "reconnect_attempts", "reconnect_give_ups", "churn")
    print("counters: " + ", ".join(f"{k}={counters[k]}" for k in keys if k in counters))
    disc = {k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith("disconnects:")}
    if disc:
        print("disconnects: " + ", ".join(f"{k} x{v}" for k, v in sorted(disc.items())))
    if summary.get("failures"):
        print("failures:")
        for f in sorted(summary["failures"], key=lambda f: -f["occurrences"])[:15]:
            print(f"  {f['type']} {f['name']}: {f['occurrences']}x {f['error']}")
    for r in run_info.get("restarts", []):
        print(f"restart at {r['at_s']} s: drained and exited in {r['drain_and_exit_s']} s, down {r['down_s']} s")
    shown = {k: v for k, v in (extra or {}).items() if v is not None and k != "relay_errors"}
    if shown:
        print("drift: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    if (extra or {}).get("relay_errors"):
        print(f"relay: {extra['relay_errors']} error line(s) in its log ({prefix}_relay.log)")
    print("thresholds (loadtests/thresholds.py):")
    for r in results:
        print("  " + r.line())
    for p in problems:
        print(f"  MISSED {p}")
    missed = [r.metric for r in results if not r.passed] + [p.split(":")[0] for p in problems]
    print(f"reports: {prefix}.html, {prefix}_stats.csv, {prefix}_summary.json, {prefix}_result.json")
    if missed:
        print(f"FAILED: missed {', '.join(missed)}")
    else:
        print("PASSED")
    result = {"scenario": scenario, "metrics": metrics, "drift": extra,
              "thresholds": [{"metric": r.metric, "value": r.value, "limit": r.limit, "kind": r.kind,
                              "passed": r.passed} for r in results],
              "problems": problems, "restarts": run_info.get("restarts", []), "passed": not missed}
    if run_info.get("write", True):
        Path(f"{prefix}_result.json").write_text(json.dumps(result, indent=1))
    return 1 if missed else 0


# --- the run ---------------------------------------------------------------------------------------


def wait_first_user(history_csv: Path, proc: subprocess.Popen, timeout: float) -> float | None:
    """The unix time Locust's stats history first shows a user (the shape started), or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with open(history_csv) as f:
                for row in csv.DictReader(f):
                    if float(row.get("User Count") or 0) > 0:
                        return time.time()
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("-u", "--users", type=int, help="shoppers (agents, bots and backends come on top)")
    ap.add_argument("-t", "--duration", help="test length: 90, 90s, 10m, 1h")
    ap.add_argument("--out", type=Path, help="report directory (default loadtests/reports/SCENARIO)")
    ap.add_argument("--url", help="test this relay instead of starting one: its WebSocket URL "
                                  "(secret and API key from LOADTEST_SECRET / LOADTEST_API_KEY)")
    ap.add_argument("--tcp", help="with --url: relay's raw TCP host:port (default: the URL's host, port 8001)")
    ap.add_argument("--api", help="with --url: relay's API base URL (default: http://<host>:8002)")
    ap.add_argument("--relay-pid", type=int, help="with --url: relay's pid on this machine, for its memory")
    ap.add_argument("--restart-cmd", help="with --url: shell command that restarts relay (reconnect storm)")
    ap.add_argument("--broker", choices=("memory", "redis"), help="broker of the relay started here "
                                                                  "(default: redis for the storm, else memory)")
    ap.add_argument("--relay-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of relay.loadtest.toml (TOML value), e.g. drain_window=5")
    ap.add_argument("--restart-at", type=float, action="append",
                    help="storm: seconds after the first user to restart relay (repeat for several)")
    ap.add_argument("--processes", type=int, default=0,
                    help="Locust worker processes (-1: one per core); 0: a single process")
    ap.add_argument("--sample-interval", type=float, help="seconds between relay samples (default 5)")
    ap.add_argument("--threshold", action="append", default=[], metavar="NAME=VALUE",
                    help="override a threshold for this run (loadtests/thresholds.py)")
    ap.add_argument("--smoke", action="store_true", help="a few seconds, a few dozen users, fast intervals")
    ap.add_argument("--check-only", action="store_true", help="only check the reports already in --out")
    args, locust_extra = ap.parse_known_args(argv)
    if locust_extra and locust_extra[0] == "--":
        locust_extra = locust_extra[1:]

    scenario = args.scenario
    meta = SCENARIOS[scenario]
    smoke = SMOKE[scenario] if args.smoke else {}
    out = (args.out or ROOT / "loadtests" / "reports" / scenario).resolve()
    try:
        overrides = thresholds.parse_overrides(args.threshold)
    except ValueError as e:
        ap.error(str(e))
    if args.check_only:
        return evaluate(scenario, out, overrides, {"write": False})

    users = args.users or smoke.get("users") or meta["users"]
    duration = parse_duration(args.duration or smoke.get("duration") or meta["duration"])
    locust_params = dict(smoke.get("locust", {}))
    ramp = ramp_seconds(scenario, duration, locust_params.get("ramp", 0.0))
    for i, item in enumerate(locust_extra):  # a --ramp given to Locust wins
        if item == "--ramp" and i + 1 < len(locust_extra):
            ramp = float(locust_extra[i + 1])
    sample_interval = args.sample_interval or smoke.get("sample_interval") or 5.0
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / scenario
    for old in out.glob(f"{scenario}*"):
        if old.is_file():
            old.unlink()

    relay: OwnedRelay | None = None
    n_errors: int | None = None  # error lines in the log of the relay we ran
    env = dict(os.environ)
    problems: list[str] = []
    restarts: list[dict] = []
    if args.url:
        if scenario == "reconnect_storm" and not args.restart_cmd:
            ap.error("the reconnect storm restarts relay: give --restart-cmd with --url")
        from urllib.parse import urlsplit

        host = urlsplit(args.url).hostname or "127.0.0.1"
        ws_url, tcp, api = args.url, args.tcp or f"{host}:8001", args.api or f"http://{host}:8002"
        if not env.get("LOADTEST_SECRET") or not env.get("LOADTEST_API_KEY"):
            ap.error("with --url, set LOADTEST_SECRET (token_hmac_secret) and LOADTEST_API_KEY")

        def pid_of() -> int | None:
            return args.relay_pid
    else:
        config = tomllib.loads(CONFIG.read_text())
        for item in list(smoke.get("relay", {}).items()) + [tuple(s.split("=", 1)) for s in args.relay_set]:
            key, value = item
            config[key] = tomllib.loads(f"v = {value}")["v"] if isinstance(value, str) else value
        broker = args.broker or meta["broker"]
        log(f"starting relay ({broker} broker) from {CONFIG.relative_to(ROOT)}")
        relay = OwnedRelay(config, broker)
        c = relay.config
        ws_url, tcp, api = (f"ws://127.0.0.1:{c['ws_port']}/connection/websocket", f"127.0.0.1:{c['tcp_port']}",
                            f"http://127.0.0.1:{c['api_port']}")
        env["LOADTEST_SECRET"] = c["token_hmac_secret"]
        env["LOADTEST_API_KEY"] = c["api_key"]

        def pid_of() -> int | None:
            return relay.pid if relay and relay.proc and relay.alive() else None
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    metrics_url = api.rstrip("/").removesuffix("/api") + "/metrics"

    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "scenarios" / f"{scenario}.py"),
           "--headless", "-u", str(users), "-t", f"{int(duration)}s", "--csv", str(prefix), "--csv-full-history",
           "--html", f"{prefix}.html", "--exit-code-on-error", "0", "--only-summary",
           "--relay-ws", ws_url, "--relay-tcp", tcp, "--relay-api", api,
           "--summary-file", f"{prefix}_summary.json", "--scenario-name", scenario]
    if args.processes:
        cmd += ["--processes", str(args.processes)]
    for key, value in locust_params.items():
        cmd += ["--" + key.replace("_", "-"), str(value)]
    cmd += locust_extra
    log(f"{scenario}: {users} shoppers for {duration:g} s (ramp {ramp:g} s) against {ws_url}")
    log("locust: " + shlex.join(cmd[2:]))

    sampler = Sampler(sample_interval, pid_of, metrics_url, Path(f"{prefix}_samples.csv"))
    sampler.start()
    started = time.time()
    first_user = None
    proc = subprocess.Popen(cmd, env=env, cwd=str(ROOT))
    try:
        first_user = wait_first_user(Path(f"{prefix}_stats_history.csv"), proc, 60)
        if scenario == "reconnect_storm":
            at = args.restart_at or ([smoke["restart_at"]] if smoke.get("restart_at")
                                     else [ramp + (duration - ramp) * 0.35])
            base = first_user or started
            for when in sorted(at):
                delay = base + when - time.time()
                if delay > 0:
                    try:
                        proc.wait(delay)
                        break  # Locust ended before the restart
                    except subprocess.TimeoutExpired:
                        pass
                log(f"restarting relay at {time.time() - base:.1f} s")
                t0 = time.time()
                if relay is not None:
                    info = relay.restart()
                else:
                    subprocess.run(args.restart_cmd, shell=True, check=False)
                    info = {"drain_and_exit_s": None, "down_s": round(time.time() - t0, 3)}
                info["at_s"] = round(t0 - base, 2)
                restarts.append(info)
                log(f"relay back after {info['down_s']} s")
            if len(restarts) < len(at):
                problems.append(f"restart: only {len(restarts)} of {len(at)} restart(s) happened before the end")
        try:
            code = proc.wait(duration + 120)
        except subprocess.TimeoutExpired:
            problems.append("locust: did not finish within the duration + 120 s")
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        raise
    finally:
        sampler.halt.set()
        sampler.join(10)
        if relay is not None:
            if not relay.alive():
                problems.append(f"relay: exited during the test (log in {prefix}_relay.log)")
            relay.stop()
            Path(f"{prefix}_relay.log").write_text("\n".join(relay.logs))
            n_errors, firsts = relay_errors(relay.logs)
            for line in firsts:
                log(f"relay logged an error: {line}")
    if code != 0:
        problems.append(f"locust: exited with code {code}")

    steady_from = steady_start(Path(f"{prefix}_stats_history.csv")) or (first_user or started) + ramp
    d = drift(read_samples(Path(f"{prefix}_samples.csv")),
              deliver_p99_series(Path(f"{prefix}_stats_history.csv")), steady_from)
    d["relay_errors"] = n_errors
    return evaluate(scenario, out, overrides, {"problems": problems, "restarts": restarts, "drift": d})


if __name__ == "__main__":
    sys.exit(main())

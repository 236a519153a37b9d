"""``relay serve | token | info | check-config | bench | outbox init``."""

from __future__ import annotations

import argparse
import json
import platform
import sys

from relay import __version__

__all__ = ["main"]


def _load(args) -> "Config":  # noqa: F821
    from relay.config import load

    overrides = {}
    for name in ("host", "ws_port", "tcp_port", "api_port", "log_level", "token_hmac_secret", "api_key", "workers"):
        v = getattr(args, name, None)
        if v is not None:
            overrides[name] = v
    return load(args.config, overrides=overrides)


def _workers(value: str) -> int:
    if value == "auto":
        return 0
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("a number of workers or 'auto'") from None
    if n < 1:
        raise argparse.ArgumentTypeError("at least 1 worker (or 'auto')")
    return n


def cmd_serve(args) -> int:
    from relay.app import run
    from relay.auth import make_connect_token
    from relay import core

    cfg = _load(args)
    from relay.ops import logs

    logs.setup(cfg)

    def started(app) -> None:
        if not args.print_token:
            return
        workers_note = f" ({cfg.worker_count()} workers)" if cfg.worker_count() > 1 else ""
        token = make_connect_token(args.print_token, cfg.token_hmac_secret, ttl=24 * 3600)
        demo = (f"Shop demo: customer  http://{cfg.host}:{cfg.api_port}/demo/shop   (open it in several tabs)\n"
                f"           agent     http://{cfg.host}:{cfg.api_port}/demo/agent\n"
                f"           pushes    make demo-push [CUSTOMER=c-...]   (order status / sale, via /api/publish)\n"
                if cfg.demo else "")
        print(f"""
relay {__version__}{workers_note} is running (core: {core.IMPLEMENTATION}, broker: {cfg.broker})
  WebSocket  ws://{cfg.host}:{cfg.ws_port}{cfg.ws_path}   (Centrifugo JSON protocol; any Centrifugo SDK)
  raw TCP    {cfg.host}:{cfg.tcp_port}                     (4-byte length + msgpack, see docs/protocol.md)
  HTTP API   http://{cfg.host}:{cfg.api_port}/api/<method>   (X-API-Key: {cfg.api_key or '<unset>'})
  health     http://{cfg.host}:{cfg.api_port}/healthz, /readyz

Test token for user '{args.print_token}' (valid 24 h):
  {token}

{demo}Admin:   http://{cfg.host}:{cfg.api_port}/admin   (log in with the API key)
Publish: curl -s -H 'X-API-Key: {cfg.api_key}' -d '{{"channel":"sale:flash","data":{{"text":"hi"}}}}' \\
           http://{cfg.host}:{cfg.api_port}/api/publish
""", flush=True)

    if cfg.worker_count() > 1:
        from relay.ops.supervisor import supervise

        started(None)
        return supervise(cfg)
    run(cfg, started)
    return 0


def cmd_token(args) -> int:
    from relay.auth import make_connect_token

    secret = args.secret
    if not secret:
        secret = _load(args).token_hmac_secret
    extra = {"admin": True} if args.admin else {}
    print(make_connect_token(args.user, secret, ttl=args.ttl or None, **extra))
    return 0


def cmd_info(args) -> int:
    from relay import core

    info = {
        "version": __version__,
        "core": core.IMPLEMENTATION,
        "core_forced_pure_python": core.FORCED_PURE,
        "core_import_error": core.IMPORT_ERROR,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for mod in ("uvloop", "msgpack", "orjson", "redis", "aiohttp", "jwt", "prometheus_client"):
        try:
            m = __import__(mod)
            info[mod] = getattr(m, "__version__", "?")
        except ImportError:
            info[mod] = None
    print(json.dumps(info, indent=2))
    if core.IMPORT_ERROR:
        print(f"WARNING: compiled core not loaded: {core.IMPORT_ERROR}", file=sys.stderr)
    return 0


def cmd_check_config(args) -> int:
    from relay.config import ConfigError, load

    try:
        load(args.file, environ={} if args.no_env else None)
    except ConfigError as e:
        print(f"{args.file}: {e}", file=sys.stderr)
        return 1
    print(f"{args.file}: OK")
    return 0


def cmd_outbox_init(args) -> int:
    """Create the outbox table, index and NOTIFY trigger (deploy/outbox.sql) in the configured database."""
    import asyncio

    from relay.config import load
    from relay.integrations.outbox import init_table, notify_channel

    # only the outbox keys matter here: a config without a token secret (not yet complete for serving) will do
    cfg = load(args.config, overrides={"allow_anonymous_connect": True})
    dsn = args.dsn or cfg.outbox_dsn
    if not dsn:
        print("relay outbox init: no database: give --dsn or set outbox_dsn (config file or RELAY_OUTBOX_DSN)",
              file=sys.stderr)
        return 2
    try:
        asyncio.run(init_table(dsn, cfg.outbox_table))
    except Exception as e:
        print(f"relay outbox init: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"outbox table {cfg.outbox_table} ready (NOTIFY channel {notify_channel(cfg.outbox_table)})")
    return 0


#: ``relay bench`` benchmarks, in run order: name -> script in the source checkout's bench/ and its arguments
BENCHMARKS = {"fanout": ("fanout.py",), "idle": ("idle.py",), "latency": ("latency.py",),
              # every server capped at a quarter of a core, so one generator core can saturate them
              "latency-quota": ("latency.py", "--cpu-quota", "0.25", "--start-rate", "30"),
              "chats": ("chats.py",), "connrate": ("connrate.py",), "redis": ("redis_scaling.py",),
              "recovery": ("recovery.py",), "lanes": ("lanes.py",), "backpressure": ("backpressure.py",),
              "pacing": ("pacing.py",)}


def _cpu_quota_unavailable(bench) -> str | None:
    """Why bench/common.py's CpuQuota cannot cap a server here (None: it can)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("relay_bench_common", bench / "common.py")
    try:
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.CpuQuota.unavailable()
    except Exception as e:  # an odd checkout: say so, skip that one benchmark
        return f"bench/common.py: {type(e).__name__}: {e}"


def cmd_bench(args) -> int:
    """Run the benchmark scripts of a source checkout (bench/ beside the relay package), then the report."""
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    bench = root / "bench"
    if not (bench / "common.py").is_file():
        print(f"relay bench: no bench/ directory next to the relay package ({bench}): the benchmarks need a "
              "source checkout of relay (git clone, then `make bench`), they are not part of an installed wheel",
              file=sys.stderr)
        return 2
    available = [name for name, (script, *_) in BENCHMARKS.items() if (bench / script).is_file()]
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BENCHMARKS]
        missing = [n for n in names if n in BENCHMARKS and n not in available]
        if unknown or missing or not names:
            why = (f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}" if unknown
                   else f"{', '.join(missing)} not in this checkout; it has {', '.join(available)}" if missing
                   else f"nothing selected; choose from {', '.join(available)}")
            print(f"relay bench --only: {why}", file=sys.stderr)
            return 2
    else:
        names = available
        for name in ("redis", "recovery"):
            if name in names and shutil.which("redis-server") is None:
                print(f"relay bench: skipping {name} (no redis-server on PATH)", flush=True)
                names.remove(name)
        if "latency-quota" in names:
            why = _cpu_quota_unavailable(bench)
            if why:
                print(f"relay bench: skipping latency-quota ({why})", flush=True)
                names.remove("latency-quota")
    produced: list[str] = []
    failed: list[str] = []
    for name in names:
        script, *extra = BENCHMARKS[name]
        argv = [sys.executable, str(bench / script), *extra] + (["--quick"] if args.quick else [])
        print(f"\n=== relay bench: {name} ({' '.join(argv[1:])}) ===", flush=True)
        with subprocess.Popen(argv, cwd=root, stdout=subprocess.PIPE, text=True, bufsize=1) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                print(line, end="", flush=True)
                if line.startswith("results: "):
                    produced.append(line[len("results: "):].strip())
        if proc.returncode != 0:
            failed.append(f"{name} (exit {proc.returncode})")
    report = None
    if args.report:
        print("\n=== relay bench: report ===", flush=True)
        r = subprocess.run([sys.executable, str(bench / "report.py")], cwd=root)
        report = root / "docs" / "benchmarks.md" if r.returncode == 0 else None
        if r.returncode != 0:
            failed.append(f"report (exit {r.returncode})")
    print("\nrelay bench: done")
    for path in produced:
        print(f"  results: {path}")
    if report is not None:
        print(f"  report:  {report} (plots in {report.with_suffix('')}/)")
    if failed:
        print(f"  FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="relay", description="real-time message relay (Centrifugo protocol)")
    p.add_argument("--version", action="version", version=f"relay {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the relay")
    s.add_argument("--config", "-c", help="TOML config file")
    s.add_argument("--host")
    s.add_argument("--ws-port", type=int)
    s.add_argument("--tcp-port", type=int)
    s.add_argument("--api-port", type=int)
    s.add_argument("--log-level")
    s.add_argument("--workers", type=_workers, help="worker processes sharing the ports, or 'auto' (one per core)")
    s.add_argument("--print-token", metavar="USER", help="print connection help and a test token for USER")
    s.set_defaults(func=cmd_serve)

    t = sub.add_parser("token", help="sign an HS256 connect token")
    t.add_argument("--user", required=True)
    t.add_argument("--ttl", type=int, default=3600, help="seconds until expiry (0: never)")
    t.add_argument("--admin", action="store_true",
                   help="an admin token: opens the /admin page (read-only figures, test publishes)")
    t.add_argument("--secret", help="HMAC secret (default: token_hmac_secret from config/env)")
    t.add_argument("--config", "-c")
    t.set_defaults(func=cmd_token)

    i = sub.add_parser("info", help="version, active core, libraries")
    i.set_defaults(func=cmd_info)

    from relay.ops import capacity

    capacity.add_parser(sub)

    c = sub.add_parser("check-config", help="validate a TOML config file (with the RELAY_* environment, as "
                                             "relay serve would read it)")
    c.add_argument("file")
    c.add_argument("--no-env", action="store_true", help="check the file alone, ignoring RELAY_* variables")
    c.set_defaults(func=cmd_check_config)

    b = sub.add_parser("bench", help="run the benchmark suite (source checkout only) and write docs/benchmarks.md")
    b.add_argument("--quick", action="store_true", help="short smoke runs (each script's --quick)")
    b.add_argument("--only", metavar="NAMES", help="comma-separated subset of: " + ",".join(BENCHMARKS)
                   + " (default: every one this checkout has)")
    b.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                   help="write the report (bench/report.py) at the end (default: on)")
    b.set_defaults(func=cmd_bench)

    o = sub.add_parser("outbox", help="the PostgreSQL outbox (docs/outbox.md)")
    osub = o.add_subparsers(dest="outbox_command", required=True)
    oi = osub.add_parser("init", help="create the outbox table, its index and NOTIFY trigger (deploy/outbox.sql); "
                                      "running it again is harmless")
    oi.add_argument("--config", "-c", help="TOML config file (outbox_dsn, outbox_table)")
    oi.add_argument("--dsn", help="PostgreSQL DSN (default: outbox_dsn from config/env)")
    oi.set_defaults(func=cmd_outbox_init)
    return p


def main(argv: list[str] | None = None) -> int:
    from relay.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

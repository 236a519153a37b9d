"""The CLI as a user runs it: real subprocesses."""

import json
import subprocess
import sys

import jwt

from tests.relayproc import ROOT


def relay(*args, env=None):
    import os

    e = dict(os.environ, PYTHONPATH=str(ROOT))
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "relay", *args], capture_output=True, text=True, env=e,
                          cwd=str(ROOT), timeout=30)


def test_token_is_a_valid_hs256_jwt():
    r = relay("token", "--user", "alice", "--ttl", "60", "--secret", "s" * 32)
    assert r.returncode == 0, r.stderr
    claims = jwt.decode(r.stdout.strip(), "s" * 32, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 60
    r = relay("token", "--user", "bob", env={"RELAY_TOKEN_HMAC_SECRET": "e" * 32})
    assert jwt.decode(r.stdout.strip(), "e" * 32, algorithms=["HS256"])["sub"] == "bob"


def test_info_reports_the_active_core():
    r = relay("info")
    info = json.loads(r.stdout)
    assert info["core"] in ("cython", "python") and info["version"]
    forced = json.loads(relay("info", env={"RELAY_PUREPYTHON": "1"}).stdout)
    assert forced["core"] == "python" and forced["core_forced_pure_python"] is True


def test_check_config(tmp_path):
    assert relay("check-config", str(ROOT / "deploy/relay.dev.toml")).returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('ws_port = 70000\nmystery = true\n')
    r = relay("check-config", str(bad))
    assert r.returncode == 1
    assert "ws_port: 70000 is not a port" in r.stderr or "mystery: unknown key" in r.stderr
    assert "mystery: unknown key" in r.stderr


def test_serve_with_bad_config_exits_with_message(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('ws_port = "x"\n')
    r = relay("serve", "-c", str(bad))
    assert r.returncode == 2 and "ws_port: expected an integer" in r.stderr


def test_broken_compiled_core_is_reported_loudly():
    """A compiled core that cannot be imported is never a silent fallback."""
    import os

    code = ("import sys; sys.modules['relay.core._core'] = None\n"  # makes `import relay.core._core` fail
            "from relay.cli import main; sys.exit(main(['info']))")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("RELAY_PUREPYTHON", None)  # the compiled core must be attempted
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT), timeout=30,
                       env=env)
    assert r.returncode == 0
    info = json.loads(r.stdout)
    assert info["core"] == "python" and "relay.core._core" in info["core_import_error"]
    assert "compiled core relay.core._core failed to import" in r.stderr  # the ERROR log line
    assert "WARNING: compiled core not loaded" in r.stderr


def test_workers_flag_parses_auto_and_counts():
    import os

    from relay.cli import build_parser
    from relay.config import load

    args = build_parser().parse_args(["serve", "--workers", "auto"])
    assert args.workers == 0
    cfg = load(environ={"RELAY_TOKEN_HMAC_SECRET": "s", "RELAY_BROKER": "redis"}, overrides={"workers": 0})
    assert cfg.worker_count() == (os.cpu_count() or 1)
    import pytest

    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--workers", "0"])  # say 'auto', not 0

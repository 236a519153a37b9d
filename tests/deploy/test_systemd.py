"""deploy/systemd/relay.service (issue 5): relay's own CLI, the environment file, drain timing, hardening.
"""

from __future__ import annotations

import configparser
import shlex

from tests.deploy.deployfiles import DEPLOY, prod_config, seconds, serve_args_ok


def test_systemd_unit():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read(DEPLOY / "systemd" / "relay.service")
    svc = unit["Service"]
    argv = shlex.split(svc["ExecStart"])
    assert argv[0] == "/opt/relay/venv/bin/relay"
    serve_args_ok(argv[1:])
    assert svc["User"] == "relay"
    assert svc["EnvironmentFile"].lstrip("-") == "/etc/relay/relay.env"
    assert svc["KillSignal"] == "SIGTERM"
    assert svc["Restart"] == "on-failure"
    assert svc["LimitNOFILE"] == "1048576"
    assert seconds(svc["TimeoutStopSec"]) >= prod_config().drain_window + 5
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert svc[key] == "yes", key
    assert svc["ProtectSystem"] == "strict"
    assert unit["Install"]["WantedBy"] == "multi-user.target"

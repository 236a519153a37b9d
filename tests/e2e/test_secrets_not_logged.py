"""Tokens and API keys never reach relay's log, whatever clients send."""

import json
import urllib.error
import urllib.request

from tests.rawclients import RawWS, ws_connected


async def test_no_secrets_in_logs(relay_factory):
    r = relay_factory({"log_level": "DEBUG"})
    good = r.token("alice")
    ws = await ws_connected(r.ws_port, good)
    ws.close()
    bad = good[:-4] + "AAAA"
    ws = await RawWS.open(r.ws_port)
    await ws.send_cmds({"id": 1, "connect": {"token": bad}})
    await ws.expect_close()
    for key in (r.api_key, "guessed-key-123"):
        req = urllib.request.Request(f"{r.api_url}/info", method="POST", data=b"{}", headers={"X-API-Key": key})
        try:
            urllib.request.urlopen(req).read()
        except urllib.error.HTTPError:
            pass
    req = urllib.request.Request(f"{r.api_url}/publish", method="POST",
                                 data=json.dumps({"channel": "chat:x", "data": 1}).encode(),
                                 headers={"Authorization": f"apikey {r.api_key}"})
    urllib.request.urlopen(req).read()
    log = r.log()
    assert "relay started" in log
    for secret in (good, bad, r.api_key, "guessed-key-123", r.config["token_hmac_secret"]):
        assert secret not in log

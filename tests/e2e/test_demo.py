"""Demo mode's backend (relay/demo): off by default; when on, the token, subscription-token and
agent endpoints behave as the shop pages expect and refuse what they must. The pages themselves
are driven in a real browser by tests/browser."""

import json
import tomllib
import urllib.error
import urllib.request

import pytest

from relay.testing import ROOT
from tests.rawclients import ws_connected

DEV_TOML = ROOT / "deploy" / "relay.dev.toml"


def demo_config() -> dict:
    """deploy/relay.dev.toml (what `make run` serves) without its fixed ports and host."""
    cfg = tomllib.loads(DEV_TOML.read_text())
    for key in ("ws_port", "tcp_port", "api_port", "allowed_origins", "host"):
        cfg.pop(key, None)
    return cfg


def call(relay, path, body=None, headers=None, method=None):
    """(status, decoded JSON or text) of a request to the relay's API port."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{relay.api_port}{path}", data=data, headers=headers or {},
                                 method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


@pytest.fixture
def demo(relay_factory):
    return relay_factory(demo_config())


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_demo_off_by_default(relay):
    for path in ("/demo", "/demo/shop", "/demo/agent"):
        assert call(relay, path)[0] == 404
    assert call(relay, "/demo/api/token", {"role": "customer"})[0] == 404


def test_demo_needs_its_namespaces(tmp_path):
    from relay.config import ConfigError, load

    path = tmp_path / "relay.toml"
    path.write_text('demo = true\ntoken_hmac_secret = "0123456789abcdef0123456789abcdef"\n')
    with pytest.raises(ConfigError) as e:
        load(str(path), environ={})
    assert "demo: the shop demo needs the namespaces support, typing, orders, sale, agents" in str(e.value)


def test_dev_config_is_valid():
    from relay.config import load

    cfg = load(str(DEV_TOML), environ={})
    assert cfg.demo and cfg.admin


async def test_customer_token_connects_and_subscribes_its_channels(demo):
    status, t = call(demo, "/demo/api/token", {"role": "customer", "name": "Ada Lovelace"})
    assert status == 200 and t["role"] == "customer" and t["name"] == "Ada Lovelace"
    user = t["user"]
    assert user.startswith("c-ada-lovelace-")
    assert t["channels"]["chat"] == f"support:{user}#{user}"
    assert t["ws_url"] == f"ws://127.0.0.1:{demo.ws_port}/connection/websocket"
    ws = await ws_connected(demo.ws_port, t["token"])
    for name in ("chat", "typing", "orders", "sale"):
        assert "subscribe" in await ws.call("subscribe", {"channel": t["channels"][name]}), name
    # customers see how many agents are online without subscribing to agents:online
    assert (await ws.call("presence_stats", {"channel": "agents:online"}))["presence_stats"]["num_users"] == 0
    # ... but may not subscribe to it, nor to another customer's chat
    assert (await ws.call("subscribe", {"channel": "agents:online"}))["error"]["code"] == 103
    assert (await ws.call("subscribe", {"channel": "support:c-bob-1#c-bob-1"}))["error"]["code"] == 103
    ws.close()


def test_same_user_back_keeps_identity_and_a_forged_id_does_not(demo):
    _, first = call(demo, "/demo/api/token", {"role": "customer", "name": "Ada"})
    _, again = call(demo, "/demo/api/token", {"role": "customer", "name": "Ada", "user": first["user"]})
    assert again["user"] == first["user"]
    # a customer cannot ask to be an agent by passing an agent id, nor inject a channel-breaking id
    _, forged = call(demo, "/demo/api/token", {"role": "customer", "user": "a-anna"})
    assert forged["user"].startswith("c-")
    _, odd = call(demo, "/demo/api/token", {"role": "customer", "user": "c-x#evil"})
    assert "#" not in odd["user"]
    status, err = call(demo, "/demo/api/token", {"role": "admin"})
    assert status == 400 and "role" in err["error"]
    status, err = call(demo, "/demo/api/token", body=None, headers={"Content-Type": "application/json"}, method="POST")
    assert status == 200  # an empty body is a guest customer


async def test_agent_gets_subscription_tokens_customers_do_not(demo):
    _, cust = call(demo, "/demo/api/token", {"role": "customer", "name": "Ada"})
    _, agent = call(demo, "/demo/api/token", {"role": "agent", "name": "Anna"})
    assert agent["user"] == "a-anna" and agent["channels"]["inbox"] == "agents:inbox"
    chat = cust["channels"]["chat"]
    status, sub = call(demo, "/demo/api/subscription-token", {"channel": chat}, bearer(agent["token"]))
    assert status == 200
    ws = await ws_connected(demo.ws_port, agent["token"])
    assert (await ws.call("subscribe", {"channel": chat}))["error"]["code"] == 103  # not without the token
    assert "subscribe" in await ws.call("subscribe", {"channel": chat, "token": sub["token"]})
    ws.close()
    # customers, strangers and odd channels get nothing
    assert call(demo, "/demo/api/subscription-token", {"channel": chat}, bearer(cust["token"]))[0] == 403
    assert call(demo, "/demo/api/subscription-token", {"channel": chat})[0] == 401
    assert call(demo, "/demo/api/subscription-token", {"channel": chat}, bearer("not.a.jwt"))[0] == 401
    assert call(demo, "/demo/api/subscription-token", {"channel": "orders:x#x"}, bearer(agent["token"]))[0] == 403


async def test_new_customer_reaches_the_agents_inbox_and_chat_list(demo):
    _, agent = call(demo, "/demo/api/token", {"role": "agent", "name": "Anna"})
    _, sub = call(demo, "/demo/api/subscription-token", {"channel": "agents:inbox"}, bearer(agent["token"]))
    ws = await ws_connected(demo.ws_port, agent["token"])
    assert "subscribe" in await ws.call("subscribe", {"channel": "agents:inbox", "token": sub["token"]})
    _, cust = call(demo, "/demo/api/token", {"role": "customer", "name": "Grace"})
    push = await ws.push()
    data = push["pub"]["data"]
    assert data["type"] == "chat_opened" and data["customer"] == cust["user"] and data["name"] == "Grace"
    status, chats = call(demo, "/demo/api/chats", headers=bearer(agent["token"]))
    assert status == 200 and [c["customer"] for c in chats["chats"]] == [cust["user"]]
    assert call(demo, "/demo/api/chats", headers=bearer(cust["token"]))[0] == 403
    ws.close()


async def test_agent_buttons_push_order_status_and_sale(demo):
    _, cust = call(demo, "/demo/api/token", {"role": "customer", "name": "Ada"})
    _, agent = call(demo, "/demo/api/token", {"role": "agent", "name": "Anna"})
    ws = await ws_connected(demo.ws_port, cust["token"])
    for name in ("orders", "sale"):
        await ws.call("subscribe", {"channel": cust["channels"][name]})
    ok = call(demo, "/demo/api/order-status", {"customer": cust["user"], "order": "NW-7", "status": "shipped"},
              bearer(agent["token"]))
    assert ok == (200, {"ok": True})
    pub = (await ws.push())["pub"]["data"]
    assert pub["order"] == "NW-7" and pub["status"] == "shipped"
    assert call(demo, "/demo/api/sale", {"text": "30% off"}, bearer(agent["token"])) == (200, {"ok": True})
    assert (await ws.push())["pub"]["data"]["text"] == "30% off"
    # bad input is refused with a reason, customers cannot press the agents' buttons
    assert call(demo, "/demo/api/order-status", {"customer": cust["user"], "order": "NW-7", "status": "lost"},
                bearer(agent["token"]))[0] == 400
    assert call(demo, "/demo/api/order-status", {"customer": "x#y", "order": "NW-7", "status": "paid"},
                bearer(agent["token"]))[0] == 400
    assert call(demo, "/demo/api/sale", {"text": ""}, bearer(agent["token"]))[0] == 400
    assert call(demo, "/demo/api/sale", {"text": "hi"}, bearer(cust["token"]))[0] == 403
    ws.close()


def test_demo_push_uses_the_server_api(demo, tmp_path, capsys):
    from relay.demo import push

    cfg = tmp_path / "relay.toml"
    cfg.write_text(f'api_port = {demo.api_port}\napi_key = "{demo.api_key}"\n'
                   f'token_hmac_secret = "{demo.config["token_hmac_secret"]}"\n')
    assert push.main(["-c", str(cfg), "--text", "Doors open"]) == 0
    assert "published to sale:flash" in capsys.readouterr().out
    status, hist = call(demo, "/api/history", {"channel": "sale:flash", "limit": 1}, {"X-API-Key": demo.api_key})
    assert hist["result"]["publications"][-1]["data"]["text"] == "Doors open"
    assert push.main(["-c", str(cfg), "--customer", "c-ada-1", "--status", "delivered"]) == 0


def test_pages_say_when_the_bundle_is_missing_or_serve_it(demo):
    from relay.demo import STATIC_DIR

    built = (STATIC_DIR / "shop.js").exists()
    status, body = call(demo, "/demo/shop")
    if built:
        assert status == 200 and "shop.js" in body
        assert call(demo, "/demo/static/shop.js")[0] == 200
    else:
        assert status == 503 and "make build" in body
    assert call(demo, "/demo/static/../__init__.py")[0] == 404
    assert call(demo, "/demo")[0] == (200 if built else 503)  # redirected to /demo/shop
    assert call(demo, "/demo/static/nope.js")[0] == 404

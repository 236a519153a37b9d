"""The admin page's data routes (relay/api/admin.py): who may read them, and that their figures are
the ones /metrics exposes. The page itself is driven in a real browser by tests/browser."""

import json
import urllib.error
import urllib.request

from relay.auth import make_connect_token
from tests.rawclients import ws_connected
from tests.relayproc import API_KEY, SECRET


def get(relay, path, headers=None, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{relay.api_port}{path}", headers=headers or {},
                                 data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def stats(relay, headers=None):
    status, body = get(relay, "/admin/stats", headers or {"X-API-Key": API_KEY})
    assert status == 200, body
    return json.loads(body)


def test_admin_page_is_served_and_holds_no_data(relay):
    status, body = get(relay, "/admin")
    assert status == 200 and "relay admin" in body and "/admin/stats" in body
    assert API_KEY not in body


def test_stats_need_the_api_key_or_an_admin_token(relay):
    assert get(relay, "/admin/stats")[0] == 401
    assert get(relay, "/admin/stats", {"X-API-Key": "wrong"})[0] == 401
    assert get(relay, "/admin/stats", {"Authorization": f"apikey {API_KEY}"})[0] == 200
    admin = make_connect_token("ops", SECRET, ttl=60, admin=True)
    assert get(relay, "/admin/stats", {"Authorization": f"Bearer {admin}"})[0] == 200
    # a user's connect token, an expired or a foreign admin token are not enough
    assert get(relay, "/admin/stats", {"Authorization": f"Bearer {make_connect_token('ops', SECRET)}"})[0] == 401
    expired = make_connect_token("ops", SECRET, ttl=-120, admin=True)
    assert get(relay, "/admin/stats", {"Authorization": f"Bearer {expired}"})[0] == 401
    forged = make_connect_token("ops", "another-secret-0123456789abcdef0123", ttl=60, admin=True)
    assert get(relay, "/admin/stats", {"Authorization": f"Bearer {forged}"})[0] == 401
    assert get(relay, "/admin/publish", body={"channel": "news:x", "data": {}})[0] == 401


async def test_stats_are_the_metrics_figures(relay_factory):
    r = relay_factory()
    token = make_connect_token("alice", SECRET, ttl=60)
    clients = [await ws_connected(r.ws_port, token) for _ in range(3)]
    for ws in clients:
        assert "subscribe" in await ws.call("subscribe", {"channel": "chat:admin-figures"})
    await clients[0].call("publish", {"channel": "chat:admin-figures", "data": {"n": 1}})
    for ws in clients:
        await ws.pub()
    d = stats(r)
    m = r.metrics()
    f = d["figures"]
    assert d["state"] == "ready" and f["ready"] == 1
    assert f["core"] in ("cython", "python") and m["relay_core_info", {"implementation": f["core"]}] == 1
    assert f["connections"] == 3 == m.total("relay_connections")
    assert f["channels"] == m.total("relay_channels") >= 1
    assert f["publications_total"] == m.total("relay_publications_total") >= 1
    assert f["deliveries_total"] == m.total("relay_deliveries_total") >= 3
    assert f["slow_consumer_disconnects_total"] == m.total("relay_slow_consumer_disconnects_total")
    assert d["top_channels"][0] == {"channel": "chat:admin-figures", "subscribers": 3}
    for ws in clients:
        ws.close()


async def test_test_publish_form_reaches_subscribers(relay):
    ws = await ws_connected(relay.ws_port, make_connect_token("bob", SECRET, ttl=60))
    await ws.call("subscribe", {"channel": "news:admin-form"})
    status, body = get(relay, "/admin/publish", {"X-API-Key": API_KEY},
                       {"channel": "news:admin-form", "data": {"text": "from the admin page"}})
    assert status == 200 and "offset" in json.loads(body)["result"]
    assert (await ws.pub())["pub"]["data"] == {"text": "from the admin page"}
    status, body = get(relay, "/admin/publish", {"X-API-Key": API_KEY}, {"channel": "nope:x", "data": {}})
    assert status == 400 and json.loads(body)["error"]["code"] == 102  # unknown channel
    ws.close()


def test_stats_without_metrics_say_why(relay_factory):
    r = relay_factory({"metrics": False})
    status, body = get(r, "/admin/stats", {"X-API-Key": API_KEY})
    assert status == 404 and "metrics = false" in body


def test_admin_page_can_be_turned_off(relay_factory):
    r = relay_factory({"admin": False})
    assert get(r, "/admin")[0] == 404
    assert get(r, "/admin/stats", {"X-API-Key": API_KEY})[0] == 404

"""Demo mode: off by default, and when on, /demo serves a page with a working guest token."""

import re
import urllib.error
import urllib.request

import pytest

from tests.rawclients import ws_connected


def get(url):
    return urllib.request.urlopen(url, timeout=5).read().decode()


def test_demo_off_by_default(relay):
    with pytest.raises(urllib.error.HTTPError) as e:
        get(f"http://127.0.0.1:{relay.api_port}/demo")
    assert e.value.code == 404


async def test_demo_page_token_connects(relay_factory):
    r = relay_factory({"demo": True})
    page = get(f"http://127.0.0.1:{r.api_port}/demo?user=shopper1")
    token = re.search(r'token: "([^"]+)"', page).group(1)
    assert f'ws://127.0.0.1:{r.ws_port}/connection/websocket' in page
    ws = await ws_connected(r.ws_port, token)
    assert "subscribe" in await ws.call("subscribe", {"channel": "chat:lobby"})
    ws.close()

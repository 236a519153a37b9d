"""Card numbers typed into a chat never reach another subscriber, the history or the backend."""

from relay.auth import make_connect_token
from tests.rawclients import ws_connected
from tests.relayproc import SECRET

SUPPORT = {"publish_access": "subscribers", "history_size": 10, "history_ttl": 300.0, "redact_cards": True,
           "redact_patterns": [r"\bpassword\s*[:=]\s*[^\s,]+"]}


async def test_card_numbers_are_redacted_before_fanout_and_history(relay_factory):
    r = relay_factory({"namespaces": {"support": SUPPORT}})
    agent = await ws_connected(r.ws_port, make_connect_token("agent", SECRET, ttl=60))
    customer = await ws_connected(r.ws_port, make_connect_token("ada", SECRET, ttl=60))
    ch = "support:order-42"
    for ws in (agent, customer):
        assert "subscribe" in await ws.call("subscribe", {"channel": ch})
    texts = ["my card is 4111 1111 1111 1111, exp 12/27", "order NW-1042, call +49 151 23456789",
             "password: hunter2 and 5555-5555-5555-4444"]
    for t in texts:
        data = {"text": t, "order": 4111111111111111}
        assert "publish" in await customer.call("publish", {"channel": ch, "data": data})
    got = [(await agent.pub())["pub"]["data"] for _ in texts]
    assert got == [{"text": "my card is [redacted], exp 12/27", "order": 4111111111111111},
                   {"text": "order NW-1042, call +49 151 23456789", "order": 4111111111111111},
                   {"text": "[redacted] and [redacted]", "order": 4111111111111111}]
    hist = r.api("history", {"channel": ch, "limit": 10})["result"]["publications"]
    assert [p["data"] for p in hist] == got
    m = r.metrics()
    assert m["relay_redactions_total", {"kind": "card"}] == 2
    assert m["relay_redactions_total", {"kind": "pattern"}] == 1
    # the server API is the shop's own voice: not redacted
    r.api("publish", {"channel": ch, "data": {"text": "test card 4111 1111 1111 1111"}})
    assert (await agent.pub())["pub"]["data"]["text"] == "test card 4111 1111 1111 1111"
    agent.close()
    customer.close()


async def test_namespaces_without_redaction_are_untouched(relay_factory):
    r = relay_factory()
    a = await ws_connected(r.ws_port, make_connect_token("a", SECRET, ttl=60))
    await a.call("subscribe", {"channel": "chat:room"})
    await a.call("publish", {"channel": "chat:room", "data": {"text": "4111 1111 1111 1111"}})
    assert (await a.pub())["pub"]["data"]["text"] == "4111 1111 1111 1111"
    a.close()


def test_bad_patterns_are_config_errors(tmp_path):
    import pytest

    from relay.config import ConfigError, load

    path = tmp_path / "relay.toml"
    path.write_text('token_hmac_secret = "s"\n[namespaces.support]\nredact_patterns = ["(unclosed"]\n')
    with pytest.raises(ConfigError) as e:
        load(str(path), environ={})
    assert "namespaces.support.redact_patterns[0]: not a regular expression" in str(e.value)

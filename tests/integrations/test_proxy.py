"""relay/integrations/proxy.py without a network: what a hook reply may hold, and which headers leave relay."""

import base64

import orjson
import pytest

from relay.codes import ClientError, Disconnect
from relay.integrations.proxy import RESULT_FIELDS, ProxyFailure, forward_headers, parse_reply


def reply(obj) -> bytes:
    return orjson.dumps(obj)


def test_forward_headers_is_an_allow_list_and_filters_cookies():
    hs = {"cookie": "session=abc; theme=dark; _ga=1", "user-agent": "UA", "x-secret": "s",
          "authorization": "Bearer t"}
    assert forward_headers(hs, ["Cookie", "User-Agent"], []) == {"Cookie": "session=abc; theme=dark; _ga=1",
                                                                  "User-Agent": "UA"}
    assert forward_headers(hs, ["Cookie"], ["session"]) == {"Cookie": "session=abc"}
    assert forward_headers(hs, ["Cookie"], ["other"]) == {}
    assert forward_headers({}, ["Cookie"], []) == {}


def test_connect_result_fields_and_b64():
    data = base64.b64encode(b'{"a": 1}').decode()
    out = parse_reply("connect", reply({"result": {"user": "alice", "expire_at": 10, "b64data": data,
                                                   "channels": ["news:a"], "meta": {"k": 1}, "info": None}}))
    assert out == {"user": "alice", "expire_at": 10, "data": {"a": 1}, "channels": ["news:a"], "meta": {"k": 1}}
    assert parse_reply("rpc", reply({})) == {}  # no result: an empty one


@pytest.mark.parametrize("hook, result", [
    ("connect", {"user": 5}),
    ("connect", {"user": "a", "channels": [1]}),
    ("connect", {"user": "a", "subs": {"news:a": {"token": "x"}}}),
    ("connect", {"expire_at": -1}),
    ("connect", {"expire_at": 1.5}),
    ("refresh", {"user": "mallory"}),  # a user id it was not asked for
    ("subscribe", {"channels": ["news:a"]}),
    ("publish", {"skip_history": "yes"}),
    ("publish", {"b64data": "not base64!"}),
    ("rpc", {"data": 1, "extra": 2}),
])
def test_malformed_results_are_refused(hook, result):
    with pytest.raises(ProxyFailure) as e:
        parse_reply(hook, reply({"result": result}))
    assert e.value.kind == "malformed"


@pytest.mark.parametrize("raw", [b"", b"[]", b"null", b'{"result": 1}', b'{"result": {}, "foo": 1}',
                                 b'{"error": {"code": 1000, "message": "x"}, "result": {}}',
                                 b'{"error": {"code": 99, "message": "x"}}', b'{"error": "nope"}',
                                 b'{"disconnect": {"code": 1000, "reason": "x"}}'])
def test_malformed_replies_are_refused(raw):
    with pytest.raises(ProxyFailure):
        parse_reply("connect", raw)


def test_errors_and_disconnects_become_ours():
    with pytest.raises(ClientError) as e:
        parse_reply("subscribe", reply({"error": {"code": 1403, "message": "not yours", "temporary": True}}))
    assert e.value == ClientError(1403, "not yours", temporary=True)
    with pytest.raises(Disconnect) as d:
        parse_reply("connect", reply({"disconnect": {"code": 4501, "reason": "banned"}}))
    assert d.value == Disconnect(4501, "banned")


def test_every_hook_has_a_result_schema():
    from relay.config import PROXY_HOOKS

    assert set(RESULT_FIELDS) == set(PROXY_HOOKS)

"""Origin allow-list for WebSocket handshakes (RFC 6455 10.2)."""

import pytest

from relay.protocol.websocket import origin_allowed

ALLOWED = ["https://shop.example.com", "https://*.example.org", "http://localhost:8002"]


@pytest.mark.parametrize("origin,ok", [
    (None, True),                                        # not a browser
    ("https://shop.example.com", True),
    ("HTTPS://Shop.Example.com", True),                  # case-insensitive
    ("https://shop.example.com:443", True),              # default port
    ("https://shop.example.com.evil.com", False),        # lookalike
    ("https://evilshop.example.com", False),
    ("http://shop.example.com", False),                  # wrong scheme
    ("https://shop.example.com:8443", False),            # wrong port
    ("null", False),                                     # opaque origin
    ("https://a.example.org", True),                     # wildcard subdomain
    ("https://a.b.example.org", True),
    ("https://example.org", False),                      # wildcard needs a subdomain
    ("https://evilexample.org", False),
    ("https://a.example.org.evil.com", False),
    ("http://localhost:8002", True),
    ("http://localhost:8003", False),
    ("https://user@shop.example.com", False),            # not a serialized origin
    ("https://shop.example.com/path", False),
    ("", False),
])
def test_allow_list(origin, ok):
    assert origin_allowed(origin, "relay.example.com", ALLOWED) is ok


@pytest.mark.parametrize("origin,host,ok", [
    ("http://127.0.0.1:8000", "127.0.0.1:8000", True),
    ("http://127.0.0.1:8002", "127.0.0.1:8000", False),
    ("https://relay.example.com", "relay.example.com", True),
    ("https://other.example.com", "relay.example.com", False),
    ("null", "relay.example.com", False),
])
def test_same_host_when_no_list(origin, host, ok):
    assert origin_allowed(origin, host, []) is ok


def test_star_allows_all():
    assert origin_allowed("https://anything.test", "x", ["*"])

"""Bad input: each gets its documented error or close code, and other clients are unaffected."""

import asyncio
import time
import uuid

import jwt
import pytest

from tests.rawclients import RawTCP, RawWS, ws_connected
from tests.wsframes import client_frame


@pytest.fixture
async def bystander(relay):
    """A healthy subscriber that must keep receiving while others misbehave."""
    ch = f"pub:{uuid.uuid4().hex[:8]}"
    ws = await ws_connected(relay.ws_port, relay.token("bystander"))
    await ws.call("subscribe", {"channel": ch})
    yield ws, ch
    # still alive and still receiving
    await ws.call("publish", {"channel": ch, "data": "still here"})
    assert (await ws.pub())["pub"]["data"] == "still here"
    ws.close()


async def closed_with(ws: RawWS) -> tuple[int, str]:
    code, reason = await ws.expect_close()
    assert await ws.eof()
    return code, reason


@pytest.mark.parametrize("payload,code", [
    (b"{not json", 3501),
    (b"[1,2,3]", 3501),
    (b'{"connect":{}}', 3501),                      # missing id
    (b'{"id":"1","connect":{}}', 3501),             # id not an integer
    (b'{"id":1,"subscribe":{"channel":"a"}}', 3501),  # command before connect
    (b'{"id":1,"connect":[]}', 3501),               # params not an object
    (b'{"id":1,"connect":{}}', 3501),               # no credentials, anonymous not allowed
    (b'{"id":1,"connect":{"token":"not.a.jwt"}}', 3500),
])
async def test_bad_commands_before_connect(relay, bystander, payload, code):
    ws = await RawWS.open(relay.ws_port)
    await ws.send_text(payload)
    assert (await closed_with(ws))[0] == code


async def test_invalid_json_after_connect(relay, bystander):
    ws = await ws_connected(relay.ws_port, relay.token("alice"))
    await ws.send_text(b'{"id":2,"subscribe":')
    assert await closed_with(ws) == (3501, "bad request: invalid JSON")


async def test_unknown_command_is_an_error_reply(relay, bystander):
    ws = await ws_connected(relay.ws_port, relay.token("alice"))
    assert (await ws.call("teleport", {}))["error"] == {"code": 104, "message": "method not found"}
    ws.close()


async def test_tampered_and_expired_tokens(relay, bystander):
    token = relay.token("alice")
    head, body, sig = token.split(".")
    forged = jwt.encode({"sub": "admin", "exp": int(time.time()) + 60}, "wrong-secret-0123456789abcdef0123456789",
                        algorithm="HS256")
    for bad in (f"{head}.{body}.{sig[:-2]}AA", forged,
                jwt.encode({"sub": "x"}, "k" * 64, algorithm="HS384"),
                jwt.encode({"sub": 42, "exp": int(time.time()) + 60}, relay.config["token_hmac_secret"],
                           algorithm="HS256")):  # (no sub at all is an anonymous connection: test_centrifugo_compat)
        ws = await RawWS.open(relay.ws_port)
        await ws.send_cmds({"id": 1, "connect": {"token": bad}})
        assert await closed_with(ws) == (3500, "invalid token"), bad
    expired = jwt.encode({"sub": "alice", "exp": int(time.time()) - 5}, relay.config["token_hmac_secret"],
                         algorithm="HS256")
    ws = await RawWS.open(relay.ws_port)
    reply = await ws.call("connect", {"token": expired})
    assert reply["error"]["code"] == 109  # the SDK fetches a new token and retries
    ws.close()


async def test_permission_errors(relay, bystander):
    ws = await ws_connected(relay.ws_port, relay.token("alice"))
    assert (await ws.call("subscribe", {"channel": "closed:x"}))["error"]["code"] == 103
    assert (await ws.call("subscribe", {"channel": "nope:x"}))["error"]["code"] == 102
    assert (await ws.call("subscribe", {"channel": "chat:order1#bob,carol"}))["error"]["code"] == 103
    assert "subscribe" in await ws.call("subscribe", {"channel": "chat:order1#alice,bob"})
    assert (await ws.call("subscribe", {"channel": "chat:order1#alice,bob"}))["error"]["code"] == 105
    # publish where not allowed / not subscribed
    await ws.call("subscribe", {"channel": "news:x"})
    assert (await ws.call("publish", {"channel": "news:x", "data": 1}))["error"]["code"] == 103
    assert (await ws.call("publish", {"channel": "chat:unsubscribed", "data": 1}))["error"]["code"] == 103
    assert (await ws.call("subscribe", {"channel": ""}))["error"]["code"] == 107
    assert (await ws.call("subscribe", {"channel": "a" * 300}))["error"]["code"] == 107
    assert (await ws.call("subscribe", {"channel": "chat:\x00"}))["error"]["code"] == 107
    assert (await ws.call("subscribe", {"channel": 5}))["error"]["code"] == 107
    assert (await ws.call("presence", {"channel": "news:x"}))["error"]["code"] == 108
    assert (await ws.call("history", {"channel": "chat:unsubscribed"}))["error"]["code"] == 103
    ws.close()


async def test_anonymous_is_refused_unless_allowed(relay_factory):
    r = relay_factory({"allow_anonymous_connect": True})
    ws = await RawWS.open(r.ws_port)
    assert (await ws.call("connect", {}))["connect"]["client"]
    assert (await ws.call("subscribe", {"channel": "chat:a"}))["error"]["code"] == 103
    assert "subscribe" in await ws.call("subscribe", {"channel": "news:a"})  # subscribe_access = "anonymous"
    ws.close()


async def test_channel_limit(relay_factory):
    r = relay_factory({"max_channels_per_connection": 2})
    ws = await ws_connected(r.ws_port, r.token("alice"))
    await ws.call("subscribe", {"channel": "pub:1"})
    await ws.call("subscribe", {"channel": "pub:2"})
    assert (await ws.call("subscribe", {"channel": "pub:3"}))["error"] == {"code": 106, "message": "limit exceeded"}
    ws.close()


@pytest.mark.parametrize("frame,code", [
    (client_frame(b'{"id":1}', mask=False), 1002),
    (client_frame(b"\xc3\x28"), 1007),
    (client_frame(b"x" * 70000), 1009),
    (client_frame(b"", length_override=2**40)[:10], 1009),   # header only: refused before the payload
    (client_frame(b"\x00\x01", opcode=2), 1003),              # binary: not the JSON protocol
    (client_frame(b"x", rsv=4), 1002),
])
async def test_frame_violations(relay, bystander, frame, code):
    ws = await ws_connected(relay.ws_port, relay.token("alice"))
    await ws.send_raw(frame)
    assert (await closed_with(ws))[0] == code


async def test_too_many_commands_in_one_message(relay_factory):
    r = relay_factory({"max_commands_per_message": 3})
    ws = await ws_connected(r.ws_port, r.token("alice"))
    await ws.send_cmds(*[{"id": i + 2, "presence_stats": {"channel": "x"}} for i in range(4)])
    assert (await closed_with(ws))[0] == 3501


async def test_handshake_errors_are_http(relay):
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.ws_port)
    writer.write(b"GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n")
    resp = await reader.read()
    assert resp.startswith(b"HTTP/1.1 404 ")
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.ws_port)
    writer.write(b"GET /connection/websocket HTTP/1.1\r\n" + b"X-Junk: aaaaaaaaaa\r\n" * 1000)
    resp = await reader.read()
    assert resp.startswith(b"HTTP/1.1 431 ")


async def test_tcp_absurd_frame_length(relay, bystander):
    c = await RawTCP.open(relay.tcp_port)
    c.writer.write(b"\x7f\xff\xff\xff")  # announces 2 GiB, sends nothing else
    push = await c.push()
    assert push["disconnect"]["code"] == 3501 and "too big" in push["disconnect"]["reason"]
    assert push["disconnect"]["reconnect"] is False
    assert await c.reader.read() == b""


async def test_tcp_invalid_msgpack(relay, bystander):
    c = await RawTCP.open(relay.tcp_port)
    c.writer.write(b"\x00\x00\x00\x01\xc1")
    push = await c.push()
    assert push["disconnect"]["code"] == 3501
    assert await c.reader.read() == b""


@pytest.mark.parametrize("origin,status", [
    ("https://shop.example.com", 101),
    ("https://shop.example.com.evil.com", 403),
    ("null", 403),
    ("http://shop.example.com", 403),
    ("https://shop.example.com:8443", 403),
    (None, 101),  # not a browser: SDKs in apps and backends send no Origin
])
async def test_origin_allow_list(relay_factory, origin, status):
    r = relay_factory({"allowed_origins": ["https://shop.example.com"]})
    reader, writer = await asyncio.open_connection("127.0.0.1", r.ws_port)
    extra = f"Origin: {origin}\r\n" if origin else ""
    writer.write((f"GET /connection/websocket HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  f"Sec-WebSocket-Version: 13\r\n{extra}\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(f"HTTP/1.1 {status} ".encode())
    writer.close()


async def test_publish_flood_is_limited_and_others_unaffected(relay_factory):
    r = relay_factory({"client_publish_rate": 10.0, "client_publish_burst": 10, "client_command_rate": 2000.0,
                       "client_command_burst": 2000})
    ch = "pub:flood"
    flooder = await ws_connected(r.ws_port, r.token("flooder"))
    reader = await ws_connected(r.ws_port, r.token("reader"))
    await flooder.call("subscribe", {"channel": ch})
    await reader.call("subscribe", {"channel": ch})
    # 1,000 publishes in about a second against a limit of 10/s (burst 10)
    for start in range(0, 1000, 50):
        await flooder.send_cmds(*[{"id": 100 + i, "publish": {"channel": ch, "data": i}}
                                  for i in range(start, start + 50)])
        await asyncio.sleep(0.05)
    replies = {}
    while len(replies) < 1000:
        m = await flooder.message()
        if "id" in m:
            replies[m["id"]] = m
    ok = [i for i, m in replies.items() if "publish" in m]
    limited = [i for i, m in replies.items() if m.get("error", {}).get("code") == 111]
    assert len(ok) + len(limited) == 1000 and 10 <= len(ok) <= 35
    got = []
    while len(got) < len(ok):
        got.append((await reader.pub())["pub"]["data"])
    assert got == sorted(i - 100 for i in ok)  # the reader sees exactly the accepted ones, in order
    with pytest.raises(asyncio.TimeoutError):
        await reader.pub(timeout=0.3)


async def test_command_flood_disconnects_with_3013(relay_factory):
    r = relay_factory({"client_command_rate": 5.0, "client_command_burst": 20})
    ws = await ws_connected(r.ws_port, r.token("spammer"))
    await ws.send_cmds(*[{"id": 10 + i, "presence_stats": {"channel": "x"}} for i in range(60)])
    code, reason = await ws.expect_close()
    assert (code, reason) == (3013, "too many requests")


async def _handshake_status(port: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    return int(head.split()[1])


async def test_connection_limits(relay_factory):
    r = relay_factory({"max_connections_per_ip": 3, "max_connections_per_user": 2})
    held = [await RawWS.open(r.ws_port) for _ in range(3)]
    assert await _handshake_status(r.ws_port) == 429  # a fourth from the same address
    t = await RawTCP.open(r.tcp_port)
    assert (await t.push())["disconnect"]["code"] == 3504
    held.pop().close()
    await asyncio.sleep(0.2)
    ws = await RawWS.open(r.ws_port)  # room again
    held.append(ws)
    # per user: the third connection of the same user is refused with 3504
    for h in held[:2]:
        assert "connect" in await h.call("connect", {"token": r.token("sam")})
    await held[2].send_cmds({"id": 1, "connect": {"token": r.token("sam")}})
    assert await held[2].expect_close() == (3504, "connection limit")
    for h in held:
        h.close()


async def test_global_connection_cap(relay_factory):
    r = relay_factory({"max_connections": 2})
    a, b = await RawWS.open(r.ws_port), await RawWS.open(r.ws_port)
    assert await _handshake_status(r.ws_port) == 503
    t = await RawTCP.open(r.tcp_port)
    push = await t.push()
    assert push["disconnect"] == {"code": 3011, "reason": "server full", "reconnect": True}
    a.close()
    await asyncio.sleep(0.2)
    assert await _handshake_status(r.ws_port) == 101
    b.close()


async def test_slowloris_does_not_stop_real_clients(relay_factory):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    r = relay_factory({"handshake_timeout": 2.0, "max_connections_per_ip": 0})
    lingering = []
    for _ in range(1000):  # 1,000 sockets that start a handshake and never finish it
        reader, writer = await asyncio.open_connection("127.0.0.1", r.ws_port)
        writer.write(b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\n")
        lingering.append((reader, writer))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    ws = await ws_connected(r.ws_port, r.token("shopper"))
    assert loop.time() - t0 < 1.0  # a real client still connects at once
    ws.close()
    # the server drops the stalled handshakes after handshake_timeout
    closed = await asyncio.gather(*(asyncio.wait_for(rd.read(), 6) for rd, _ in lingering[:50]))
    assert all(c == b"" for c in closed)
    for _, w in lingering:
        w.close()


@pytest.mark.parametrize("headers,status", [
    ([f"X-H{i}: v" for i in range(2000)], 431),                  # 2,000 handshake headers
    (["Sec-WebSocket-Protocol: " + "a" * 32768], 431),          # a 32 KiB header
])
async def test_hostile_handshakes(relay, headers, status):
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.ws_port)
    writer.write(("GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                  + "".join(h + "\r\n" for h in headers) + "\r\n").encode())
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    except ConnectionResetError:
        pytest.fail("connection reset before the 431 answer")
    assert head.startswith(f"HTTP/1.1 {status} ".encode())
    writer.close()


@pytest.mark.parametrize("frame,code", [
    (client_frame(b"", length_override=2**63)[:10], 1002),   # a length with the top bit set is invalid
    (client_frame(b"", length_override=2**63 - 1)[:10], 1009),  # 2^63-1 bytes: refused from the header
    (client_frame(b"x" * 126, opcode=9), 1002),               # control frame over 125 bytes
])
async def test_absurd_frame_headers(relay, bystander, frame, code):
    ws = await ws_connected(relay.ws_port, relay.token("alice"))
    await ws.send_raw(frame)
    assert (await closed_with(ws))[0] == code


BAD_STREAM_FIELDS = [{"flag": "x"}, {"flag": [1]}, {"flag": {"a": 1}}, {"flag": -1}, {"flag": True},
                     {"flag": 1.5}, {"recover": True, "offset": "3"}, {"recover": True, "offset": -2},
                     {"recover": True, "offset": 0, "epoch": 7}]


@pytest.mark.parametrize("wire", ["ws", "tcp"])
async def test_bad_subscribe_stream_fields_are_107_not_a_traceback(relay, bystander, wire):
    """A subscribe whose flag, offset or epoch has the wrong type gets 107 over either wire, before any work:
    the connection stays usable and the server logs no traceback (it used to answer 100 from a ValueError)."""
    if wire == "ws":
        c = await ws_connected(relay.ws_port, relay.token("mallory"))
    else:
        c = await RawTCP.open(relay.tcp_port)
        assert "connect" in await c.call("connect", {"token": relay.token("mallory")})
    for fields in BAD_STREAM_FIELDS:
        reply = await c.call("subscribe", {"channel": f"pub:{uuid.uuid4().hex[:6]}", "recoverable": True, **fields})
        assert reply.get("error") == {"code": 107, "message": "bad request"}, (fields, reply)
    ok = await c.call("subscribe", {"channel": "pub:fine", "flag": 2, "recoverable": True})
    assert "subscribe" in ok, ok
    c.close()
    assert "Traceback" not in relay.log() and " ERROR " not in relay.log()


async def test_malformed_http_and_aborted_bodies_are_400s_not_tracebacks(relay):
    """The HTTP API port answers malformed requests with 400, and a client that resets mid-body is just
    gone: neither leaves an ERROR or a traceback in the log (aiohttp logs both as errors by default)."""
    import socket

    from tests.relayproc import API_KEY

    for raw in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
                b"POST /api/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                b"GET /\x00 HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"):
        r, w = await asyncio.open_connection("127.0.0.1", relay.api_port)
        w.write(raw)
        assert (await asyncio.wait_for(r.read(100), 5)).startswith(b"HTTP/1.0 400"), raw
        w.close()
    for _ in range(3):  # a publish whose body never finishes: the client resets the connection
        r, w = await asyncio.open_connection("127.0.0.1", relay.api_port)
        w.write(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: " + API_KEY.encode()
                + b"\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"channel\": \"pub:x\"")
        await w.drain()
        await asyncio.sleep(0.2)
        w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        w.transport.abort()
    await asyncio.sleep(0.3)
    log = relay.log()
    assert "http_bad_request" in log
    assert "Traceback" not in log and '"level":"error"' not in log and " ERROR " not in log, log[-2000:]

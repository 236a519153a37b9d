"""Centrifugo's protobuf protocol over a real WebSocket, frame by frame, with messages built by
centrifuge-python's own generated classes (not relay's codec): how a client selects it, the varint-delimited
binary frames both ways, ping/pong, and publications crossing between JSON and protobuf clients."""

from __future__ import annotations

import asyncio
import uuid

import orjson
from centrifuge.protocol.client_pb2 import Command, Reply

from tests.pbframes import delimited, replies
from tests.rawclients import RawWS, ws_connected
from tests.wsframes import client_frame


class PbWS:
    """A protobuf client over RawWS: commands out, replies and pushes in."""

    def __init__(self, ws: RawWS) -> None:
        self.ws = ws
        self.pending: list = []
        self.pushes: list = []  # pushes that arrived while a call waited for its reply
        self.next_id = 0

    @classmethod
    async def open(cls, port: int, how: str = "subprotocol") -> PbWS:
        if how == "subprotocol":  # centrifuge-js and centrifuge-python
            ws = await RawWS.open(port, extra="Sec-WebSocket-Protocol: centrifuge-protobuf\r\n")
        else:  # ?format=protobuf / ?cf_protocol=protobuf (the Go SDK, tools)
            ws = await RawWS.open(port, path=f"/connection/websocket?{how}=protobuf")
        return cls(ws)

    async def send(self, *cmds) -> None:
        await self.ws.send_raw(client_frame(delimited(*cmds), opcode=2))

    async def reply(self) -> Reply:
        while not self.pending:
            op, payload = await self.ws.frame()
            assert op == 2, (op, payload)
            self.pending += replies(payload)
        return self.pending.pop(0)

    async def call(self, cmd: Command) -> Reply:
        self.next_id += 1
        cmd.id = self.next_id
        await self.send(cmd)
        while True:
            r = await self.reply()
            if r.id == cmd.id:
                return r
            if r.HasField("push"):
                self.pushes.append(r)


async def subscribed(relay, channel: str, flag: int = 0) -> tuple[PbWS, Reply]:
    """A protobuf client of alice, connected and subscribed to ``channel``; its subscribe reply."""
    pb = await PbWS.open(relay.ws_port)
    connect = Command()
    connect.connect.token = relay.token("alice")
    await pb.call(connect)
    sub = Command()
    sub.subscribe.channel = channel
    sub.subscribe.flag = flag
    return pb, await pb.call(sub)


async def test_the_subprotocol_is_echoed_and_the_query_selects_protobuf_too(relay):
    for how in ("subprotocol", "format", "cf_protocol"):
        pb = await PbWS.open(relay.ws_port, how)
        cmd = Command()
        cmd.connect.token = relay.token("alice")
        r = await pb.call(cmd)
        assert len(r.connect.client) == 32 and r.connect.ping == 25 and r.connect.pong, how
        pb.ws.close()
    # the 101 answer names the subprotocol (a browser fails the handshake otherwise)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.ws_port)
    writer.write(b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                 b"Sec-WebSocket-Protocol: centrifuge-protobuf\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert b"\r\nSec-WebSocket-Protocol: centrifuge-protobuf\r\n" in head
    writer.close()


async def test_batched_commands_replies_and_a_publication_cross_between_protocols(relay):
    ch = f"chat:{uuid.uuid4().hex[:8]}"
    pb = await PbWS.open(relay.ws_port)
    connect, sub = Command(id=1), Command(id=2)
    connect.connect.token = relay.token("alice")
    sub.subscribe.channel = ch
    await pb.send(connect, sub)  # one frame, two commands (as centrifuge-js batches them)
    r1, r2 = await pb.reply(), await pb.reply()
    assert (r1.id, r2.id) == (1, 2) and r2.subscribe.recoverable and r2.subscribe.epoch
    js = await ws_connected(relay.ws_port, relay.token("bob"))
    await js.call("subscribe", {"channel": ch})
    pub = Command()
    pub.publish.channel = ch
    pub.publish.data = orjson.dumps({"text": "from protobuf"})
    assert (await pb.call(pub)).HasField("publish")
    got = (await js.pub())["pub"]
    assert got["data"] == {"text": "from protobuf"} and got["info"]["user"] == "alice"
    await js.call("publish", {"channel": ch, "data": {"text": "from JSON"}})
    pushes = [r.push for r in pb.pushes if r.push.HasField("pub")]
    while len(pushes) < 2:
        r = await pb.reply()
        if r.HasField("push") and r.push.HasField("pub"):
            pushes.append(r.push)
    assert [orjson.loads(p.pub.data)["text"] for p in pushes] == ["from protobuf", "from JSON"]
    assert [p.pub.offset for p in pushes] == [1, 2] and pushes[1].pub.info.user == "bob"
    assert all(p.channel == ch for p in pushes)
    pb.ws.close()
    js.close()


async def test_a_payload_that_is_not_json_is_refused_and_reaches_nobody(relay):
    ch = f"chat:{uuid.uuid4().hex[:8]}"
    pb, _ = await subscribed(relay, ch)
    bad = Command()
    bad.publish.channel = ch
    bad.publish.data = b"\xff\x00binary"
    r = await pb.call(bad)
    assert r.error.code == 107 and "must be JSON" in r.error.message
    history = Command()
    history.history.channel = ch
    history.history.limit = 10
    assert len((await pb.call(history)).history.publications) == 0
    pb.ws.close()


async def test_ping_is_an_empty_reply_and_the_pong_an_empty_command(relay_factory):
    r = relay_factory({"ping_interval": 0.5, "pong_timeout": 0.5})
    pb = await PbWS.open(r.ws_port)
    connect = Command()
    connect.connect.token = r.token("alice")
    await pb.call(connect)
    for _ in range(3):  # pinged and answering: stays connected past several pong timeouts
        op, payload = await pb.ws.frame(timeout=3)
        assert (op, payload) == (2, b"\x00")  # an empty Reply
        await pb.ws.send_raw(client_frame(b"\x00", opcode=2))  # an empty Command
    op, payload = await pb.ws.frame(timeout=3)
    assert (op, payload) == (2, b"\x00")
    assert await pb.ws.expect_close(timeout=3) == (3012, "no pong")  # this one unanswered


async def test_the_other_message_type_or_a_broken_message_closes(relay):
    pb = await PbWS.open(relay.ws_port)
    await pb.ws.send_raw(client_frame(b'{"id":1,"connect":{}}'))  # text on a protobuf connection
    assert (await pb.ws.expect_close())[0] == 1003
    js = await RawWS.open(relay.ws_port)
    await js.send_raw(client_frame(b"\x04\x08\x01\x22\x00", opcode=2))  # binary on a JSON connection
    assert (await js.expect_close())[0] == 1003
    pb = await PbWS.open(relay.ws_port)
    await pb.ws.send_raw(client_frame(b"\x09\x08\x01", opcode=2))  # a length past the end of the frame
    assert await pb.ws.expect_close() == (3501, "bad request: message past the end of the frame")


async def test_no_channel_compaction_over_protobuf(relay):
    """The published centrifuge-js protobuf build sends flag 1 but compares the int64 id it gets back by identity
    (a Long object), so a push by id would never reach the subscription: over protobuf the reply has no id and
    pushes name the channel."""
    ch = f"chat:{uuid.uuid4().hex[:8]}"
    pb, r = await subscribed(relay, ch, flag=1)
    assert r.subscribe.id == 0 and r.subscribe.epoch
    pub = Command()
    pub.publish.channel = ch
    pub.publish.data = b'{"n":1}'
    await pb.call(pub)
    push = next((x.push for x in pb.pushes if x.push.HasField("pub")), None) or (await pb.reply()).push
    while not push.HasField("pub"):
        push = (await pb.reply()).push
    assert push.channel == ch and push.id == 0
    pb.ws.close()

"""relay/protocol/protobuf.py against centrifuge-python's generated classes (an independent build of Centrifugo's
client.proto): commands an SDK encodes decode to the dicts the JSON protocol gives, replies relay encodes parse
there as intended, the hand-written publication push equals the generic encoder's for any input, and malformed
frames are refused with 3501."""

from __future__ import annotations

import orjson
import pytest
from centrifuge.protocol.client_pb2 import Command, Reply
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocol import protobuf as pb
from relay.protocol.errors import ProtocolError
from tests.pbframes import delimited, replies

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10)
infos = st.fixed_dictionaries({}, optional={"user": st.text(max_size=10), "client": st.text(max_size=32),
                                            "conn_info": json_values, "chan_info": json_values})
pubs = st.fixed_dictionaries({"data": json_values}, optional={
    "offset": st.integers(0, 2**64 - 1), "info": infos, "delta": st.booleans(),
    "tags": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)})


@settings(max_examples=300, deadline=None)
@given(channel=st.one_of(st.text(max_size=40), st.integers(1, 2**63 - 1)), pub=pubs)
def test_the_hand_written_publication_push_is_the_generic_encoding(channel, pub):
    """``channel``: a name, or a channel id (channel compaction)."""
    push = {"push": {("id" if isinstance(channel, int) else "channel"): channel, "pub": pub}}
    fast = pb.encode_reply(push)
    generic = pb.from_dict(pb.Reply(), push).SerializeToString()
    (got,) = replies(fast)
    want = Reply()
    want.ParseFromString(generic)
    assert got == want
    assert orjson.loads(got.push.pub.data) == pub["data"]


def test_commands_an_sdk_encodes_decode_to_the_json_protocols_dicts():
    connect = Command(id=1)
    connect.connect.token = "t"
    connect.connect.subs["#alice"].recover = True
    connect.connect.subs["#alice"].offset = 7
    sub = Command(id=2)
    sub.subscribe.channel = "chat:x"
    sub.subscribe.flag = 3
    sub.subscribe.recover = True
    publish = Command(id=3)
    publish.publish.channel = "chat:x"
    publish.publish.data = b'{"text":"hi"}'
    history = Command(id=4)
    history.history.channel = "chat:x"
    history.history.limit = 10
    history.history.since.offset = 2
    history.history.since.epoch = "e"
    pong = Command()
    assert pb.decode_commands(delimited(connect, sub, publish, history, pong)) == [
        {"id": 1, "connect": {"token": "t", "subs": {"#alice": {"recover": True, "offset": 7}}}},
        {"id": 2, "subscribe": {"channel": "chat:x", "recover": True, "flag": 3}},
        {"id": 3, "publish": {"channel": "chat:x", "data": {"text": "hi"}}},
        {"id": 4, "history": {"channel": "chat:x", "limit": 10, "since": {"offset": 2, "epoch": "e"}}},
        {},
    ]


def test_a_payload_that_is_not_json_stays_bytes_to_be_refused():
    publish = Command(id=1)
    publish.publish.channel = "c"
    publish.publish.data = b"\xff\xfe"
    (cmd,) = pb.decode_commands(delimited(publish))
    assert isinstance(cmd["publish"]["data"], pb.BinaryData) and cmd["publish"]["data"] == b"\xff\xfe"


def test_replies_parse_as_intended():
    out = pb.encode_reply({"id": 5, "subscribe": {
        "recoverable": True, "epoch": "e", "offset": 3, "positioned": True, "was_recovering": True,
        "recovered": True, "publications": [{"data": {"n": 1}, "offset": 3, "tags": {"k": "v"}}]}})
    out += pb.encode_reply({"id": 6, "error": {"code": 112, "message": "unrecoverable position"}})
    out += pb.encode_reply({"id": 7, "presence": {"presence": {"c1": {"user": "u", "client": "c1",
                                                                      "conn_info": {"name": "x"}}}}})
    out += pb.PING
    sub, err, pres, ping = replies(out)
    assert sub.id == 5 and sub.subscribe.recovered and sub.subscribe.publications[0].offset == 3
    assert orjson.loads(sub.subscribe.publications[0].data) == {"n": 1}
    assert dict(sub.subscribe.publications[0].tags) == {"k": "v"}
    assert (err.error.code, err.error.message) == (112, "unrecoverable position")
    assert orjson.loads(pres.presence.presence["c1"].conn_info) == {"name": "x"}
    assert ping == Reply() and pb.PING == b"\x00"


@pytest.mark.parametrize("frame, why", [
    (b"", "bad request: empty frame"),
    (b"\x05\x08", "bad request: message past the end of the frame"),
    (b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", "bad request: truncated length"),
    (b"\x02\xff\xff", "bad request: invalid protobuf"),
])
def test_malformed_frames_are_refused_with_3501(frame, why):
    with pytest.raises(ProtocolError) as e:
        pb.decode_commands(frame)
    assert (e.value.code, e.value.reason) == (3501, why)

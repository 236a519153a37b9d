"""relay.ops.logs: JSON or text lines with the event and its ids, secrets masked, floods rate-limited."""

import io
import json
import logging

import pytest

from relay.ops import logs
from relay.config import Config


@pytest.fixture
def capture(monkeypatch):
    def make(**cfg_kw):
        buf = io.StringIO()
        monkeypatch.setattr("sys.stderr", buf)
        cfg = Config(token_hmac_secret="s3cret-hmac-key", api_key="the-api-key", node_name="n1", **cfg_kw)
        logs.setup(cfg, worker=2)
        return buf

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield make
    root.handlers[:], _ = saved[0], root.setLevel(saved[1])


def test_json_line_has_level_event_ids_and_masks_secrets(capture):
    buf = capture(log_format="json")
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXBhcnQ"
    logging.getLogger("relay.session").warning("client disconnected: slow (token %s, key the-api-key)", token,
                                               extra={"event": "disconnect", "client": "c1", "user": "alice",
                                                      "code": 3008})
    line = json.loads(buf.getvalue().strip())
    assert line["level"] == "warning" and line["event"] == "disconnect" and line["logger"] == "relay.session"
    assert (line["client"], line["user"], line["code"], line["node"], line["worker"]) == ("c1", "alice", 3008,
                                                                                        "n1", 2)
    assert token not in buf.getvalue() and "the-api-key" not in buf.getvalue()
    assert "[token]" in line["msg"] and "[secret]" in line["msg"]


def test_text_format_for_terminals(capture):
    buf = capture(log_format="text")
    logging.getLogger("relay.node").info("gap detected", extra={"event": "resync", "channel": "chat:1"})
    out = buf.getvalue()
    assert " INFO w2 relay.node: gap detected [event=resync channel=chat:1]" in out


def test_a_flood_is_dropped_and_counted(capture):
    buf = capture(log_format="json", log_rate=1000.0, log_burst=5)
    before = logs.dropped_total()
    log = logging.getLogger("relay.node")
    for _ in range(500):
        log.info("connection refused: %s", "origin", extra={"event": "refused", "reason": "origin"})
    log.info("other event", extra={"event": "started"})  # another kind has its own budget
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    refused = [x for x in lines if x["event"] == "refused"]
    assert 5 <= len(refused) < 50
    assert any(x["event"] == "started" for x in lines)
    assert logs.dropped_total() - before == 500 - len(refused)
    # the lines let through say how many were dropped before them: nothing goes unaccounted
    import time

    time.sleep(0.01)
    log.info("connection refused: %s", "origin", extra={"event": "refused", "reason": "origin"})
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert sum(x.get("dropped", 0) for x in lines if x["event"] == "refused") == 500 - len(refused)

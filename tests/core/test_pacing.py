"""Paced broadcasts in the core: each subscriber gets the publication at its phase of the window, the
channel's later publications stay behind it per subscriber, and the round ends by itself."""

from tests.core.conftest import RecordingTransport
from tests.core.test_hub import make_hub, ws_lines


def datas(transport):
    return [m["push"]["pub"]["data"] for m in ws_lines(transport)]


def setup(impl, loop, phases):
    hub = make_hub(impl, loop)
    ts = [RecordingTransport() for _ in phases]
    conns = [hub.conn(t, impl.WIRE_WS, 1 << 20) for t in ts]
    for c, ph in zip(conns, phases, strict=True):
        c.phase = ph
        hub.subscribe("sale", c)
    return hub, ts, conns


def pub(data):
    return {"channel": "sale", "pub": {"data": data}}


def test_each_subscriber_at_its_phase(impl, loop):
    hub, ts, conns = setup(impl, loop, [0.0, 0.25, 0.5, 0.999])
    assert 0.0 <= hub.conn(RecordingTransport(), impl.WIRE_WS, 10).phase < 1.0  # random by default
    assert hub.broadcast_paced("sale", pub("SALE"), impl.LANE_BULK, 1.0, 100.0) == 4
    assert hub.pacing() == 1 and hub.paced == 1 and hub.publications == 1
    nxt = hub.pace_tick(100.0)
    loop.run()
    assert [datas(t) for t in ts] == [["SALE"], [], [], []]
    assert abs(nxt - 100.25) < 1e-9  # the next slot with a subscriber in it
    nxt = hub.pace_tick(100.3)
    loop.run()
    assert [datas(t) for t in ts] == [["SALE"], ["SALE"], [], []]
    assert abs(nxt - 100.5) < 1e-9
    assert abs(hub.pace_tick(100.6) - 100.99) < 1e-9
    loop.run()
    assert [len(datas(t)) for t in ts] == [1, 1, 1, 0]
    assert hub.pace_tick(101.0) == -1  # the last slot: the round is over
    loop.run()
    assert [datas(t) for t in ts] == [["SALE"]] * 4
    assert hub.pacing() == 0 and hub.deliveries == 4


def test_later_publications_of_the_channel_stay_behind_it(impl, loop):
    hub, ts, conns = setup(impl, loop, [0.1, 0.9])
    hub.broadcast_paced("sale", pub("SALE"), impl.LANE_CHAT, 1.0, 0.0)
    hub.pace_tick(0.5)
    loop.run()
    assert [datas(t) for t in ts] == [["SALE"], []]
    late = hub.conn(RecordingTransport(), impl.WIRE_WS, 1 << 20)
    late.phase = 0.95
    hub.subscribe("sale", late)  # joined after the paced publication: gets only what comes after
    assert hub.broadcast("sale", pub("next")) == 2  # now to the first and the newcomer; later to the second
    loop.run()
    assert [datas(t) for t in ts] == [["SALE", "next"], []]
    assert datas(late.transport) == ["next"]
    hub.pace_tick(1.0)
    loop.run()
    assert [datas(t) for t in ts] == [["SALE", "next"], ["SALE", "next"]]
    assert datas(late.transport) == ["next"]
    assert hub.publications == 2 and hub.deliveries == 5


def test_a_second_paced_publication_gets_its_own_round_after_the_first(impl, loop):
    hub, ts, conns = setup(impl, loop, [0.2, 0.7])
    hub.broadcast_paced("sale", pub(1), impl.LANE_CHAT, 1.0, 0.0)
    hub.pace_tick(0.5)
    hub.broadcast_paced("sale", pub(2), impl.LANE_CHAT, 1.0, 0.5)  # its round: from 0.5, each at its phase
    hub.pace_tick(0.72)
    loop.run()
    assert [datas(t) for t in ts] == [[1, 2], [1]]
    nxt = hub.pace_tick(1.0)
    loop.run()
    assert [datas(t) for t in ts] == [[1, 2], [1]] and abs(nxt - 1.2) < 1e-9
    assert hub.pace_tick(2.0) == -1
    loop.run()
    assert [datas(t) for t in ts] == [[1, 2], [1, 2]]
    assert hub.paced == 2 and hub.publications == 2 and hub.pacing() == 0


def test_a_shorter_round_never_overtakes_a_longer_one(impl, loop):
    phases = [i / 50 for i in range(50)]
    hub, ts, conns = setup(impl, loop, phases)
    hub.broadcast_paced("sale", pub("long"), impl.LANE_CHAT, 2.0, 0.0)
    hub.broadcast_paced("sale", pub("short"), impl.LANE_CHAT, 0.1, 0.0)
    hub.broadcast("sale", pub("now"))
    now = 0.0
    while now >= 0:
        now = hub.pace_tick(now)
        loop.run()
    assert all(datas(t) == ["long", "short", "now"] for t in ts)


def test_who_left_gets_nothing_and_drops_resync(impl, loop):
    dropped = []
    hub = impl.Hub(loop.call_soon, lambda c: None, 8, lambda c, ch: (dropped.append(ch), hub.unsubscribe(ch, c)))
    ts = [RecordingTransport() for _ in range(3)]
    conns = [hub.conn(t, impl.WIRE_WS, 1 << 20) for t in ts]
    for c, ph in zip(conns, (0.3, 0.6, 0.9), strict=True):
        c.phase = ph
        hub.subscribe("sale", c)
    conns[2].bulk_limit = 1
    conns[2].pause_writing()
    hub.broadcast_paced("sale", pub("SALE"), impl.LANE_BULK, 1.0, 0.0)
    hub.unsubscribe("sale", conns[1])
    assert hub.pace_tick(2.0) == -1
    loop.run()
    assert [datas(t) for t in ts[:2]] == [["SALE"], []]
    assert dropped == ["sale"] and hub.drops_bulk == 1 and hub.num_subscribers("sale") == 1


def test_tcp_subscribers_are_paced_too(impl, loop):
    hub = make_hub(impl, loop)
    t = RecordingTransport()
    c = hub.conn(t, impl.WIRE_TCP, 1 << 20)
    c.phase = 0.5
    hub.subscribe("sale", c)
    hub.broadcast_paced("sale", pub("SALE"), impl.LANE_CHAT, 0.2, 0.0)
    hub.pace_tick(0.05)
    loop.run()
    assert t.writes == []
    hub.pace_tick(0.2)
    loop.run()
    assert len(t.writes) == 1 and b"SALE" in t.writes[0]


def test_resubscribing_during_the_round_does_not_bring_it_back(impl, loop):
    hub, ts, conns = setup(impl, loop, [0.1, 0.8])
    hub.broadcast_paced("sale", pub("SALE"), impl.LANE_CHAT, 1.0, 0.0)
    hub.unsubscribe("sale", conns[1])
    hub.subscribe("sale", conns[1])  # e.g. a resubscribe that recovered from history meanwhile
    hub.broadcast("sale", pub("next"))
    loop.run()
    assert [datas(t) for t in ts] == [[], ["next"]]
    assert hub.pace_tick(2.0) == -1
    loop.run()
    assert [datas(t) for t in ts] == [["SALE", "next"], ["next"]]

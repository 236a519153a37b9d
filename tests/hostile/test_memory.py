"""Each attack of issue 18 against a real relay: what it may cost is the budget of the connections it uses
(docs/architecture.md) plus a fixed allowance, never the volume of what the attacker sends."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import urllib.request

from tests.hostile.conftest import ALLOWANCE, CONNECTION_BUDGET, MiB, PeakRSS, frame, send_for, wait_idle, ws_socket
from tests.relayproc import API_KEY


def api_publish(relay, channel: str, data) -> int:
    req = urllib.request.Request(f"{relay.api_url}/publish", method="POST",
                                 data=json.dumps({"channel": channel, "data": data}).encode(),
                                 headers={"X-API-Key": API_KEY})
    try:
        return urllib.request.urlopen(req, timeout=5).status
    except urllib.error.HTTPError as e:
        return e.code


async def honest_publishes(relay, stop: asyncio.Event) -> list[int]:
    """A backend publishing 10 times a second meanwhile: the statuses it got."""
    statuses = []
    while not stop.is_set():
        statuses.append(await asyncio.to_thread(api_publish, relay, "pub:orders", {"n": len(statuses)}))
        await asyncio.sleep(0.1)
    return statuses


async def test_ping_flood_from_a_peer_that_never_reads(relay_factory, no_tracebacks):
    """1: pings as fast as a socket takes them, never reading a pong. With the command rate raised so that
    every ping is allowed, the pongs stop at the transport's high-water mark and only the latest one waits:
    the process grows by one connection's budget, not by the 100 MiB of pings. Publishers are not refused."""
    r = relay_factory({"client_command_rate": 1e9, "client_command_burst": 10**9, "client_send_buffer": 16384})
    no_tracebacks(r)
    s = await asyncio.to_thread(ws_socket, r.ws_port, 4096)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    mem = PeakRSS(r)
    stop = asyncio.Event()
    publisher = asyncio.create_task(honest_publishes(r, stop))
    pings = frame(b"p" * 125, opcode=0x9) * 4000  # 0.5 MiB per send
    sent = await asyncio.to_thread(send_for, s, pings, 8.0, 100 * MiB)
    stop.set()
    statuses = await publisher
    growth = mem.growth()
    s.close()
    print(f"ping flood, never reading: {sent / MiB:.0f} MiB of pings, relay +{growth / MiB:.1f} MiB")
    assert sent >= 20 * MiB, f"only {sent / MiB:.0f} MiB of pings went out"
    assert growth <= CONNECTION_BUDGET + ALLOWANCE, f"+{growth / MiB:.0f} MiB for {sent / MiB:.0f} MiB of pings"
    assert statuses and set(statuses) == {200}, statuses


async def test_ping_flood_with_default_limits_is_disconnected_3013(relay_factory, no_tracebacks):
    """With the default command rate, pings are commands: past the burst they are refused, then 3013."""
    r = relay_factory()
    no_tracebacks(r)
    s = await asyncio.to_thread(ws_socket, r.ws_port, 4096)
    mem = PeakRSS(r)
    await asyncio.to_thread(send_for, s, frame(b"p" * 125, opcode=0x9) * 4000, 4.0, 200 * MiB)
    growth = mem.growth()
    s.close()
    print(f"ping flood, default limits: relay +{growth / MiB:.1f} MiB")
    assert r.metrics()["relay_disconnects_total", {"code": "3013"}] >= 1
    assert growth <= CONNECTION_BUDGET + ALLOWANCE, f"+{growth / MiB:.0f} MiB"


async def test_endless_empty_continuation_frames_are_closed_1009(relay_factory, no_tracebacks):
    """2: one text frame that does not finish, then empty continuation frames forever: nothing is added to
    the message's payload, so only the fragment count stops it (max_ws_fragments: 1009)."""
    r = relay_factory()
    no_tracebacks(r)
    conns = [await asyncio.to_thread(ws_socket, r.ws_port) for _ in range(20)]
    mem = PeakRSS(r)
    junk = frame(b"", opcode=0x0, fin=False) * 10000

    def attack(s: socket.socket) -> int:
        s.sendall(frame(b"", fin=False))
        return send_for(s, junk, 3.0, 600 * MiB)

    sent = await asyncio.gather(*(asyncio.to_thread(attack, s) for s in conns))
    growth = mem.growth()
    for s in conns:
        s.close()
    print(f"empty continuations: {sum(sent) / MiB:.1f} MiB sent over {len(conns)} connections, "
          f"relay +{growth / MiB:.1f} MiB")
    assert r.metrics()["relay_disconnects_total", {"code": "1009"}] == len(conns)
    assert max(sent) < 10 * MiB
    assert growth <= len(conns) * CONNECTION_BUDGET + ALLOWANCE, f"+{growth / MiB:.0f} MiB"


async def test_one_byte_fragments_cost_one_byte_each(relay_factory, no_tracebacks):
    """3: 200 connections each sending almost a whole max_ws_message_size message in 1-byte fragments and
    never finishing it (max_ws_fragments raised so they are not closed). A message is reassembled in one
    buffer: the process holds about the payload, not eight times it (it was +700 MiB)."""
    r = relay_factory({"max_ws_fragments": 100000, "max_connections_per_ip": 0})
    no_tracebacks(r)
    # the pure-Python core parses 1-byte fragments ~8x slower: fewer connections, still 5x past the bound if
    # each fragment cost what it did
    n, size = (100 if os.environ.get("RELAY_PUREPYTHON") == "1" else 200), 60000
    conns = [await asyncio.to_thread(ws_socket, r.ws_port) for _ in range(n)]
    mem = PeakRSS(r)
    body = frame(b"a", fin=False) + frame(b"b", opcode=0x0, fin=False) * (size - 1)

    def attack(s: socket.socket) -> None:
        s.sendall(body)

    await asyncio.gather(*(asyncio.to_thread(attack, s) for s in conns))
    await asyncio.to_thread(wait_idle, r)  # relay has read it all
    growth = mem.growth()
    per_connection = 2 * 65536 + 16 * 1024  # the reader's share of the budget (default max_ws_message_size)
    for s in conns:
        s.close()
    print(f"1-byte fragments: {n} connections x {size} B held, relay +{growth / MiB:.1f} MiB")
    assert growth <= n * per_connection + ALLOWANCE, f"+{growth / MiB:.0f} MiB for {n * size / MiB:.0f} MiB held"


async def test_tcp_pong_flood_from_a_non_reader_is_disconnected_3013(relay_factory, no_tracebacks):
    """Raw TCP's pong is an empty map; a flood of them (never reading) counts toward the command rate like
    any command: refused past the burst, then 3013; the process does not grow with the flood."""
    r = relay_factory()
    no_tracebacks(r)
    s = socket.create_connection(("127.0.0.1", r.tcp_port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    mem = PeakRSS(r)
    pong = b"\x00\x00\x00\x01\x80"  # length 1, msgpack {}
    await asyncio.to_thread(send_for, s, pong * 100000, 3.0, 200 * MiB)
    growth = mem.growth()
    s.close()
    assert r.metrics()["relay_disconnects_total", {"code": "3013"}] >= 1
    assert growth <= CONNECTION_BUDGET + ALLOWANCE, f"+{growth / MiB:.0f} MiB"

"""How one publication push differs between subscribers of a channel on the same wire: its variants.

A subscriber's variant is a small int: bit 0 is channel compaction (Centrifugo's subscribe flag bit 1: the push
names the channel by a numeric id, ``{"id": N}``, instead of ``{"channel": ...}``), and ``variant >> 1`` its
fossil delta state: 0 none, 1 a delta subscription that has not had a full publication yet (DELTA_FIRST), 2 one
that has (DELTA_READY: it gets deltas). The fan-out core encodes a publication once per (wire, variant) that
some subscriber uses, and moves a DELTA_FIRST subscriber to DELTA_READY once a publication is queued for it.
Sans-I/O.
"""

from __future__ import annotations

import orjson

__all__ = ["COMPACT", "DELTA_FIRST", "DELTA_READY", "VARIANTS", "variant_push"]

COMPACT, DELTA_FIRST, DELTA_READY = 1, 2, 4
VARIANTS = 6  # compact or not, times three delta states


def variant_push(push: dict, variant: int, cid: int, delta: bytes | None, binary: bool) -> dict:
    """``push`` as a subscriber of ``variant`` gets it. A delta subscription's publication has its data as a
    JSON string on the JSON wire (Centrifugo's delta mode: the full JSON, or the fossil ``delta`` once the
    subscriber is ready for deltas, with ``delta: true``); on a binary wire (protobuf) the data bytes are the
    JSON, or the delta. ``delta`` None: the ready subscribers get the full data too."""
    pub = push.get("pub")
    state = variant >> 1
    if state and pub is not None:
        if state == 2 and delta is not None:
            pub = {**pub, "data": delta if binary else delta.decode(), "delta": True}
        elif not binary:
            pub = {**pub, "data": orjson.dumps(pub.get("data")).decode()}
        push = {**push, "pub": pub}
    if variant & COMPACT:
        push = {"id": cid, **{k: v for k, v in push.items() if k != "channel"}}
    return push

"""relay/protocol/fossil.py: every delta applies with centrifuge-python's own decoder (what an SDK runs) and with
relay's, to the exact target; a small change in a product page's 2 KB state is a small delta; a delta that does
not fit its source is refused."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import orjson
import pytest
from centrifuge.fossil import apply_delta as sdk_apply
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocol.fossil import DeltaError, apply_delta, checksum, create_delta


@settings(max_examples=300, deadline=None)
@given(source=st.binary(max_size=600), target=st.binary(max_size=600))
def test_any_delta_applies_with_the_sdks_decoder(source, target):
    delta = create_delta(source, target)
    assert sdk_apply(source, delta) == target
    assert apply_delta(source, delta) == target


@settings(max_examples=200, deadline=None)
@given(source=st.binary(min_size=17, max_size=3000), data=st.data())
def test_edits_of_a_source_apply(source, data):
    """Targets made by cutting, inserting and moving parts of the source: the copies are exercised."""
    target = bytearray(source)
    for _ in range(data.draw(st.integers(0, 5))):
        at = data.draw(st.integers(0, len(target)))
        if data.draw(st.booleans()):
            target[at:at] = data.draw(st.binary(max_size=40))
        else:
            del target[at:at + data.draw(st.integers(0, 40))]
    target = bytes(target)
    assert sdk_apply(source, create_delta(source, target)) == target


def stock_widget(rng: random.Random) -> dict:
    """The product page's stock widget state bench/delta.py measures (one definition, there)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from delta import stock_widget as widget

    return widget(rng)


def test_a_small_change_in_a_2kb_state_is_a_small_delta():
    rng = random.Random(7)
    state = stock_widget(rng)
    before = orjson.dumps(state)
    state["variants"][7]["stock"] -= 1  # one sale
    state["updated"] += 1
    after = orjson.dumps(state)
    assert 1900 < len(after) < 2300  # the state of a product page's stock widget
    delta = create_delta(before, after)
    assert sdk_apply(before, delta) == after
    assert len(delta) < len(after) / 20, (len(delta), len(after))


def test_a_delta_that_does_not_fit_is_refused():
    delta = create_delta(b"the old payload, long enough to be indexed", b"the new payload, long enough to be indexed")
    with pytest.raises(DeltaError):
        apply_delta(b"another source of a different length entirely", delta)
    with pytest.raises(DeltaError):
        apply_delta(b"", b"5\n3:abc" + b"0;")
    assert checksum(b"") == 0 and checksum(b"\x00\x00\x00\x01\x01") == 1 + (1 << 24)

"""Fossil deltas (the format of Fossil SCM's delta.c, which Centrifugo's ``delta: "fossil"`` uses): the bytes that
turn a source (a channel's previous publication) into a target (the new one), for subscribers that keep the
previous payload and apply the delta (centrifuge-js, centrifuge-python).

A delta is ``INT(len(target)) "\\n"``, then commands: ``INT(n) "@" INT(offset) ","`` copies n bytes of the source
from offset, ``INT(n) ":" <n bytes>`` inserts n literal bytes; it ends with ``INT(checksum(target)) ";"``.
Integers are base-64 digits, most significant first. The encoder indexes the source every 16 bytes with a
rolling hash and extends each match both ways, as the reference encoder does; any delta the reference decoder
accepts is valid, so the bytes need not equal another encoder's. ``apply_delta`` is the decoder, for tests and
tools. Sans-I/O, no dependencies.
"""

from __future__ import annotations

__all__ = ["create_delta", "apply_delta", "checksum", "DeltaError"]

NHASH = 16  # bytes per indexed block of the source, and the width of the rolling hash
_DIGITS = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~"
_VALUE = {c: i for i, c in enumerate(_DIGITS)}
_MAX_COLLISIONS = 250  # candidate source blocks tried per target position


class DeltaError(ValueError):
    """A delta that does not apply to the source it was given."""


def _int(v: int) -> bytes:
    if v == 0:
        return b"0"
    out = bytearray()
    while v > 0:
        out.append(_DIGITS[v & 0x3F])
        v >>= 6
    out.reverse()
    return bytes(out)


def _digits(v: int) -> int:
    """How many base-64 digits ``_int(v)`` has."""
    n, x = 1, 64
    while v >= x:
        n += 1
        x <<= 6
    return n


def checksum(data: bytes) -> int:
    """The sum, mod 2**32, of ``data`` read as big-endian 32-bit words (the last one zero-padded)."""
    pad = (-len(data)) % 4
    words = data + b"\0" * pad
    total = 0
    for i in range(0, len(words), 4):
        total += int.from_bytes(words[i:i + 4], "big")
    return total & 0xFFFFFFFF


def _hash(block: bytes) -> tuple[int, int]:
    a = b = 0
    for i, x in enumerate(block):
        a += x
        b += (NHASH - i) * x
    return a & 0xFFFF, b & 0xFFFF


def create_delta(source: bytes, target: bytes) -> bytes:
    """The delta from ``source`` to ``target``."""
    out = bytearray(_int(len(target)) + b"\n")
    len_src, len_out = len(source), len(target)
    if len_src <= NHASH:
        if len_out:
            out += _int(len_out) + b":" + target
        out += _int(checksum(target)) + b";"
        return bytes(out)
    n_hash = len_src // NHASH
    landmark = [-1] * n_hash
    collide = [-1] * n_hash
    for i in range(0, len_src - NHASH, NHASH):  # every full block of the source, in order
        a, b = _hash(source[i:i + NHASH])
        h = (a | (b << 16)) % n_hash
        collide[i // NHASH] = landmark[h]
        landmark[h] = i // NHASH
    base = 0
    while base + NHASH < len_out:
        best_cnt = best_ofst = best_lit = 0
        a, b = _hash(target[base:base + NHASH])
        i = 0
        while True:
            block = landmark[(a | (b << 16)) % n_hash]
            limit = _MAX_COLLISIONS
            while block >= 0 and limit > 0:
                limit -= 1
                i_src = block * NHASH
                j = 0  # bytes matching forwards from i_src / base + i
                while i_src + j < len_src and base + i + j < len_out and source[i_src + j] == target[base + i + j]:
                    j += 1
                k = 0  # and backwards, over the literal before it
                while k < i_src and k < i and source[i_src - k - 1] == target[base + i - k - 1]:
                    k += 1
                cnt = j + k
                ofst = i_src - k
                lit = i - k
                if cnt >= _digits(lit) + _digits(cnt) + _digits(ofst) + 3 and cnt > best_cnt:
                    best_cnt, best_ofst, best_lit = cnt, ofst, lit
                block = collide[block]
            if best_cnt:
                if best_lit:
                    out += _int(best_lit) + b":" + target[base:base + best_lit]
                    base += best_lit
                out += _int(best_cnt) + b"@" + _int(best_ofst) + b","
                base += best_cnt
                break
            if base + i + NHASH >= len_out:  # no match before the end: the rest is literal
                out += _int(len_out - base) + b":" + target[base:]
                base = len_out
                break
            old, new = target[base + i], target[base + i + NHASH]  # roll the hash one byte on
            a = (a - old + new) & 0xFFFF
            b = (b - NHASH * old + a) & 0xFFFF
            i += 1
    if base < len_out:
        out += _int(len_out - base) + b":" + target[base:]
    out += _int(checksum(target)) + b";"
    return bytes(out)


def _read_int(delta: bytes, pos: int) -> tuple[int, int]:
    v, start = 0, pos
    while pos < len(delta) and delta[pos] in _VALUE:
        v = (v << 6) + _VALUE[delta[pos]]
        pos += 1
    if pos == start:
        raise DeltaError("expected a number")
    return v, pos


def apply_delta(source: bytes, delta: bytes) -> bytes:
    """``target`` from ``source`` and the delta; DeltaError if they do not fit together."""
    size, pos = _read_int(delta, 0)
    if delta[pos:pos + 1] != b"\n":
        raise DeltaError("size integer not terminated by newline")
    pos += 1
    out = bytearray()
    while pos < len(delta):
        cnt, pos = _read_int(delta, pos)
        op = delta[pos:pos + 1]
        pos += 1
        if op == b"@":
            ofst, pos = _read_int(delta, pos)
            if delta[pos:pos + 1] != b",":
                raise DeltaError("copy command not terminated by ','")
            pos += 1
            if len(out) + cnt > size or ofst + cnt > len(source):
                raise DeltaError("copy exceeds the output or the source")
            out += source[ofst:ofst + cnt]
        elif op == b":":
            if len(out) + cnt > size or pos + cnt > len(delta):
                raise DeltaError("insert exceeds the output or the delta")
            out += delta[pos:pos + cnt]
            pos += cnt
        elif op == b";":
            if cnt != checksum(bytes(out)):
                raise DeltaError("bad checksum")
            if len(out) != size:
                raise DeltaError("generated size does not match the predicted size")
            return bytes(out)
        else:
            raise DeltaError("unknown delta operator")
    raise DeltaError("unterminated delta")

"""Redaction of payment-card numbers and configured patterns in client-published data.

A customer who types a card number into a support chat must not have it fanned out to the
agents, stored in history or sent to the backend. With ``redact_cards`` on a namespace,
every string in a client publication's data is scanned before anything else sees it
(publish hook, broker, history, subscribers). Sans-I/O: plain functions on JSON values.

What counts as a card number (each rule keeps a class of look-alikes out):

* a run of 13-19 digits, optionally grouped by single spaces or dashes, not touching more
  digits or separators-then-digits on either side (a 22-digit parcel number is not cut
  into a 19-digit "card");
* not preceded by ``+`` (international phone numbers) or a letter/digit glued to it
  (``NW-1042``, ``1Z999AA10123456784``);
* starting with an issuer prefix of a card scheme (Visa 4, Mastercard 51-55 and
  2221-2720, Amex 34/37, Discover 6011/644-649/65, JCB 3528-3589, Diners 300-305/36/38,
  UnionPay 62, Maestro 50/56-69);
* passing the Luhn check.

Order numbers, phone numbers, tracking codes and prices fail at least one of these; the
tests in tests/rules/test_redact.py list the ones we checked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

__all__ = ["luhn_ok", "card_brand_ok", "Redactor"]

# 13-19 digits with optional single space/dash separators, not glued to other digits,
# letters, '+' or a separator followed by more digits
_CARD = re.compile(r"(?<![\w+])(?<!\d[ -])\d(?:[ -]?\d){12,18}(?![ -]?\d)(?!\w)")
# the cheap test first: 13 digits in a row (single separators allowed) anywhere
_THIRTEEN = re.compile(r"\d(?:[ -]?\d){12}")
_PREFIXES = (
    ("4",), ("51", "52", "53", "54", "55"), ("34", "37"), ("6011", "65"), ("62",), ("36", "38"),
    ("300", "301", "302", "303", "304", "305"), ("50",), ("56", "57", "58", "59", "60", "61", "63", "66", "67",
                                                       "68", "69"),
)
_ALL_PREFIXES = tuple(p for group in _PREFIXES for p in group)


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a digit string."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_brand_ok(digits: str) -> bool:
    """Whether ``digits`` starts with an issuer prefix of a card scheme."""
    if digits.startswith(_ALL_PREFIXES):
        return True
    head4, head3 = int(digits[:4]), int(digits[:3])
    return 2221 <= head4 <= 2720 or 3528 <= head4 <= 3589 or 644 <= head3 <= 649


class Redactor:
    """One namespace's redaction: cards (optional) and extra patterns, replaced by ``replacement``."""

    __slots__ = ("cards", "patterns", "replacement")

    def __init__(self, cards: bool, patterns: Iterable[str] = (), replacement: str = "[redacted]") -> None:
        self.cards = cards
        self.patterns = [re.compile(p) for p in patterns]
        self.replacement = replacement

    def __bool__(self) -> bool:
        return self.cards or bool(self.patterns)

    def text(self, s: str) -> tuple[str, int, int]:
        """``s`` redacted, and how many card numbers and pattern matches were replaced."""
        cards = patterns = 0
        if self.cards and len(s) >= 13 and _THIRTEEN.search(s):
            def card(m: re.Match) -> str:
                nonlocal cards
                digits = m.group(0).replace(" ", "").replace("-", "")
                if card_brand_ok(digits) and luhn_ok(digits):
                    cards += 1
                    return self.replacement
                return m.group(0)

            s = _CARD.sub(card, s)
        for p in self.patterns:
            s, n = p.subn(self.replacement, s)
            patterns += n
        return s, cards, patterns

    def data(self, value: Any) -> tuple[Any, int, int]:
        """Every string in a JSON value (keys included) redacted; (value, cards, pattern matches)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            cards = pats = 0
            out = []
            for v in value:
                v, c, p = self.data(v)
                cards, pats = cards + c, pats + p
                out.append(v)
            return (out, cards, pats) if cards or pats else (value, 0, 0)
        if isinstance(value, dict):
            cards = pats = 0
            res = {}
            for k, v in value.items():
                k2, c1, p1 = self.text(k) if isinstance(k, str) else (k, 0, 0)
                v2, c2, p2 = self.data(v)
                cards, pats = cards + c1 + c2, pats + p1 + p2
                res[k2] = v2
            return (res, cards, pats) if cards or pats else (value, 0, 0)
        return value, 0, 0

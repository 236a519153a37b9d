"""The Northwind FAQ chatbot: rules, no I/O.

The backend hands it a customer's chat line, what the shop knows (:class:`Facts`: the
order the chat is about, stock of the products concerned) and the chat's
:class:`ChatState`; :func:`step` returns a :class:`Decision`: the next state, what the
bot says (or nothing), and whether the chat goes to a human agent. Storing messages,
reading the orders table and publishing through relay are the backend's job (app.py).

Every transition of the chat's state machine is in this table (``n`` is the number of
questions the bot could not answer so far, ``MAX_UNANSWERED`` = 2):

=============  ===================================  =============  ===================================
state          event                                next state     the bot
=============  ===================================  =============  ===================================
bot(n)         customer: a question it can answer   bot(n)         answers it
bot(n)         customer: can't answer, n+1 < 2      bot(n+1)       says what it can do, offers a person
bot(n)         customer: can't answer, n+1 = 2      handed_off     hands off: "a colleague is coming"
bot(n)         customer: asks for a person          handed_off     hands off: "a colleague is coming"
bot(n)         an agent writes in the chat          handed_off     nothing (a person took the chat)
handed_off     anything                             handed_off     nothing
=============  ===================================  =============  ===================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum

__all__ = ["Intent", "Order", "Facts", "ChatState", "Decision", "MAX_UNANSWERED", "SIZES", "classify",
           "size_in", "product_in", "chest_cm", "size_for_chest", "answer", "step", "BOT_NAME"]

BOT_NAME = "Northwind bot"
MAX_UNANSWERED = 2           #: the second question the bot cannot answer hands the chat over
SIZES = ("XS", "S", "M", "L", "XL", "XXL")
#: chest girth (cm) up to which each size fits, from the size chart
CHEST_CHART = (("XS", 85), ("S", 93), ("M", 101), ("L", 109), ("XL", 117), ("XXL", 125))
RETURN_DAYS = 30


class Intent(StrEnum):
    HUMAN = "human"
    REFUND = "refund"
    STOCK = "stock"
    ORDER_STATUS = "order_status"
    SIZE = "size"
    GREETING = "greeting"
    THANKS = "thanks"
    UNKNOWN = "unknown"


# Checked in this order: the first match wins ("is size M in stock?" is about stock,
# "where is my refund?" about refunds, "hi, where is my order?" about the order).
_RULES: tuple[tuple[Intent, re.Pattern[str]], ...] = tuple((intent, re.compile(rx)) for intent, rx in (
    (Intent.HUMAN, r"\b(human|agent|person|operator|representative)\b"
                   r"|\b(talk|speak|chat) (to|with) (someone|somebody|a real|a live|staff)\b"),
    (Intent.REFUND, r"\b(refunds?|refunded|returns?|returning|send (it )?back|money back|exchange)\b"),
    (Intent.STOCK, r"\b(in stock|stock|available|availability|sold out|restock|do you (still )?have|"
                   r"have you got|any left)\b"),
    (Intent.ORDER_STATUS, r"\b(where('?s| is) my|order status|status of my|track(ing)?|arrive[ds]?|arriving|"
                          r"deliver(y|ed)?|shipped|shipping|dispatched|when will (it|my order)|my order|"
                          r"my parcel|my package)\b"),
    (Intent.SIZE, r"\b(size|sizes|sizing|fit|fits|too (small|big|large|tight)|chest|measure(ment)?s?|"
                  r"which size|what size)\b"),
    (Intent.GREETING, r"^\s*(hi|hello|hey|good (morning|afternoon|evening)|hallo)\b"),
    (Intent.THANKS, r"\b(thanks|thank you|thx|cheers)\b"),
))

_SIZE_WORD = re.compile(r"\bsize\s+(xxl|xl|xs|s|m|l)\b", re.IGNORECASE)
_SIZE_TOKEN = re.compile(r"\b(XXL|XL|XS|S|M|L)\b")   # capitals only: "I'm" has no size in it
_SIZE_NAMES = {"extra small": "XS", "small": "S", "medium": "M", "extra large": "XL", "large": "L"}
_MEASURE = re.compile(r"(\d{2,3}(?:[.,]\d)?)\s*(cm|centimet(?:er|re)s?|in\b|inch(?:es)?|\")?", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Order:
    """The order a support chat is about, as the orders table says."""

    id: int
    status: str
    updated_at: datetime
    product: str
    size: str | None = None


@dataclass(frozen=True, slots=True)
class Facts:
    """What the bot may answer from: the chat's order and stock (product -> size -> quantity)."""

    order: Order | None = None
    stock: Mapping[str, Mapping[str, int]] | None = None


@dataclass(frozen=True, slots=True)
class ChatState:
    """One support chat's bot state, kept by the backend between messages."""

    unanswered: int = 0
    handed_off: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    """What :func:`step` decided: the next state, the bot's reply (None: stay quiet), a hand-off."""

    state: ChatState
    intent: Intent
    reply: str | None = None
    handoff: bool = False


def classify(text: str) -> Intent:
    """The intent of a customer's chat line (first matching rule, see ``_RULES``)."""
    low = " ".join(text.lower().replace("’", "'").split())
    for intent, rx in _RULES:
        if rx.search(low):
            return intent
    return Intent.UNKNOWN


def size_in(text: str) -> str | None:
    """The clothing size a line names: "size m", a capital "XL", or "medium"; None when it names none."""
    m = _SIZE_WORD.search(text) or _SIZE_TOKEN.search(text)
    if m:
        return m.group(1).upper()
    low = text.lower()
    for word, size in _SIZE_NAMES.items():   # "extra large" before "large"
        if re.search(rf"\b{word}\b", low):
            return size
    return None


def product_in(text: str, products: list[str] | tuple[str, ...]) -> str | None:
    """The longest product name that occurs in the line (case-insensitive), or None."""
    low = text.lower()
    found = [p for p in products if p.lower() in low]
    return max(found, key=len) if found else None


def chest_cm(text: str) -> float | None:
    """A chest measurement in the line, in cm ("98 cm", "38 in", a bare 70-140 is cm, 30-56 inches)."""
    for m in _MEASURE.finditer(text):
        value = float(m.group(1).replace(",", "."))
        unit = (m.group(2) or "").lower()
        if unit.startswith(("in", '"')) or (not unit and 30 <= value <= 56):
            value *= 2.54
        if 60 <= value <= 150:
            return value
    return None


def size_for_chest(cm: float) -> str | None:
    """The size chart's size for a chest girth; None when it is beyond the chart."""
    for size, upto in CHEST_CHART:
        if cm <= upto:
            return size
    return None


def _when(ts: datetime) -> str:
    ts = ts.astimezone(UTC) if ts.tzinfo else ts.replace(tzinfo=UTC)
    return ts.strftime("%d %b, %H:%M UTC")


_STATUS_LINES = {
    "paid": "we have your payment and will pack it soon",
    "packed": "it is packed and waits for the courier",
    "shipped": "it is on its way",
    "out for delivery": "the courier brings it today",
    "delivered": "it has been delivered",
    "cancelled": "it was cancelled; the refund goes back to your card",
}


def _order_status(facts: Facts) -> str | None:
    o = facts.order
    if o is None:
        return None
    what = f"{o.product}, size {o.size}" if o.size else o.product
    extra = _STATUS_LINES.get(o.status)
    return (f"Your order #{o.id} ({what}) is {o.status}{': ' + extra if extra else ''}. "
            f"Last update: {_when(o.updated_at)}.")


def _stock(text: str, facts: Facts) -> str | None:
    stock = facts.stock or {}
    product = product_in(text, list(stock)) or (facts.order.product if facts.order else None)
    if product is None or product not in stock:
        return None
    sizes = stock[product]
    size = size_in(text)
    if size is None:
        listed = ", ".join(f"{s} ({n})" if n > 0 else f"{s} (sold out)" for s, n in _by_size(sizes))
        return f"{product} in stock: {listed}."
    if size not in sizes:
        return f"{product} does not come in size {size}; sizes: {', '.join(s for s, _ in _by_size(sizes))}."
    n = sizes[size]
    if n <= 0:
        return f"Sorry, {product} in size {size} is sold out right now."
    return f"Yes: {n} × {product} in size {size} in stock."


def _by_size(sizes: Mapping[str, int]) -> list[tuple[str, int]]:
    rank = {s: i for i, s in enumerate(SIZES)}
    return sorted(sizes.items(), key=lambda kv: (rank.get(kv[0], len(SIZES)), kv[0]))


def _size_advice(text: str) -> str:
    cm = chest_cm(text)
    if cm is not None:
        size = size_for_chest(cm)
        if size is None:
            return f"A {cm:.0f} cm chest is beyond our chart (XXL fits up to 125 cm), sorry."
        return f"For a {cm:.0f} cm chest we recommend size {size}. Between two sizes? Take the larger one."
    chart = ", ".join(f"{s} up to {cm} cm" for s, cm in CHEST_CHART)
    return (f"Our sizes follow chest girth: {chart}. Tell me your chest measurement and I'll pick one; "
            f"our jackets fit true to size.")


_REFUND = (f"You can return unworn items within {RETURN_DAYS} days of delivery for a full refund: start the "
           f"return under My orders and use the prepaid label. The refund reaches your card 5-7 days after "
           f"the parcel arrives at our warehouse.")
_GREETING = (f"Hi! I'm the {BOT_NAME}. Ask me where your order is, about stock and sizes, or about returns; "
             f"type \"agent\" to talk to a person.")
_THANKS = "You're welcome! Anything else?"
_DONT_KNOW = ("Sorry, I can't answer that. I know about your order's status, stock and sizes, and returns; "
              "type \"agent\" to talk to a person.")
_HANDOFF = "I'm passing you to a colleague: an agent will join this chat shortly."


def answer(intent: Intent, text: str, facts: Facts) -> str | None:
    """The bot's answer to a question of ``intent``; None when it cannot answer it (no facts, no rule)."""
    if intent is Intent.ORDER_STATUS:
        return _order_status(facts)
    if intent is Intent.STOCK:
        return _stock(text, facts)
    if intent is Intent.SIZE:
        return _size_advice(text)
    if intent is Intent.REFUND:
        return _REFUND
    if intent is Intent.GREETING:
        return _GREETING
    if intent is Intent.THANKS:
        return _THANKS
    return None


def step(state: ChatState, text: str, facts: Facts, *, from_agent: bool = False) -> Decision:
    """One chat line through the state machine (the table in the module docstring)."""
    if state.handed_off:
        return Decision(state, Intent.UNKNOWN)
    if from_agent:
        return Decision(replace(state, handed_off=True), Intent.UNKNOWN)
    intent = classify(text)
    if intent is Intent.HUMAN:
        return Decision(replace(state, handed_off=True), intent, _HANDOFF, handoff=True)
    reply = answer(intent, text, facts)
    if reply is not None:
        return Decision(state, intent, reply)
    unanswered = state.unanswered + 1
    if unanswered >= MAX_UNANSWERED:
        return Decision(ChatState(unanswered, handed_off=True), intent, _HANDOFF, handoff=True)
    return Decision(ChatState(unanswered), intent, _DONT_KNOW)

"""The FAQ bot's rules and state machine (bot.py): plain function calls, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from examples.shop_backend import bot
from examples.shop_backend.bot import ChatState, Facts, Intent, Order

ORDER = Order(42, "shipped", datetime(2024, 5, 14, 10, 32, tzinfo=UTC), "Trail jacket", "M")
STOCK = {"Trail jacket": {"S": 3, "M": 7, "L": 0, "XL": 2}, "Merino beanie": {"M": 12}}
FACTS = Facts(ORDER, STOCK)


@pytest.mark.parametrize(("text", "intent"), [
    ("Where is my order?", Intent.ORDER_STATUS),
    ("where’s my parcel", Intent.ORDER_STATUS),
    ("hi, where is my order?", Intent.ORDER_STATUS),
    ("When will it arrive?", Intent.ORDER_STATUS),
    ("has it shipped yet", Intent.ORDER_STATUS),
    ("Is the Trail jacket in size M in stock?", Intent.STOCK),
    ("do you have it in XL", Intent.STOCK),
    ("is it available in large?", Intent.STOCK),
    ("What size should I get?", Intent.SIZE),
    ("does it fit true to size", Intent.SIZE),
    ("I want a refund", Intent.REFUND),
    ("where is my refund?", Intent.REFUND),   # refunds before order status
    ("can I return it", Intent.REFUND),
    ("I want to talk to a person", Intent.HUMAN),
    ("AGENT", Intent.HUMAN),
    ("can I speak to someone please", Intent.HUMAN),
    ("Hello!", Intent.GREETING),
    ("thanks a lot", Intent.THANKS),
    ("what's the meaning of life", Intent.UNKNOWN),
    ("I'm not sure about the colour", Intent.UNKNOWN),
    ("", Intent.UNKNOWN),
])
def test_classify(text, intent):
    assert bot.classify(text) is intent


@pytest.mark.parametrize(("text", "size"), [
    ("size m please", "M"), ("Size XL?", "XL"), ("do you have L", "L"), ("extra large", "XL"), ("medium", "M"),
    ("I'm asking about it", None),   # the m of I'm is not a size
    ("is it in stock", None),
])
def test_size_in(text, size):
    assert bot.size_in(text) == size


def test_product_in_prefers_the_longest_name():
    assert bot.product_in("the merino BEANIE", ["Merino beanie", "Beanie"]) == "Merino beanie"
    assert bot.product_in("a hat", ["Merino beanie"]) is None


@pytest.mark.parametrize(("text", "cm", "size"), [
    ("my chest is 98 cm", 98, "M"), ("38 inch chest", 96.52, "M"), ('40"', 101.6, "L"), ("chest 84", 84, "XS"),
    ("I'm 180 tall, chest 112", 112, "XL"), ("130cm chest", 130, None),
])
def test_chest_and_size_chart(text, cm, size):
    assert bot.chest_cm(text) == pytest.approx(cm)
    assert bot.size_for_chest(bot.chest_cm(text)) == size


def test_order_status_answer_says_status_and_update_time():
    text = bot.answer(Intent.ORDER_STATUS, "where is my order", FACTS)
    assert text == ("Your order #42 (Trail jacket, size M) is shipped: it is on its way. "
                    "Last update: 14 May, 10:32 UTC.")
    local = Order(7, "delivered", datetime(2024, 5, 14, 12, 0, tzinfo=timezone(timedelta(hours=2))), "Beanie")
    assert bot.answer(Intent.ORDER_STATUS, "", Facts(local)) == ("Your order #7 (Beanie) is delivered: it has been "
                                                                 "delivered. Last update: 14 May, 10:00 UTC.")
    assert bot.answer(Intent.ORDER_STATUS, "where is my order", Facts()) is None  # nothing to answer from


@pytest.mark.parametrize(("text", "reply"), [
    ("is size M in stock?", "Yes: 7 × Trail jacket in size M in stock."),
    ("do you have L", "Sorry, Trail jacket in size L is sold out right now."),
    ("any left in XS?", "Trail jacket does not come in size XS; sizes: S, M, L, XL."),
    ("is it in stock", "Trail jacket in stock: S (3), M (7), L (sold out), XL (2)."),
    ("is the merino beanie in stock in M", "Yes: 12 × Merino beanie in size M in stock."),  # named, not the order's
])
def test_stock_answers(text, reply):
    assert bot.answer(Intent.STOCK, text, FACTS) == reply


def test_stock_without_a_known_product_is_not_answered():
    assert bot.answer(Intent.STOCK, "is it in stock", Facts(None, STOCK)) is None
    assert bot.answer(Intent.STOCK, "is it in stock", Facts(ORDER, {})) is None


def test_size_refund_greeting_always_answer():
    assert "size M" in bot.answer(Intent.SIZE, "chest 98 cm, which size?", FACTS)
    assert "Tell me your chest measurement" in bot.answer(Intent.SIZE, "which size?", FACTS)
    assert "30 days" in bot.answer(Intent.REFUND, "refund", Facts())
    assert "agent" in bot.answer(Intent.GREETING, "hi", Facts())
    assert bot.answer(Intent.UNKNOWN, "hmm", FACTS) is None
    assert bot.answer(Intent.HUMAN, "agent", FACTS) is None  # a hand-off, not an answer


# ---------------------------------------------------------------- the state machine (the docstring's table)

def test_answerable_questions_keep_the_bot_in_charge():
    d = bot.step(ChatState(), "where is my order?", FACTS)
    assert (d.state, d.intent, d.handoff) == (ChatState(), Intent.ORDER_STATUS, False)
    assert d.reply.startswith("Your order #42")


def test_asking_for_a_person_hands_off_at_once():
    d = bot.step(ChatState(), "can I talk to a human?", FACTS)
    assert d.handoff and d.state == ChatState(0, handed_off=True) and "agent will join" in d.reply


def test_second_unanswered_question_hands_off():
    d1 = bot.step(ChatState(), "what's the meaning of life", FACTS)
    assert d1.state == ChatState(1) and not d1.handoff and "can't answer" in d1.reply
    d2 = bot.step(d1.state, "where is my order", FACTS)          # answered: the count stays
    assert d2.state == ChatState(1) and not d2.handoff
    d3 = bot.step(d2.state, "do you gift wrap?", FACTS)
    assert d3.state == ChatState(2, handed_off=True) and d3.handoff and "agent will join" in d3.reply


def test_an_agent_message_takes_the_chat_silently():
    d = bot.step(ChatState(1), "Hi, Grace here", Facts(), from_agent=True)
    assert d == bot.Decision(ChatState(1, handed_off=True), Intent.UNKNOWN)


@pytest.mark.parametrize("text", ["where is my order", "agent!", "what?"])
def test_after_a_hand_off_the_bot_is_quiet(text):
    state = ChatState(2, handed_off=True)
    assert bot.step(state, text, FACTS) == bot.Decision(state, Intent.UNKNOWN)
    assert bot.step(state, text, FACTS, from_agent=True) == bot.Decision(state, Intent.UNKNOWN)


def test_unanswerable_order_question_counts_as_unanswered():
    """A chat without an order to read (say, it was deleted): "where is my order" cannot be answered."""
    d = bot.step(ChatState(1), "where is my order", Facts())
    assert d.handoff and d.intent is Intent.ORDER_STATUS

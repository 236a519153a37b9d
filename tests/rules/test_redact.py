"""relay/rules/redact.py: card numbers out, look-alikes in."""

import pytest

from relay.rules.redact import Redactor, card_brand_ok, luhn_ok

R = Redactor(cards=True)

# test numbers the card schemes publish, as customers type them
CARDS = [
    "4111 1111 1111 1111",        # Visa
    "4111-1111-1111-1111",
    "4242424242424242",
    "4012888888881881",
    "5555 5555 5555 4444",        # Mastercard
    "2223 0031 2200 3222",        # Mastercard 2-series
    "3782 822463 10005",          # Amex, 15 digits in 4-6-5
    "6011 1111 1111 1117",        # Discover
    "3530 1113 3330 0000",        # JCB
    "3056 9309 0259 04",          # Diners, 14 digits
    "6200 0000 0000 0005",        # UnionPay
    "6759649826438453",           # Maestro
    "4222222222222",              # Visa, 13 digits
]

# what a shop chat is full of and must stay as typed
KEEP = [
    "my order NW-1042 has not arrived",
    "order 100234567 from last week",
    "order number 7001234567890",              # 13 digits, no card scheme starts with 70
    "call me on +49 151 23456789",             # international phone numbers
    "or +1 415-555-2671",
    "my mobile is 0151 23456789",
    "(415) 555-2671",
    "UPS 1Z999AA10123456784",                  # tracking codes
    "USPS 9400 1000 0000 0000 0000 00",        # 22 digits: not a 19-digit card in disguise
    "DHL JJD014600006281230731",
    "FedEx 961234567890123",
    "it was €1,299.00, now 129.99 EUR",        # prices
    "1 299 € or 12 345,67 €",
    "4111 1111 1111 1112",                     # fails Luhn
    "411111111111",                            # 12 digits
    "41111111111111111111",                    # 20 digits
    "4111111111111111a",                       # glued to a letter: a code, not a typed card
    "ref 2019-12-31 10:45",
]


@pytest.mark.parametrize("card", CARDS)
def test_card_numbers_are_redacted(card):
    out, cards, pats = R.text(f"my card is {card}, expiry 12/27")
    assert out == "my card is [redacted], expiry 12/27" and (cards, pats) == (1, 0)


@pytest.mark.parametrize("text", KEEP)
def test_look_alikes_are_kept(text):
    assert R.text(text) == (text, 0, 0)


def test_luhn_and_brands():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert card_brand_ok("2720990000000000") and not card_brand_ok("2721000000000000")
    assert card_brand_ok("6449000000000000") and not card_brand_ok("7000000000000000")


def test_json_values_are_walked_and_left_alone_when_clean():
    data = {"text": "card 4111 1111 1111 1111 and 5555555555554444", "items": ["ok", {"note": "4242424242424242"}],
            "n": 4111111111111111, "ok": True}
    out, cards, pats = R.data(data)
    assert out == {"text": "card [redacted] and [redacted]", "items": ["ok", {"note": "[redacted]"}],
                   "n": 4111111111111111, "ok": True}  # numbers are not typed text: kept
    assert (cards, pats) == (3, 0)
    clean = {"text": "where is my order?"}
    assert R.data(clean)[0] is clean


def test_patterns_and_replacement():
    r = Redactor(cards=False, patterns=[r"\bIBAN\s*[A-Z]{2}\d{2}(?: ?\d){10,30}", r"\bpassword\s*[:=]\s*[^\s,]+"],
                 replacement="***")
    out, cards, pats = r.text("IBAN DE89 3704 0044 0532 0130 00 and password: hunter2, card 4111111111111111")
    assert out == "*** and ***, card 4111111111111111" and (cards, pats) == (0, 2)
    assert not Redactor(cards=False)

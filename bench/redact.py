"""Cost of card-number redaction per chat message (relay/rules/redact.py), in one process.

    .venv/bin/python bench/redact.py

Prints microseconds per message for typical chat texts with redaction on, against the same
messages passed through unchanged (the namespace without redaction), and writes
bench/results/redact-<stamp>.json.
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description, write_result  # noqa: E402

from relay.rules.redact import Redactor  # noqa: E402

MESSAGES = {
    "short question": {"type": "msg", "text": "Do you have the Storm Shell in size M?", "mid": "a1b2c3"},
    "order and phone": {"type": "msg", "text": "Order NW-1042, please call me on +49 151 23456789", "mid": "a1b2"},
    "card number": {"type": "msg", "text": "charge 4111 1111 1111 1111 instead please, exp 12/27", "mid": "a1b2"},
    "long text": {"type": "msg", "text": "I ordered two jackets last week " * 20, "mid": "a1b2c3"},
}


def main() -> int:
    red = Redactor(cards=True)
    rows = []
    for name, msg in MESSAGES.items():
        n = 20000
        on = min(timeit.repeat(lambda m=msg: red.data(m), number=n, repeat=5)) / n * 1e6
        rows.append({"message": name, "us_per_message": round(on, 3)})
        print(f"  {name:<16} {on:7.3f} us per message with redact_cards on")
    path = write_result("redact", {"machine": machine_description(), "results": rows})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""relay's shop chat demo on this backend, in a real browser: the backend (``--demo``, a subprocess:
Playwright's sync API holds this thread) serves the pages and logs people in by cookie, relay runs
with examples/shop_backend/relay.demo.toml (free ports), PostgreSQL as in conftest.py.

A customer asks the bot where the order is and for a person; the agent console gets the hand-off
with the conversation, the agent answers, and pushes an order status through relay's outbox.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from examples.shop_backend.app import COOKIE
from examples.shop_backend.tests.conftest import need, outbox_unavailable
from relay.testing import RelayProcess, ServerProcess, free_port, http_ok
from tests.browser.conftest import screenshot

DEMO_TOML = Path(__file__).resolve().parent.parent / "relay.demo.toml"
DEMO_BACKEND = "http://127.0.0.1:9000"   # where relay.demo.toml expects the backend


def demo_relay_config(backend: str, dsn: str) -> dict:
    """relay.demo.toml with free ports (RelayProcess picks them), the hooks at ``backend``, the pages of
    ``backend`` as the allowed origin and the test database as the outbox."""
    cfg = tomllib.loads(DEMO_TOML.read_text())
    for key in ("ws_port", "tcp_port", "api_port"):
        cfg.pop(key)
    endpoints = {k: v for k, v in cfg["proxy"].items() if k.endswith("_endpoint")}
    assert endpoints and all(v.startswith(f"{DEMO_BACKEND}/relay/") for v in endpoints.values()), endpoints
    cfg["proxy"] |= {k: backend + v[len(DEMO_BACKEND):] for k, v in endpoints.items()}
    assert DEMO_BACKEND in cfg["allowed_origins"]
    return cfg | {"allowed_origins": [backend], "outbox_dsn": dsn, "outbox_poll_interval": 0.5, "drain_window": 0.5}


class Backend(ServerProcess):
    """``python -m examples.shop_backend --demo ...`` on ``port``, ready when /healthz answers."""

    name = "shop-backend"

    def __init__(self, port: int, args: list[str]) -> None:
        super().__init__()
        self.port = port
        self.args = args

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "examples.shop_backend", "--demo", "--host", "127.0.0.1",
                "--port", str(self.port), *self.args]

    def ready(self) -> bool:
        return http_ok(f"http://127.0.0.1:{self.port}/healthz")


def _run(coro) -> None:
    """Run a coroutine to the end on a loop of its own thread (Playwright's may be this thread's)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="module")
def stack(shop_dsn):
    why = outbox_unavailable()
    if why:
        need(why)
    from relay.integrations.outbox import init_table

    _run(init_table(shop_dsn))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    relay = RelayProcess(demo_relay_config(base, shop_dsn))
    backend = Backend(port, ["--dsn", shop_dsn, "--relay-api", f"http://127.0.0.1:{relay.api_port}",
                             "--relay-api-key", relay.api_key, "--bot-delay", "0.05",
                             "--relay-ws-url", f"ws://{{host}}:{relay.ws_port}/connection/websocket"])
    try:
        relay.start()
        backend.start()
        yield SimpleNamespace(relay=relay, backend=backend, base=base)
    finally:
        backend.cleanup()
        relay.cleanup()


def send(page, text: str) -> None:
    page.get_by_test_id("chat-input").fill(text)
    page.get_by_test_id("chat-send").click()


def messages(page):
    return page.get_by_test_id("messages").get_by_test_id("message")


def test_bot_hand_off_agent_answer_and_order_status_on_the_backend(stack, new_page):
    from playwright.sync_api import expect

    # the customer: logged in by the backend's cookie, no token; one order, its chat
    customer = new_page(f"{stack.base}/demo/shop")
    expect(customer.get_by_test_id("conn-state")).to_have_text("connected")
    me = customer.evaluate("(({user, token, channels}) => ({user, token, channels}))(window.relayDemo.session)")
    assert me["token"] is None and re.fullmatch(r"c-\d+", me["user"]), me
    order = int(me["channels"]["chat"].removeprefix("support:order-"))
    assert me["channels"] == {"chat": f"support:order-{order}", "typing": f"typing:order-{order}",
                              "orders": f"orders:{me['user']}#{me['user']}", "sale": "sale:flash",
                              "agents": "agents:online"}
    cookie = next(c for c in customer.context.cookies() if c["name"] == COOKIE)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/"
    status = customer.get_by_test_id("order-status")
    expect(status).to_contain_text(f"#{order}")
    expect(status).to_contain_text("packed")

    # the agent's console hears of the new chat (the customer is there)
    agent = new_page(f"{stack.base}/demo/agent?name=Anna")
    expect(agent.get_by_test_id("conn-state")).to_have_text("connected")
    item = agent.get_by_test_id("chat-list").locator(f'[data-testid="chat-item"][data-customer="{me["user"]}"]')
    expect(item.get_by_test_id("presence")).to_have_attribute("data-online", "true")
    expect(customer.get_by_test_id("agent-status")).to_contain_text("online")

    # the bot answers from the orders table, then hands the chat to a person
    send(customer, "Hi, where is my order?")
    answer = messages(customer).filter(has_text=f"Your order #{order}")
    expect(answer).to_have_count(1)
    expect(answer).to_contain_text("is packed")
    expect(answer).to_have_attribute("data-from", "bot")
    expect(answer.locator(".who")).to_have_text("Northwind bot")
    send(customer, "Can I talk to a person, please?")
    expect(messages(customer).filter(has_text="an agent will join")).to_have_count(1)
    expect(item).to_have_attribute("data-handoff", "true")
    expect(item.get_by_test_id("handoff-flag")).to_be_visible()

    # the agent opens it: the conversation so far, and reading it shows as "read"
    item.click()
    for text in ("Hi, where is my order?", f"Your order #{order}", "talk to a person", "an agent will join"):
        expect(messages(agent).filter(has_text=text)).to_have_count(1)
    expect(agent.get_by_test_id("system-line").filter(has_text="handed this chat")).to_have_count(1)
    expect(messages(customer).filter(has_text="talk to a person")).to_have_attribute("data-status", "read")

    # typing (the typing: channel, through the hooks), then the agent's answer
    agent.get_by_test_id("chat-input").press_sequentially("Let me check", delay=30)
    expect(customer.get_by_test_id("typing")).to_contain_text("Anna is typing")
    send(agent, "Hi, Anna here: your jacket leaves the warehouse today.")
    reply = messages(customer).filter(has_text="Anna here")
    expect(reply).to_have_count(1)
    expect(reply).to_have_attribute("data-from", re.compile(r"^a-\d+$"))
    expect(messages(agent).filter(has_text="Anna here")).to_have_attribute("data-status", "read")

    # the agent pushes a status: set_order_status -> relay's outbox -> the customer's orders: channel
    expect(agent.get_by_test_id("order-number")).to_have_value(str(order))
    agent.get_by_test_id("order-status-select").select_option("shipped")
    agent.get_by_test_id("push-status").click()
    expect(agent.get_by_test_id("push-result")).to_contain_text("Sent")
    expect(status).to_contain_text("shipped")
    expect(customer.get_by_test_id("system-line").filter(has_text=f"#{order} is now shipped")).to_have_count(1)
    screenshot(customer, "backend-customer")
    screenshot(agent, "backend-agent")

    # a reload: the same person by the cookie, the chat from relay's history, the status from the database
    customer.reload()
    expect(customer.get_by_test_id("conn-state")).to_have_text("connected")
    assert customer.evaluate("window.relayDemo.user") == me["user"]
    expect(messages(customer)).to_have_count(5)
    expect(status).to_contain_text("shipped")

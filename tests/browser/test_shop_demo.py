"""The shop chat demo in a real browser: a customer (product page with a chat widget) and an agent
(console) in separate browser contexts, on the published Centrifugo JS SDK, against a real relay."""

from __future__ import annotations

import json
import re
import urllib.request

from playwright.sync_api import expect

from tests.browser.conftest import screenshot


def base(relay) -> str:
    return f"http://127.0.0.1:{relay.api_port}"


def open_customer(new_page, relay):
    page = new_page(f"{base(relay)}/demo/shop")
    expect(page.get_by_test_id("conn-state")).to_have_text("connected")
    return page


def open_agent(new_page, relay, name="Anna"):
    page = new_page(f"{base(relay)}/demo/agent?name={name}")
    expect(page.get_by_test_id("conn-state")).to_have_text("connected")
    return page


def customer_id(page) -> str:
    return page.evaluate("window.relayDemo.user")


def send(page, text: str) -> None:
    page.get_by_test_id("chat-input").fill(text)
    page.get_by_test_id("chat-send").click()


def messages(page):
    return page.get_by_test_id("messages").get_by_test_id("message")


def open_chat(agent, customer: str):
    item = agent.get_by_test_id("chat-list").locator(f'[data-testid="chat-item"][data-customer="{customer}"]')
    expect(item).to_be_visible()
    item.click()
    return item


def api_publish(relay, channel: str, data: dict) -> dict:
    body = json.dumps({"channel": channel, "data": data}).encode()
    req = urllib.request.Request(f"{base(relay)}/api/publish", data=body,
                                 headers={"X-API-Key": relay.api_key, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def test_customer_and_agent_chat_both_ways_with_typing_presence_and_receipts(demo_relay, new_page):
    customer = open_customer(new_page, demo_relay)
    cid = customer_id(customer)
    expect(customer.get_by_test_id("agent-status")).to_contain_text("offline")

    agent = open_agent(new_page, demo_relay)
    # the agent's subscriptions (agents:online, the customer's chat) reach the customer's widget
    expect(customer.get_by_test_id("agent-status")).to_contain_text("online")
    item = agent.get_by_test_id("chat-list").locator(f'[data-testid="chat-item"][data-customer="{cid}"]')
    expect(item.get_by_test_id("presence")).to_have_attribute("data-online", "true")

    # customer -> agent, while the agent looks elsewhere: an unread badge, then "delivered"
    send(customer, "Hi! Do you have the Alpine jacket in size M?")
    mine = messages(customer).filter(has_text="Alpine jacket")
    expect(mine).to_have_count(1)
    expect(item.get_by_test_id("unread")).to_have_text("1")
    expect(mine).to_have_attribute("data-status", re.compile("delivered|read"))

    # the agent opens the chat: it reads the message, the customer sees "read"
    open_chat(agent, cid)
    expect(messages(agent).filter(has_text="Alpine jacket")).to_have_count(1)
    expect(mine).to_have_attribute("data-status", "read")
    expect(item.get_by_test_id("unread")).to_have_text(re.compile(r"^0?$"))

    # typing indicator, agent -> customer
    expect(customer.get_by_test_id("typing")).to_have_text(re.compile(r"^\s*$"))
    agent.get_by_test_id("chat-input").press_sequentially("Let me check", delay=30)
    expect(customer.get_by_test_id("typing")).to_contain_text("typing")

    # agent -> customer
    agent.get_by_test_id("chat-input").fill("Yes, size M is in stock in both colours.")
    agent.get_by_test_id("chat-send").click()
    reply = messages(customer).filter(has_text="size M is in stock")
    expect(reply).to_have_count(1)
    expect(reply).to_have_attribute("data-from", "a-anna")
    expect(customer.get_by_test_id("typing")).to_have_text(re.compile(r"^\s*$"))
    expect(messages(agent).filter(has_text="size M is in stock")).to_have_attribute("data-status", "read")

    screenshot(customer, "shop-customer")
    screenshot(agent, "shop-agent")

    # the customer leaves: the agent's console shows it
    customer.context.close()
    expect(item.get_by_test_id("presence")).to_have_attribute("data-online", "false")


def test_reload_restores_history(demo_relay, new_page):
    customer = open_customer(new_page, demo_relay)
    cid = customer_id(customer)
    agent = open_agent(new_page, demo_relay)
    open_chat(agent, cid)
    for text in ("first question", "second question"):
        send(customer, text)
    agent.get_by_test_id("chat-input").fill("an answer")
    agent.get_by_test_id("chat-send").click()
    expect(messages(customer)).to_have_count(3)
    before = [m.get_attribute("data-mid") for m in messages(customer).all()]

    customer.reload()
    expect(customer.get_by_test_id("conn-state")).to_have_text("connected")
    assert customer_id(customer) == cid  # same person, same private chat
    expect(messages(customer)).to_have_count(3)
    assert [m.get_attribute("data-mid") for m in messages(customer).all()] == before
    expect(messages(customer).filter(has_text="first question")).to_have_attribute("data-status", "read")

    # the agent's console survives a reload too
    agent.reload()
    expect(agent.get_by_test_id("conn-state")).to_have_text("connected")
    open_chat(agent, cid)
    expect(messages(agent)).to_have_count(3)


def test_order_status_from_the_server_api_and_the_agent_console(demo_relay, new_page):
    customer = open_customer(new_page, demo_relay)
    cid = customer_id(customer)
    result = api_publish(demo_relay, f"orders:{cid}#{cid}", {"order": "NW-1042", "status": "packed"})
    assert "result" in result, result
    expect(customer.get_by_test_id("order-status")).to_contain_text("NW-1042")
    expect(customer.get_by_test_id("order-status")).to_contain_text("packed")

    agent = open_agent(new_page, demo_relay)
    open_chat(agent, cid)
    agent.get_by_test_id("order-number").fill("NW-1042")
    agent.get_by_test_id("order-status-select").select_option("out for delivery")
    agent.get_by_test_id("push-status").click()
    expect(customer.get_by_test_id("order-status")).to_contain_text("out for delivery")

    customer.reload()  # the latest status comes back from the channel's history
    expect(customer.get_by_test_id("order-status")).to_contain_text("out for delivery")


def test_sale_announcement_reaches_every_open_shop_page(demo_relay, new_page):
    shoppers = [open_customer(new_page, demo_relay) for _ in range(3)]
    agent = open_agent(new_page, demo_relay)
    agent.get_by_test_id("sale-text").fill("SALE STARTS NOW: 30% off every jacket")
    agent.get_by_test_id("announce-sale").click()
    for page in shoppers:
        expect(page.get_by_test_id("sale-banner")).to_contain_text("SALE STARTS NOW")
    api_publish(demo_relay, "sale:flash", {"text": "Last hour of the sale"})
    for page in shoppers:
        expect(page.get_by_test_id("sale-banner")).to_contain_text("Last hour")
    screenshot(shoppers[0], "shop-sale-banner")

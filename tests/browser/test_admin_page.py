"""The admin page in a real browser: it logs in with the API key (or an admin token), counts the
connections the shop pages opened, names the active core, and publishes a test message."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from relay.auth import make_connect_token
from tests.browser.conftest import screenshot
from tests.browser.test_shop_demo import base, open_customer


def login(page, secret: str) -> None:
    page.get_by_test_id("secret").fill(secret)
    page.get_by_test_id("login").click()


def test_admin_page_counts_connections_and_publishes(demo_relay, new_page):
    shoppers = [open_customer(new_page, demo_relay) for _ in range(3)]
    admin = new_page(f"{base(demo_relay)}/admin")
    login(admin, "not the key")
    expect(admin.get_by_test_id("login-error")).to_contain_text("refused")

    login(admin, demo_relay.api_key)
    expect(admin.get_by_test_id("state")).to_have_text("ready")
    expect(admin.get_by_test_id("connections")).to_have_text("3")
    expect(admin.get_by_test_id("core")).to_contain_text(demo_relay.core())
    assert demo_relay.metrics().total("relay_connections") == 3  # the same figure as /metrics
    expect(admin.get_by_test_id("top-channels")).to_contain_text("sale:flash")

    # one more shopper arrives: the page follows without a reload
    shoppers.append(open_customer(new_page, demo_relay))
    expect(admin.get_by_test_id("connections")).to_have_text("4")

    admin.get_by_test_id("pub-channel").fill("sale:flash")
    admin.get_by_test_id("pub-data").fill('{"text": "Published from the admin page"}')
    admin.get_by_test_id("pub-send").click()
    expect(admin.get_by_test_id("pub-result")).to_contain_text("published")
    for page in shoppers:
        expect(page.get_by_test_id("sale-banner")).to_contain_text("Published from the admin page")
    expect(admin.get_by_test_id("pub-rate")).to_have_text(re.compile(r"^\d"))
    screenshot(admin, "admin")


def test_admin_page_accepts_an_admin_token(demo_relay, new_page):
    token = make_connect_token("ops", demo_relay.config["token_hmac_secret"], ttl=600, admin=True)
    admin = new_page(f"{base(demo_relay)}/admin")
    login(admin, token)
    expect(admin.get_by_test_id("state")).to_have_text("ready")
    expect(admin.get_by_test_id("connections")).to_have_text("0")

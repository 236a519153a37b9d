"""Headless Chromium (Debian's ``chromium``, installed by ``.ci/install-chromium``) driven by
Playwright against a relay started with ``deploy/relay.dev.toml``, the config ``make run`` uses.

Off CI a machine without chromium (or without the bundled demo pages) skips these tests with a
message that says how to get them; under ``CI=true`` that is a failure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from relay.demo import STATIC_DIR
from relay.testing import ROOT, RelayProcess, free_port
from tests.e2e.test_demo import demo_config

ARTIFACTS = ROOT / "test-artifacts" / "browser"
TIMEOUT_MS = 10_000


def _unavailable(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} (required under CI=true)")
    pytest.skip(why)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        _unavailable("chromium is not installed: run .ci/install-chromium (Debian's chromium package)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        _unavailable("the playwright package is not installed: pip install -e '.[test]'")
    if not (STATIC_DIR / "shop.js").exists() or not (STATIC_DIR / "agent.js").exists():
        _unavailable("the demo pages are not bundled: run `make build`")
    return path


@pytest.fixture(scope="module")
def browser(chromium_path):
    """One Chromium per module: Playwright's sync API runs an event loop in this thread while it is
    open, which the asyncio tests of other modules must not find there."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path, headless=True,
                              args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def demo_relay():
    """relay with the dev config on free ports, pages allowed as WebSocket origins."""
    api_port = free_port()
    cfg = demo_config()
    cfg.update({"host": "127.0.0.1", "api_port": api_port, "ws_port": free_port(), "tcp_port": free_port(),
                "allowed_origins": [f"http://127.0.0.1:{api_port}"], "drain_window": 0.5})
    r = RelayProcess(cfg).start()
    yield r
    r.cleanup()


@pytest.fixture
def new_page(browser):
    """Pages in fresh browser contexts (each its own localStorage: a separate person); console errors
    are collected and fail the test."""
    contexts = []
    errors: list[str] = []

    def make(url: str, **context_kw):
        ctx = browser.new_context(viewport={"width": 1280, "height": 860}, **context_kw)
        ctx.set_default_timeout(TIMEOUT_MS)
        contexts.append(ctx)
        page = ctx.new_page()
        page.on("pageerror", lambda e: errors.append(f"{url}: {e}"))
        page.goto(url)
        return page

    yield make
    for ctx in contexts:
        ctx.close()
    assert not errors, errors


def screenshot(page, name: str) -> Path:
    """Keep a screenshot under test-artifacts/browser/ (CI keeps that directory)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path

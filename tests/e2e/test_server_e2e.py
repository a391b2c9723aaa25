"""The server as `streamlit run dashboard/app.py` starts it from the project root with no flags (only
.streamlit/config.toml): a browser on a loopback name gets the app, without a Deploy button and with the operator's
opt-ins shown read-only; a browser that reaches the port under a foreign name (DNS rebinding, simulated by
Chromium's host resolver rules) gets no session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from appserver import CHROMIUM, CHROMIUM_ARGS, free_port, start_app, stop_app, wait_healthy
from conftest import OUTPUT
from playwright.sync_api import BrowserType, Page, expect


@pytest.fixture(scope="module")
def bare_port() -> Iterator[int]:
    """The app started with no command-line flags (the port from Streamlit's environment variable)."""
    port = free_port()
    env = {"ULENS_AUTOLOAD": "0", "ULENS_TRUST_REMOTE_CODE": ""}
    env["ULENS_ALLOW_PICKLE"] = "1"  # an operator's opt-in, shown to the browser but not changeable there
    process = start_app(port, OUTPUT / "bare-app.log", env, bare=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process)
        yield port
    finally:
        stop_app(process)


def test_a_loopback_browser_gets_the_app_with_read_only_opt_ins(page: Page, bare_port: int) -> None:
    page.goto(f"http://localhost:{bare_port}")
    bar = page.locator("section[data-testid='stSidebar']")
    expect(bar.get_by_role("heading", name="Model pair")).to_be_visible()
    expect(bar.get_by_text("Remote model code: off · pickle weights: allowed.")).to_be_visible()
    assert bar.get_by_role("checkbox").count() == 0
    assert page.get_by_role("button", name="Deploy").count() == 0


def test_a_foreign_host_name_gets_no_session(browser_type: BrowserType, bare_port: int) -> None:
    rules = "--host-resolver-rules=MAP evil.example 127.0.0.1"  # evil.example's DNS now answers 127.0.0.1
    browser = browser_type.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, rules])
    try:
        page = browser.new_page()
        failed: list[str] = []
        page.on("websocket", lambda socket: socket.on("socketerror", lambda error: failed.append(str(error))))
        page.goto(f"http://evil.example:{bare_port}")  # the static page itself is served
        for _ in range(300):
            if len(failed) >= 2:  # the handshake was refused, and so was the frontend's retry
                break
            page.wait_for_timeout(100)
        assert len(failed) >= 2, failed
        assert page.get_by_role("heading", name="Model pair").count() == 0
    finally:
        browser.close()

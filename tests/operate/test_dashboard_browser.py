"""The dashboard in a real headless Chromium (Debian's chromium + chromium-driver, driven by
selenium; nothing is downloaded): a gatekeeper logs in with a key, sees the loop's charts
drawn from a simulated run, approves a candidate and sees the rollout state and the audit
entry change; an experimenter is refused the action. Screenshots go to $DS_TEST_ARTIFACTS
(default test-artifacts/). In CI (CI=true) a missing browser fails the test."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from decision_service import create_app
from log.registry_store import list_models
from tests.conftest import ADMIN_HEADERS, make_settings
from tests.operate.dashboard_helpers import LOOP, Run, simulate

ARTIFACTS = Path(os.environ.get("DS_TEST_ARTIFACTS", "test-artifacts")) / "dashboard"


def _browser() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        reason = "chromium and chromedriver are needed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the browser test must run in CI: {reason}")
        pytest.skip(reason)
    return chromium, driver


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, object]]:
    """The service on a free port (uvicorn in a thread), SQLite store."""
    settings = make_settings(f"sqlite:///{tmp_path / 'store.db'}", tmp_path)
    app = create_app(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", app
    srv.should_exit = True
    thread.join(timeout=30)
    sock.close()


@pytest.fixture
def driver() -> Iterator[WebDriver]:
    chromium, chromedriver = _browser()
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,2200"):  # fmt: skip
        options.add_argument(arg)
    d = webdriver.Chrome(service=DriverService(executable_path=chromedriver), options=options)
    d.set_page_load_timeout(60)
    d.implicitly_wait(15)  # a lookup waits for the page a click navigates to
    yield d
    d.quit()


def shot(d: WebDriver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert d.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def log_in(d: WebDriver, base: str, key: str) -> None:
    d.get(f"{base}/dashboard")
    d.find_element(By.ID, "key").send_keys(key)
    d.find_element(By.ID, "login").click()
    assert d.find_element(By.ID, "loops").is_displayed()


def test_gatekeeper_approves_in_a_real_browser(
    server: tuple[str, object], driver: WebDriver
) -> None:
    base, app = server
    service = app.state.service  # type: ignore[attr-defined]
    with httpx.Client(base_url=base, headers=ADMIN_HEADERS, timeout=30) as api:
        run: Run = simulate(service, api)
        keys = {
            role: api.post("/v1/keys", json={"name": f"{role}-ui", "role": role}).json()["key"]
            for role in ("gatekeeper", "experimenter")
        }
    d = driver
    # log in as a gatekeeper; the overview lists the loop
    log_in(d, base, keys["gatekeeper"])
    assert "gatekeeper" in d.find_element(By.ID, "who").text
    shot(d, "01-overview")
    d.find_element(By.LINK_TEXT, LOOP).click()
    # the 5-minute charts are drawn with the simulated run's data
    bars = d.find_elements(By.CSS_SELECTOR, 'svg[data-title="decisions"] rect.bar')
    assert bars and all(b.size["height"] > 0 for b in bars)
    assert d.find_elements(
        By.CSS_SELECTOR, 'svg[data-title="reward rate (95% interval)"] polygon.band'
    )
    assert d.find_element(By.ID, "total-decisions").text == str(run.decisions)
    assert d.find_element(By.ID, "rollout-live").text.startswith(run.live)
    shot(d, "02-loop")
    # approve the candidate (to live, overriding the gate) with a reason
    row = d.find_element(By.CSS_SELECTOR, f'tr[data-version="{run.candidate}"]')
    form = row.find_element(By.CSS_SELECTOR, "form.approve")
    form.find_element(By.NAME, "reason").send_keys("approved in the browser test")
    Select(form.find_element(By.NAME, "to")).select_by_value("live")
    form.find_element(By.NAME, "override").click()
    form.find_element(By.CLASS_NAME, "approve-button").click()
    assert run.candidate in d.find_element(By.ID, "notice").text
    assert d.find_element(By.ID, "rollout-live").text.startswith(run.candidate)
    newest = d.find_elements(By.CSS_SELECTOR, "#audit tr")[1]
    assert "model.live_override" in newest.text and "approved in the browser test" in newest.text
    shot(d, "03-approved")
    d.find_element(By.ID, "logout").click()
    # an experimenter sees the page but is refused the action
    log_in(d, base, keys["experimenter"])
    d.get(f"{base}/dashboard/loops/{LOOP}")
    form = d.find_element(By.ID, "rollback-form")
    form.find_element(By.NAME, "reason").send_keys("not allowed")
    form.find_element(By.ID, "rollback").click()
    assert d.find_element(By.ID, "refused").is_displayed()
    assert "gatekeep" in d.page_source
    shot(d, "04-refused")
    live = [m.version for m in list_models(service.engine, LOOP, statuses=("live",))]
    assert live == [run.candidate]

"""The dashboard as a user sees it: `fraudstream dashboard` served on loopback, every page
opened in headless Chromium (Debian's package, driven by Playwright), charts rendered without
errors, a review done in the browser, screenshots saved.

Screenshots go to ``.pytest_artifacts/screenshots`` (or ``FRAUDSTREAM_TEST_SCREENSHOTS``, which
is how ``docs/images`` is refreshed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from fraudstream.store.db import dashboard_conninfo

from ..conftest import free_port, overrides_env
from .test_dashboard import Seeded, seeded  # noqa: F401 (the fixture)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SHOTS = Path(os.environ.get("FRAUDSTREAM_TEST_SCREENSHOTS", ".pytest_artifacts/screenshots"))

# url path, something the page shows once its data is there, and whether it draws charts
PAGES = [
    ("", "Transactions / s", True),
    ("review", "The card's recent history", False),
    ("quality", "Precision–recall", True),
    ("drift", "Population stability index", True),
    ("explore", "Enter an id to search", False),
    ("system", "Rejected messages", False),
]


@pytest.fixture
def served(seeded: Seeded, tmp_path: Path) -> Iterator[str]:  # noqa: F811
    settings = seeded.settings
    port = free_port()
    env = overrides_env(
        {
            "state_dir": str(settings.state_dir),
            "kafka.port": str(settings.kafka.port),
            "kafka.topics.labels": settings.kafka.topics.labels,
            "database.port": str(settings.database.port),
            "database.name": settings.database.name,
            "dashboard.port": str(port),
            "dashboard.refresh_s": "2",
        }
    )
    log = (tmp_path / "dashboard.log").open("ab")
    server = subprocess.Popen(
        [sys.executable, "-m", "fraudstream", "dashboard"], env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read() == b"ok":
                    break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((tmp_path / "dashboard.log").read_text()[-3000:]) from None
            time.sleep(0.3)
    try:
        yield url
    finally:
        server.terminate()
        server.wait(30)
        log.close()


@pytest.fixture
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: `make test` installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        launched.close()


def test_every_page_renders_and_a_review_in_the_browser_becomes_a_label(
    served: str,
    browser: object,
    seeded: Seeded,  # noqa: F811
) -> None:
    from playwright.sync_api import Browser

    assert isinstance(browser, Browser)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    for path, marker, charts in PAGES:
        page.goto(f"{served}/{path}")
        page.get_by_text(marker).first.wait_for(timeout=30_000)
        if path == "explore":
            page.get_by_role("textbox", name="Transaction id, card token or terminal id").fill("T1")
            page.keyboard.press("Enter")
            page.get_by_text("prediction(s)").first.wait_for(timeout=30_000)
        if charts:  # Vega draws its marks once the chart's data arrived
            page.locator("[data-testid='stVegaLiteChart'] svg .mark-group").first.wait_for(
                timeout=30_000
            )
        page.wait_for_timeout(1_000)  # let the last fragments settle before the picture
        assert page.locator("[data-testid='stException']").count() == 0, path
        assert "Traceback" not in page.content()
        page.screenshot(path=str(SHOTS / f"{path or 'live'}.png"), full_page=True)
    assert errors == []

    page.goto(f"{served}/review")
    page.get_by_text("The card's recent history").first.wait_for(timeout=30_000)
    case = seeded.review_ids[0]
    page.get_by_role("textbox", name="Analyst").fill("bea")
    page.keyboard.press("Enter")
    page.get_by_role("button", name="Fraud", exact=True).click()
    page.get_by_text(f"{case} marked fraud by bea.").wait_for(timeout=30_000)
    with psycopg.connect(dashboard_conninfo(seeded.settings)) as conn:
        stored = conn.execute(
            "SELECT r.verdict, r.analyst, l.is_fraud FROM review_decisions r "
            "JOIN labels l ON l.tx_id = r.tx_id AND l.source = 'analyst' WHERE r.tx_id = %s",
            (case,),
        ).fetchone()
    assert stored == ("fraud", "bea", True)

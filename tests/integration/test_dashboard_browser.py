"""The dashboard as a user sees it: `fraudstream dashboard` served on loopback, signed in as
named users in headless Chromium (Debian's package, driven by Playwright), every page opened
and its charts rendered without errors, a case worked from open to resolved by an analyst in
the browser, screenshots saved.

Screenshots go to ``.pytest_artifacts/screenshots`` (or ``SCREENSHOTS_DIR``, which
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
from fraudstream.telemetry import read_samples

from ..conftest import free_port, overrides_env
from .test_dashboard import CARD, Seeded, _users, seeded  # noqa: F401 (the fixture)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SHOTS = Path(os.environ.get("SCREENSHOTS_DIR", ".pytest_artifacts/screenshots"))

# menu entry, something the page shows once its data is there, whether it draws charts, and
# the screenshot's name
PAGES = [
    ("Live", "Transactions / s", True, "live"),
    ("Cases", "Card timeline", False, "cases"),
    ("Rules", "Draft and backtest", False, "rules"),
    ("Lists", "Add an entry", False, "lists"),
    ("Model quality", "Precision–recall", True, "quality"),
    ("Drift", "Population stability index", True, "drift"),
    ("Explore", "Enter an id to search", False, "explore"),
    ("System", "Rejected messages", False, "system"),
    ("Audit", "action(s)", False, "audit"),
    ("Users", "Add a user", False, "users"),
]


@pytest.fixture
def served(seeded: Seeded, tmp_path: Path) -> Iterator[tuple[str, str]]:  # noqa: F811
    """The dashboard's address and its metrics endpoint's."""
    settings = seeded.settings
    port, metrics_port = free_port(), free_port()
    env = overrides_env(
        {
            "state_dir": str(settings.state_dir),
            "kafka.port": str(settings.kafka.port),
            "kafka.topics.labels": settings.kafka.topics.labels,
            "database.port": str(settings.database.port),
            "database.name": settings.database.name,
            "dashboard.port": str(port),
            "dashboard.refresh_s": "2",
            "metrics.dashboard_port": str(metrics_port),
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
        yield url, f"http://127.0.0.1:{metrics_port}/metrics"
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


def _sign_in(page, url: str, user: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(url)
    page.get_by_role("textbox", name="User").fill(user)
    page.get_by_role("textbox", name="Password").fill(f"{user}{user}-pass-word")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text(f"Signed in as {user}").wait_for(timeout=30_000)


def _open(page, entry: str, marker: str) -> None:  # type: ignore[no-untyped-def]
    """Through the menu: a new URL would be a new session, signed out."""
    page.get_by_role("link", name=entry, exact=True).click()
    page.get_by_text(marker).first.wait_for(timeout=30_000)


def test_every_page_renders_and_a_case_is_worked_to_resolved_in_the_browser(
    served: tuple[str, str],
    browser: object,
    seeded: Seeded,  # noqa: F811
) -> None:
    from playwright.sync_api import Browser

    assert isinstance(browser, Browser)
    url, metrics = served
    _users(seeded.settings)
    SHOTS.mkdir(parents=True, exist_ok=True)
    admin = browser.new_page(viewport={"width": 1440, "height": 1000})
    errors: list[str] = []
    admin.on("pageerror", lambda error: errors.append(str(error)))
    admin.goto(url)
    admin.get_by_role("button", name="Sign in").wait_for(timeout=30_000)
    admin.screenshot(path=str(SHOTS / "sign-in.png"))
    _sign_in(admin, url, "adi")
    for entry, marker, charts, name in PAGES:
        _open(admin, entry, marker)
        if name == "explore":
            box = admin.get_by_role("textbox", name="Transaction id, card token or terminal id")
            box.fill("T1")
            admin.keyboard.press("Enter")
            admin.get_by_text("prediction(s)").first.wait_for(timeout=30_000)
        if charts:  # Vega draws its marks once the chart's data arrived
            admin.locator("[data-testid='stVegaLiteChart'] svg .mark-group").first.wait_for(
                timeout=30_000
            )
        admin.wait_for_timeout(1_000)  # let the last fragments settle before the picture
        assert admin.locator("[data-testid='stException']").count() == 0, name
        assert "Traceback" not in admin.content()
        admin.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    assert errors == []

    analyst = browser.new_page(viewport={"width": 1440, "height": 1000})
    _sign_in(analyst, url, "ana")
    assert analyst.get_by_role("link", name="Audit").count() == 0  # not an analyst's page
    _open(analyst, "Cases", "Card timeline")
    case = seeded.card_case
    analyst.get_by_role("button", name="Assign to me").click()
    analyst.get_by_text(f"Case {case} assigned to you.").wait_for(timeout=30_000)
    analyst.get_by_role("button", name="Investigate").click()
    analyst.get_by_text(f"Case {case} is now investigating.").wait_for(timeout=30_000)
    analyst.get_by_role("textbox", name="Resolution comment (optional)").fill("card holder: not me")
    analyst.get_by_role("button", name="Resolve: fraud").click()
    analyst.get_by_text(f"Case {case} resolved as fraud.").wait_for(timeout=30_000)
    with psycopg.connect(dashboard_conninfo(seeded.settings)) as conn:
        case_row = conn.execute(
            "SELECT status, assignee, resolved_by FROM cases WHERE case_id = %s", (case,)
        ).fetchone()
        labels = conn.execute(
            "SELECT count(*), bool_and(l.is_fraud) FROM case_alerts a "
            "JOIN labels l ON l.tx_id = a.tx_id AND l.source = 'analyst' WHERE a.case_id = %s",
            (case,),
        ).fetchone()
        actions = conn.execute(
            "SELECT action FROM audit_log WHERE actor = 'ana' ORDER BY id"
        ).fetchall()
    assert case_row == ("resolved_fraud", "ana", "ana")
    assert labels == (seeded.alerts_per_card[CARD], True)
    assert [a for (a,) in actions] == ["user.login", "case.assign", "case.status", "case.resolve"]

    # A rule set drafted and backtested by the analyst, approved and published by a
    # supervisor; a card blocked on a list.
    _open(analyst, "Rules", "Draft and backtest")
    analyst.get_by_role("textbox", name="What changes, and why").fill("as shipped")
    analyst.get_by_role("button", name="Backtest").click()
    analyst.get_by_text("Overlap with live").wait_for(timeout=30_000)
    analyst.get_by_role("button", name="Save draft").click()
    analyst.get_by_text("Version 1 drafted: a supervisor approves it.").wait_for(timeout=30_000)
    supervisor = browser.new_page(viewport={"width": 1440, "height": 1000})
    _sign_in(supervisor, url, "sam")
    _open(supervisor, "Rules", "Draft and backtest")
    supervisor.get_by_role("tab", name="Versions").click()
    supervisor.get_by_role("button", name="Approve").click()
    supervisor.get_by_text("Version 1 approved.").wait_for(timeout=30_000)
    supervisor.get_by_role("tab", name="Versions").click()
    supervisor.get_by_role("button", name="Publish").click()
    supervisor.get_by_text("Version 1 is live.").wait_for(timeout=30_000)
    _open(supervisor, "Lists", "Add an entry")
    supervisor.get_by_role("textbox", name="Card token or terminal id").fill(CARD)
    supervisor.get_by_role("textbox", name="Why").fill("card reported stolen")
    supervisor.get_by_role("button", name="Add", exact=True).click()
    supervisor.get_by_text("Added to blocked_cards").wait_for(timeout=30_000)
    supervisor.screenshot(path=str(SHOTS / "lists.png"), full_page=True)
    with psycopg.connect(dashboard_conninfo(seeded.settings)) as conn:
        trail = conn.execute(
            "SELECT actor, action FROM audit_log WHERE action LIKE 'rules.%%' "
            "OR action LIKE 'list.%%' ORDER BY id"
        ).fetchall()
    assert trail == [
        ("ana", "rules.draft"), ("sam", "rules.approve"), ("sam", "rules.publish"),
        ("sam", "list.add"),
    ]  # fmt: skip

    # The server's metrics: three people signed in, and every page they opened was counted.
    views = {
        sample.labels["page"]: sample.value
        for sample in read_samples(metrics)
        if sample.name == "fraudstream_dashboard_page_views_total"
    }
    assert {entry for entry, *_rest in PAGES} <= set(views), views
    signed_in = [
        sample.value
        for sample in read_samples(metrics)
        if sample.name == "fraudstream_dashboard_sign_ins_total"
        and sample.labels["outcome"] == "signed_in"
    ]
    assert signed_in == [3]

"""The dashboard's pages with Streamlit's AppTest against a real PostgreSQL (and Kafka for the
labels an analyst publishes), seeded through the engines' own sink."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import pytest
import streamlit as st
from confluent_kafka import Consumer
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import Block, Column

from fraudstream.config import Settings
from fraudstream.dashboard.queries import terminal_risk
from fraudstream.engines.base import EngineStats
from fraudstream.features import FEATURE_NAMES
from fraudstream.model.metrics import auc_roc, average_precision
from fraudstream.model.profile import PROFILED_FEATURES, FeatureProfile
from fraudstream.privacy import mask_token
from fraudstream.records import Rejected
from fraudstream.stack import Stack
from fraudstream.stack.postgres import EmbeddedPostgres
from fraudstream.store.db import connect, dashboard_conninfo
from fraudstream.store.lists import active_lists
from fraudstream.store.projections import Observed, TerminalPlaces
from fraudstream.store.quality import labelled_scores, refresh_quality
from fraudstream.store.roles import ensure_dashboard_role
from fraudstream.store.rulebook import published
from fraudstream.store.sink import PredictionSink
from fraudstream.store.status import StatusReporter
from fraudstream.store.users import User, create_user, disable_user

from ..conftest import overrides_env
from ..engine_kit import isolated

APP = str(Path(__import__("fraudstream.dashboard").dashboard.__file__).parent / "app.py")
NOW = datetime.now(timezone.utc).replace(microsecond=0)
CARD = "tok_" + "c0ffee" * 4  # a token as the tokenizer makes them: never shown in full
REASON = {
    "feature": "amount",
    "value": 1.0,
    "contribution": 0.5,
    "text": "amount far above the card's 30-day mean",
}


@dataclass(frozen=True)
class Seeded:
    settings: Settings
    alerts_per_card: dict[str, int]  # reviews and declines of each card: one open case each
    card_case: int  # the case of CARD


def _predictions(prefix: str, n: int, event_time: datetime, card: str) -> pd.DataFrame:
    decisions = [
        "review" if i % 5 == 0 else "decline" if i % 7 == 0 else "approve" for i in range(n)
    ]
    return pd.DataFrame(
        {
            "tx_id": [f"{prefix}-{i:04d}" for i in range(n)],
            "event_time": [event_time - timedelta(seconds=i) for i in range(n)],
            "card_id": [card if i % 2 == 0 else f"tok_other{i % 9:020d}" for i in range(n)],
            "terminal_id": [f"T{i % 4}" for i in range(n)],
            "amount": [10.0 + i for i in range(n)],
            "score": [round(0.2 + 0.79 * ((i * 37) % n) / n, 6) for i in range(n)],
            "decision": decisions,
            "rule_hits": [["card_velocity_1h"] if d == "decline" else [] for d in decisions],
            "reasons": [[REASON] if d != "approve" else [] for d in decisions],
            "model_version": ["m-test"] * n,
            "engine": ["local"] * n,
            "kafka_partition": [0] * n,
            "kafka_offset": list(range(n)),
            "kafka_time": [event_time] * n,
            "scored_at": [event_time] * n,
            "content_hash": list(range(n)),
            "features": [[float(i)] * len(FEATURE_NAMES) for i in range(n)],
            "rules_version": ["r-test"] * n,
            "late": [False] * n,
        }
    )


def _training_features(n: int) -> pd.DataFrame:
    """Features of a training window: every profiled feature spread over ten values."""
    return pd.DataFrame({name: [float(i % 10) for i in range(n)] for name in PROFILED_FEATURES})


PROFILE = FeatureProfile.of_training(
    _training_features(200), _predictions("live", 200, NOW, CARD)["score"].to_numpy()
)


def _observed(live: pd.DataFrame) -> Observed:
    """The live batch as an engine reports it: four terminals on the simulator's grid, and
    features distributed as in training except the amount, far above every training amount."""
    features = _training_features(len(live)).assign(amount=1000.0)
    nowhere = np.full(4, np.nan)
    terminals = TerminalPlaces(
        np.array([f"T{i}" for i in range(4)], dtype=object), np.array([10.0, 20.0, 30.0, 40.0]),
        np.array([50.0, 60.0, 70.0, 80.0]), nowhere, nowhere,
    )  # fmt: skip
    return Observed(terminals, "local", "m-test", PROFILE.as_dict(), PROFILE.counts(features))


def _environment(monkeypatch: pytest.MonkeyPatch, settings: Settings, **extra: str) -> None:
    overrides = {
        "state_dir": str(settings.state_dir),
        "kafka.port": str(settings.kafka.port),
        "kafka.topics.labels": settings.kafka.topics.labels,
        "database.port": str(settings.database.port),
        "database.name": settings.database.name,
        **extra,
    }
    for key, value in overrides_env(overrides).items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()  # settings and the connection are per process: start afresh
    st.cache_data.clear()


@pytest.fixture
def seeded(stack_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Seeded:
    settings = isolated(stack_settings, tmp_path / "models")
    with connect(settings) as conn:
        ensure_dashboard_role(conn, EmbeddedPostgres(settings).dashboard_password())
    sink = PredictionSink(connect(settings), consumer_group="g", features_version="1")
    live = _predictions("live", 200, NOW, CARD)
    matured = _predictions("old", 300, NOW - timedelta(days=9), CARD)
    sink.write(live, [], observed=_observed(live))
    sink.write(matured, [], [Rejected("transactions", 0, 7, "not valid JSON: truncated")])
    with connect(settings) as conn:
        frauds = matured["tx_id"][matured["decision"] != "approve"].head(20).tolist()
        conn.cursor().executemany(
            "INSERT INTO labels (tx_id, source, is_fraud, reported_at) "
            "VALUES (%s, 'test', true, %s)",
            [(tx, NOW - timedelta(days=8)) for tx in frauds],
        )
        measured = refresh_quality(conn, NOW.date(), maturity_days=7)
        assert measured == [(NOW - timedelta(days=9)).date()]
        StatusReporter(engine_id="e-1", engine="local", group="g", started_at=NOW).report(
            conn, EngineStats(), model_version="m-test", partitions=[0, 1], lag=12
        )
        conn.commit()
    sink.conn.close()
    _environment(monkeypatch, settings)
    stored = pd.concat([live, matured])
    alerts = stored[stored["decision"] != "approve"].groupby("card_id").size()
    with connect(settings) as conn:
        found = conn.execute("SELECT case_id FROM cases WHERE card_id = %s", (CARD,)).fetchone()
    assert found is not None
    return Seeded(
        settings, {str(k): int(v) for k, v in alerts.items()},
        int(str(found[0])),
    )  # fmt: skip


def _page(name: str) -> AppTest:
    app = AppTest.from_file(APP, default_timeout=60)
    app.run()
    if name != "live":
        app.switch_page(f"pages/{name}.py").run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def _all_text(app: AppTest) -> str:
    """Everything the page shows: markdown, metrics, captions and table cells."""
    parts = [str(e.value) for e in app.main.markdown] + [str(e.value) for e in app.caption]
    parts += [f"{m.label} {m.value}" for m in app.metric]
    parts += [frame.value.to_string() for frame in app.dataframe]
    return "\n".join(parts)


def test_live_shows_volume_latency_lag_and_the_latest_alerts_masked(seeded: Seeded) -> None:
    app = _page("live")
    metrics = {m.label: m.value for m in app.metric}
    assert float(metrics["Transactions / s"]) > 0
    assert metrics["Consumer lag"] == "12"
    assert "m-test" in _all_text(app)
    alerts = app.dataframe[0].value
    assert len(alerts) == 20 and set(alerts["decision"]) <= {"review", "decline"}
    assert mask_token(CARD) in set(alerts["card"])
    assert CARD not in _all_text(app)


def _users(settings: Settings) -> None:
    """An analyst, a supervisor and an admin (passwords: their name, doubled, and '-pass')."""
    with connect(settings, autocommit=True) as conn:
        for name, role in (("ana", "analyst"), ("sam", "supervisor"), ("adi", "admin")):
            create_user(conn, name, role, f"{name}{name}-pass-word", by="test", at=NOW)


def _signed_in(name: str, page: str = "cases") -> AppTest:
    app = AppTest.from_file(APP, default_timeout=60).run()
    app.text_input[0].input(name)  # a form: sent with the click
    app.text_input[1].input(f"{name}{name}-pass-word")
    app.button[0].click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    app.switch_page(f"pages/{page}.py").run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def _button(app: AppTest, label: str):  # type: ignore[no-untyped-def]
    return next(b for b in app.button if b.label == label)


def _audit(settings: Settings) -> list[tuple[str, str, str]]:
    with connect(settings) as conn:
        rows = conn.execute(
            "SELECT actor, action, object_id FROM audit_log WHERE actor <> 'test' ORDER BY id"
        ).fetchall()
    return [(str(a), str(b), str(c)) for a, b, c in rows]


def test_alerts_become_one_case_per_card_with_totals_per_view(seeded: Seeded) -> None:
    app = _page("cases")  # loopback, no user yet: the local operator
    queue = app.dataframe[0].value
    assert sorted(queue["alerts"]) == sorted(seeded.alerts_per_card.values())
    assert queue["alerts"].sum() == sum(seeded.alerts_per_card.values())
    assert queue["priority"].tolist() == sorted(queue["priority"])  # most urgent first
    assert mask_token(CARD) in set(queue["card"]) and CARD not in _all_text(app)
    views = app.radio[0].options
    assert views[0] == f"All open ({len(seeded.alerts_per_card)})"
    assert f"Unassigned ({len(seeded.alerts_per_card)})" in views and "Mine (0)" in views
    app.selectbox[0].select(seeded.card_case).run()
    alerts = app.dataframe[1].value
    assert len(alerts) == seeded.alerts_per_card[CARD]
    assert "amount far above the card's 30-day mean" in _all_text(app)
    timeline = app.dataframe[2].value
    assert set(alerts["transaction"]) <= set(timeline["transaction"])
    assert (timeline["in this case"] == "alert").sum() == len(alerts)


def test_a_case_worked_from_open_to_resolved_labels_its_alerts_and_audits_each_step(
    seeded: Seeded,
) -> None:
    settings = seeded.settings
    _users(settings)
    consumer = Consumer(
        {**settings.kafka.client_config(), "group.id": uuid.uuid4().hex,
         "auto.offset.reset": "earliest"}
    )  # fmt: skip
    consumer.subscribe([settings.kafka.topics.labels])
    app = _signed_in("ana")
    app.selectbox[0].select(seeded.card_case).run()
    _button(app, "Assign to me").click().run()
    assert f"Case {seeded.card_case} assigned to you." in [s.value for s in app.success]
    assert app.radio[0].options[1] == "Mine (1)"
    _button(app, "Investigate").click().run()
    app.text_area[0].input("called the card holder: not their purchases")
    _button(app, "Add note").click().run()
    assert "called the card holder: not their purchases" in _all_text(app)
    app.text_input[0].input("confirmed with the card holder")
    _button(app, "Resolve: fraud").click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    assert f"Case {seeded.card_case} resolved as fraud." in [s.value for s in app.success]
    with psycopg.connect(dashboard_conninfo(settings)) as conn:
        case = conn.execute(
            "SELECT status, assignee, resolved_by FROM cases WHERE case_id = %s",
            (seeded.card_case,),
        ).fetchone()
        reviews = conn.execute(
            "SELECT r.verdict, r.analyst, r.comment, l.is_fraud FROM case_alerts a "
            "JOIN review_decisions r USING (tx_id) "
            "JOIN labels l ON l.tx_id = a.tx_id AND l.source = 'analyst' WHERE a.case_id = %s",
            (seeded.card_case,),
        ).fetchall()
    assert case == ("resolved_fraud", "ana", "ana")
    assert len(reviews) == seeded.alerts_per_card[CARD]
    assert set(reviews) == {("fraud", "ana", "confirmed with the card holder", True)}
    published = set()
    deadline = time.monotonic() + 30
    while len(published) < len(reviews) and time.monotonic() < deadline:
        message = consumer.poll(1)
        if message is not None and message.error() is None:
            label = json.loads(message.value())
            assert label["is_fraud"] is True and label["source"] == "analyst"
            published.add(label["tx_id"])
    consumer.close()
    assert len(published) == len(reviews)
    case_id = str(seeded.card_case)
    assert _audit(settings) == [
        ("ana", "user.login", "ana"), ("ana", "case.assign", case_id),
        ("ana", "case.status", case_id), ("ana", "case.note", case_id),
        ("ana", "case.resolve", case_id),
    ]  # fmt: skip
    assert len(app.dataframe[0].value) == len(seeded.alerts_per_card) - 1  # left the queue


def test_an_escalated_case_is_resolved_by_a_supervisor_only(seeded: Seeded) -> None:
    _users(seeded.settings)
    app = _signed_in("ana")
    app.selectbox[0].select(seeded.card_case).run()
    _button(app, "Escalate").click().run()
    _button(app, "Resolve: legitimate").click().run()
    assert f"case {seeded.card_case} is escalated: a supervisor resolves it" in [
        e.value for e in app.error
    ]
    st.cache_resource.clear()
    supervisor = _signed_in("sam")
    supervisor.selectbox[0].select(seeded.card_case).run()
    _button(supervisor, "Resolve: legitimate").click().run()
    assert not supervisor.error
    with connect(seeded.settings) as conn:
        status = conn.execute(
            "SELECT status, resolved_by FROM cases WHERE case_id = %s", (seeded.card_case,)
        ).fetchone()
    assert status == ("resolved_legitimate", "sam")


def test_the_audit_page_is_for_supervisors_and_filters_by_person_and_action(
    seeded: Seeded,
) -> None:
    _users(seeded.settings)
    analyst = _signed_in("ana")
    analyst.selectbox[0].select(seeded.card_case).run()
    _button(analyst, "Assign to me").click().run()
    assert not any("Audit" in str(p) for p in analyst.sidebar)  # not in an analyst's menu
    st.cache_resource.clear()
    supervisor = _signed_in("sam", "audit")
    log = supervisor.dataframe[0].value
    assert {("ana", "case.assign"), ("ana", "user.login"), ("sam", "user.login")} <= set(
        zip(log["who"], log["action"], strict=True)
    )
    assert {("test", "user.create")} <= set(zip(log["who"], log["action"], strict=True))
    supervisor.text_input[0].input("ana").run()
    supervisor.multiselect[0].select("case.assign").run()
    log = supervisor.dataframe[0].value
    assert log[["who", "action", "object"]].values.tolist() == [
        ["ana", "case.assign", f"case {seeded.card_case}"]
    ]


def test_model_quality_over_matured_labels(seeded: Seeded) -> None:
    app = _page("quality")
    daily = app.dataframe[0].value
    assert len(daily) == 1 and daily["transactions"].iloc[0] == 300
    assert daily["frauds"].iloc[0] == 20
    assert 0 <= daily["AP"].iloc[0] <= 1 and 0 <= daily["AUC-ROC"].iloc[0] <= 1
    assert daily["recall"].iloc[0] == 1.0  # every labelled fraud was flagged
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Recall"] != "—" and "Reviews per day" in metrics


def test_each_matured_day_is_measured_once_with_the_handbooks_measures(seeded: Seeded) -> None:
    day = (NOW - timedelta(days=9)).date()
    with connect(seeded.settings) as conn:
        assert refresh_quality(conn, NOW.date(), maturity_days=7) == []  # already measured
        stored = conn.execute(
            "SELECT transactions, frauds, average_precision, auc_roc FROM quality_daily "
            "WHERE day = %s",
            (day,),
        ).fetchone()
        bins = conn.execute(
            "SELECT sum(legitimate), sum(fraud) FROM quality_histogram WHERE day = %s", (day,)
        ).fetchone()
        start = datetime.combine(day, datetime.min.time(), tzinfo=timezone.utc)
        frame = labelled_scores(conn, start, start + timedelta(days=1))
    labels, scores = frame["is_fraud"].to_numpy(bool), frame["score"].to_numpy(float)
    assert stored is not None and stored[:2] == (300, 20)
    assert stored[2] == pytest.approx(average_precision(labels, scores))
    assert stored[3] == pytest.approx(auc_roc(labels, scores))
    assert bins == (280, 20)


def test_drift_compares_scores_and_features_with_the_training_window(seeded: Seeded) -> None:
    app = _page("drift")
    psi = next(m for m in app.metric if m.label.startswith("Population stability"))
    # The live batch's scores are the training window's scores: the same histogram.
    assert (psi.value, psi.delta) == ("0.000", "stable")
    features = app.dataframe[0].value.set_index("feature")
    assert set(features.index) == set(PROFILED_FEATURES)
    # Every feature is distributed as in training but the amount, all above the last decile.
    assert features.index[0] == "amount" and features.loc["amount", "shift"] == "large shift"
    others = features.drop(index="amount")
    assert (others["PSI"] == 0).all() and set(others["shift"]) == {"stable"}
    assert len(app.get("arrow_vega_lite_chart") or app.get("vega_lite_chart")) == 2


def test_drift_compares_a_stored_period(seeded: Seeded) -> None:
    app = _page("drift")
    app.radio[0].set_value("A stored period").run()
    assert not app.exception, [e.value for e in app.exception]
    psi = next(m for m in app.metric if m.label.startswith("Population stability"))
    # Everything was stored just now: the default reference day and the last 24 h hold the
    # same 500 predictions, so the two score histograms (from the rollups) are identical.
    assert (psi.value, psi.delta) == ("0.000", "stable")
    features = app.dataframe[0].value
    assert (features["PSI"] == 0).all() and len(features) == len(PROFILED_FEATURES)
    with connect(seeded.settings) as conn:
        bins = conn.execute("SELECT sum(n) FROM rollup_minute, unnest(score_hist) AS n").fetchone()
        counted = conn.execute(
            "SELECT feature, sum(n) FROM feature_hour, unnest(counts) AS n GROUP BY 1"
        ).fetchall()
    assert bins == (500,)  # every stored score is in a bin of the minute rollups
    assert dict(counted) == dict.fromkeys(PROFILED_FEATURES, 200)  # the observed batch's rows


def test_explore_maps_terminals_by_alerts(seeded: Seeded) -> None:
    app = _page("explore")
    with connect(seeded.settings) as conn:
        expected = conn.execute(
            "SELECT terminal_id, count(*) FROM fraud_predictions "
            "WHERE decision <> 'approve' AND event_time >= %s GROUP BY 1",
            ((NOW - timedelta(days=7)).date(),),
        ).fetchall()  # the live batch's alerts: the matured one happened 9 days ago
    assert len(expected) == 4
    assert any("4 terminals with alerts" in c.value for c in app.caption)
    assert app.get("arrow_vega_lite_chart") or app.get("vega_lite_chart")
    with connect(seeded.settings) as conn:
        mapped = terminal_risk(conn, NOW - timedelta(days=7)).set_index("terminal_id")
    assert mapped["alerts"].to_dict() == dict(expected)
    assert mapped.loc["T1", ["x", "y"]].tolist() == [20.0, 60.0]
    assert ((mapped["alert_rate"] > 0) & (mapped["alert_rate"] <= 1)).all()


def test_explore_finds_a_card_by_token_and_shows_it_masked(seeded: Seeded) -> None:
    app = _page("explore")
    app.text_input[0].input(CARD).run()
    found = app.dataframe[0].value
    assert len(found) == 200 and set(found["card"]) == {mask_token(CARD)}
    assert CARD not in _all_text(app)
    app.text_input[0].input("'; DROP TABLE fraud_predictions; --").run()
    assert not app.exception and "Nothing stored for" in app.warning[0].value


def test_system_shows_engines_and_rejected_messages(seeded: Seeded) -> None:
    with connect(seeded.settings) as conn:  # an engine stopped hours ago is history
        conn.execute(
            "INSERT INTO engine_status (engine_id, engine, consumer_group, started_at, "
            "heartbeat_at) VALUES ('gone-1', 'local', 'g', now() - interval '3 hours', "
            "now() - interval '2 hours')"
        )
        conn.commit()
    app = _page("system")
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Kafka"] == "up" and metrics["PostgreSQL"] == "up"
    assert metrics["Rejected messages"] == "1"
    assert "not valid JSON: truncated" in _all_text(app)
    assert "e-1" in _all_text(app) and "gone-1" not in _all_text(app)
    assert metrics["Engines reporting"] == "1 / 1"


def test_an_empty_database_explains_what_to_do(
    stack_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = isolated(stack_settings, tmp_path / "models")
    with connect(settings) as conn:
        ensure_dashboard_role(conn, EmbeddedPostgres(settings).dashboard_password())
    _environment(monkeypatch, settings)
    app = _page("live")
    assert any("is the engine running?" in i.value for i in app.info)


def test_the_dashboard_user_reads_and_only_adds_reviews_and_labels(seeded: Seeded) -> None:
    with psycopg.connect(dashboard_conninfo(seeded.settings), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM fraud_predictions").fetchone() == (500,)
        for statement in (
            "UPDATE fraud_predictions SET decision = 'approve'",
            "DELETE FROM labels",
            "INSERT INTO fraud_predictions (tx_id) VALUES ('x')",
            "TRUNCATE rollup_minute",
            "UPDATE cases SET card_id = 'x'",  # people move cases; what they hold is the engine's
            "INSERT INTO cases (card_id) VALUES ('x')",
            "DELETE FROM case_notes",
            "UPDATE app_users SET username = 'x'",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        conn.execute(
            "INSERT INTO labels (tx_id, source, is_fraud, reported_at) "
            "VALUES ('live-0000', 'analyst', false, now())"
        )


def test_a_database_restart_shows_a_message_then_recovers(
    seeded: Seeded, stack_settings: Settings
) -> None:
    app = _page("system")
    database = Stack(stack_settings).database
    assert database.stop(), "the database was not running, or not the one this stack started"
    try:
        app.run()
        assert not app.exception
        assert any("The database is not answering" in e.value for e in app.error)
    finally:
        database.start()
    app.run()
    assert not app.exception and not app.error
    assert {m.label: m.value for m in app.metric}["PostgreSQL"] == "up"


def test_a_rule_set_is_drafted_backtested_approved_by_another_and_published(
    seeded: Seeded,
) -> None:
    _users(seeded.settings)
    analyst = _signed_in("ana", "rules")
    assert analyst.dataframe[0].value["name"].tolist()[:3] == [
        "amount_over_limit", "card_velocity_1h", "impossible_travel_speed",
    ]  # fmt: skip
    analyst.text_input[0].input("as shipped, under the rule book")
    _button(analyst, "Backtest").click().run()
    assert not analyst.exception and not analyst.error, [e.value for e in analyst.error]
    figures = {m.label: m.value for m in analyst.metric}
    assert figures["Transactions"] == "500"
    _button(analyst, "Save draft").click().run()
    assert "Version 1 drafted: a supervisor approves it." in [s.value for s in analyst.success]
    _button(analyst, "Approve").click().run()  # an analyst cannot approve
    assert "a supervisor approves rules" in [e.value for e in analyst.error]
    st.cache_resource.clear()
    supervisor = _signed_in("sam", "rules")
    _button(supervisor, "Approve").click().run()
    assert "Version 1 approved." in [s.value for s in supervisor.success]
    _button(supervisor, "Publish").click().run()
    assert "Version 1 is live." in [s.value for s in supervisor.success]
    with connect(seeded.settings) as conn:
        live = published(conn)
    assert live is not None and live.version == 1 and live.rules.version == "book-1"
    assert [a for _, a, _ in _audit(seeded.settings) if a.startswith("rules.")] == [
        "rules.draft", "rules.approve", "rules.publish",
    ]  # fmt: skip


def test_a_supervisor_blocks_a_card_on_the_lists_page(seeded: Seeded) -> None:
    _users(seeded.settings)
    analyst = _signed_in("ana", "lists")
    assert "Supervisors change lists." in [c.value for c in analyst.caption]
    st.cache_resource.clear()
    supervisor = _signed_in("sam", "lists")
    supervisor.text_input[0].input(CARD)
    supervisor.text_input[1].input("confirmed fraud on case 5")
    _button(supervisor, "Add").click().run()
    assert not supervisor.error, [e.value for e in supervisor.error]
    table = supervisor.dataframe[0].value
    assert table["value"].tolist() == [mask_token(CARD)] and CARD not in _all_text(supervisor)
    with connect(seeded.settings) as conn:
        assert active_lists(conn, NOW + timedelta(days=365)) == {"blocked_cards": {CARD}}


def test_beyond_loopback_the_dashboard_needs_users_and_refuses_an_empty_password(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    _environment(monkeypatch, seeded.settings, **{"dashboard.host": "0.0.0.0"})
    app = AppTest.from_file(APP, default_timeout=60).run()
    assert not app.metric and any("has no users: refused" in e.value for e in app.error)
    _users(seeded.settings)
    app = AppTest.from_file(APP, default_timeout=60).run()
    assert not app.metric and [t.label for t in app.text_input] == ["User", "Password"]
    app.text_input[0].input("ana")
    app.button[0].click().run()  # no password
    assert "Enter your password: an empty password is refused." in [e.value for e in app.error]
    app.text_input[1].input("wrong-password-here")
    app.button[0].click().run()
    assert "Wrong user name or password." in [e.value for e in app.error] and not app.metric
    app.text_input[1].input("anaana-pass-word")
    app.button[0].click().run()
    assert {m.label for m in app.metric} >= {"Transactions / s", "Consumer lag"}
    with connect(seeded.settings, autocommit=True) as conn:
        disable_user(conn, "ana", by="adi", at=NOW)
    later = AppTest.from_file(APP, default_timeout=60)
    later.session_state["user"] = User("ana", "analyst")  # signed in before being disabled
    later.run()
    assert not later.metric and [t.label for t in later.text_input] == ["User", "Password"]


def test_the_audit_log_is_append_only_for_every_role(seeded: Seeded) -> None:
    _users(seeded.settings)
    for conninfo in (dashboard_conninfo(seeded.settings), None):
        with (
            psycopg.connect(conninfo, autocommit=True)
            if conninfo
            else connect(seeded.settings, autocommit=True)
        ) as conn:
            for statement in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log"):
                with pytest.raises(
                    (psycopg.errors.InsufficientPrivilege, psycopg.errors.RaiseException)
                ):
                    conn.execute(statement)
    with connect(seeded.settings, autocommit=True) as conn:  # the owner: the trigger refuses
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("TRUNCATE audit_log")
        assert conn.execute("SELECT count(*) FROM audit_log").fetchone() == (3,)


@pytest.fixture(autouse=True)
def _fresh_streamlit_caches() -> Iterator[None]:
    yield
    st.cache_resource.clear()
    st.cache_data.clear()


def test_model_quality_shows_champion_and_challenger_on_the_same_days(seeded: Seeded) -> None:
    """A challenger's matured days (role shadow) beside the champion's, and the model's
    audit trail; the champion's own figures stay the champion's."""
    day = (NOW - timedelta(days=9)).date()
    with connect(seeded.settings) as conn:
        conn.execute(
            "INSERT INTO quality_daily (day, model_version, role, transactions, frauds, "
            "auc_roc, average_precision, card_precision_at_k, k, money_recall) "
            "VALUES (%s, 'm-challenger', 'shadow', 300, 20, 0.9, 0.8, 0.2, 100, 0.7)",
            (day,),
        )
        conn.execute(
            "INSERT INTO model_events (action, version, previous, actor, evidence) "
            "VALUES ('challenger', 'm-challenger', NULL, 'ana', '{}')"
        )
        conn.commit()
    try:
        app = _page("quality")
        daily = app.dataframe[0].value
        assert len(daily) == 1 and "role" not in daily.columns  # the champion's day only
        headers = [h.value for h in app.subheader]
        assert "Champion and challenger, on the same days" in headers
        compared = app.dataframe[1].value.reset_index()
        assert set(compared["role"]) == {"champion", "shadow"}
        shadow = compared[compared["role"] == "shadow"].iloc[0]
        assert shadow["model"] == "m-challenger" and shadow["CP@k"] == 0.2
        assert shadow["money recall@k"] == 0.7
        events = app.dataframe[-1].value
        assert events.iloc[0]["action"] == "challenger" and events.iloc[0]["by"] == "ana"
    finally:
        with connect(seeded.settings) as conn:
            conn.execute("DELETE FROM quality_daily WHERE role = 'shadow'")
            conn.execute("DELETE FROM model_events")
            conn.commit()


def test_decline_precision_is_estimated_from_the_explored_declines(seeded: Seeded) -> None:
    """Explored would-be declines (rule hit ``explore``) on a matured day: their fraud share
    with a Wilson interval, in `fraudstream quality`'s function and on the page."""
    from fraudstream.model.metrics import wilson_interval
    from fraudstream.store.quality import decline_precision

    day = (NOW - timedelta(days=9)).date()
    start = datetime.combine(day, datetime.min.time(), tzinfo=timezone.utc)
    with connect(seeded.settings) as conn:
        explored = conn.execute(
            "UPDATE fraud_predictions SET rule_hits = array_append(rule_hits, 'explore') "
            "WHERE tx_id IN (SELECT tx_id FROM fraud_predictions WHERE event_time >= %s "
            "AND event_time < %s ORDER BY tx_id LIMIT 40) RETURNING tx_id",
            (start, start + timedelta(days=1)),
        ).fetchall()
        frauds = conn.execute(
            "SELECT count(DISTINCT tx_id) FROM labels WHERE is_fraud AND tx_id = ANY(%s)",
            ([row[0] for row in explored],),
        ).fetchone()
        conn.commit()
        try:
            got = decline_precision(conn, start, start + timedelta(days=1))
            assert frauds is not None and (got.explored, got.frauds) == (40, frauds[0])
            assert (got.low, got.high) == wilson_interval(frauds[0], 40)
            assert got.low <= got.estimate <= got.high
            app = _page("quality")
            metric = next(m for m in app.metric if m.label.startswith("Decline precision"))
            assert metric.value == f"{frauds[0] / 40:.1%}" and metric.delta.startswith("95 %")
        finally:
            conn.execute(
                "UPDATE fraud_predictions SET rule_hits = array_remove(rule_hits, 'explore')"
            )
            conn.commit()


def test_wilson_interval_is_the_textbook_one() -> None:
    from fraudstream.model.metrics import wilson_interval

    low, high = wilson_interval(8, 10)  # 0.8 of 10: Wilson 95 % is about 0.490–0.943
    assert round(low, 3) == 0.490 and round(high, 3) == 0.943
    assert wilson_interval(0, 0) != wilson_interval(0, 0)  # NaN: nothing to estimate


LIVE_TILES = {
    "Transactions / s", "Alerts / min", "Consumer lag", "Declined (amount)",
    "Under review (amount)", "Processing p50 / p99",
}  # fmt: skip
STAMP = r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC"


def _charts(app: AppTest) -> list[dict[str, Any]]:
    """The Vega-Lite specs of the page's charts, one layer each (the first of layered ones)."""
    charts = app.get("arrow_vega_lite_chart") or app.get("vega_lite_chart")
    specs = [json.loads(chart.proto.spec) for chart in charts]
    return [spec["layer"][0] if "layer" in spec else spec for spec in specs]


def _readable_tables(app: AppTest) -> None:
    """Every table has headers for people and numbers rounded (to at most three decimals)."""
    assert app.dataframe
    for frame in (f.value for f in app.dataframe):
        assert not [c for c in frame.columns if "_" in str(c)], frame.columns
        for column in frame.select_dtypes("float"):
            values = frame[column].dropna()
            assert ((values * 1000).round() == values * 1000).all(), (column, values.head())


def test_live_tiles_fit_two_rows_and_show_processing_latency(seeded: Seeded) -> None:
    app = _page("live")
    metrics = {m.label: m.value for m in app.metric}
    assert set(metrics) == LIVE_TILES
    assert all(len(value) <= 12 for value in metrics.values()), metrics  # readable at 1,400 px
    assert [len(row) for row in _tile_rows(app)] == [3, 3]
    # Most seeded rows reached Kafka 9 days before they were stored: days, not "≥ 30 s".
    assert re.fullmatch(r"[\d.,]+ / [\d.,]+ d", metrics["Processing p50 / p99"])
    text = _all_text(app)
    assert "Kafka append → stored" in text and "event time → stored (secondary" in text
    alerts = app.dataframe[0].value
    assert alerts["stored"].str.fullmatch(STAMP).all()
    assert (alerts["score"] == alerts["score"].round(3)).all()
    assert not [r for r in alerts["why"] if "rule" not in r and REASON["text"] not in r]
    assert [spec["encoding"]["x"]["title"] for spec in _charts(app)] == ["minute (UTC)"] * 3


def _tile_rows(app: AppTest) -> list[list[str]]:
    """The metric labels of each row of columns that holds metrics, top to bottom."""
    rows = []
    for node in app.main:
        if not isinstance(node, Block) or isinstance(node, Column) or not node.children:
            continue
        if all(isinstance(child, Column) for child in node.children.values()):
            labels = [m.label for column in node.children.values() for m in column.metric]
            if labels:
                rows.append(labels)
    return rows


def test_live_says_when_the_stream_is_catching_up_on_history(
    stack_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events an hour old, appended to Kafka seconds ago: the stream is catching up. The
    processing latency stays seconds; the notice names how far behind the events are."""
    settings = isolated(stack_settings, tmp_path / "models")
    with connect(settings) as conn:
        ensure_dashboard_role(conn, EmbeddedPostgres(settings).dashboard_password())
    sink = PredictionSink(connect(settings), consumer_group="g", features_version="1")
    wall = datetime.now(timezone.utc)
    history = _predictions("history", 50, wall - timedelta(hours=1), CARD)
    sink.write(history.assign(kafka_time=wall - timedelta(seconds=2), scored_at=wall), [])
    _environment(monkeypatch, settings)
    app = _page("live")
    notice = [w.value for w in app.warning if w.value.startswith("Catching up")]
    assert len(notice) == 1 and "events are 60 min behind" in notice[0], notice
    processing = {m.label: m.value for m in app.metric}["Processing p50 / p99"]
    assert re.fullmatch(r"[\d.]+ / [\d.]+ s", processing), processing
    assert "p99 ≥ 30 s" in _all_text(app)  # event time → stored: kept, and labelled secondary
    current = _predictions("current", 50, datetime.now(timezone.utc), CARD)
    sink.write(current.assign(kafka_time=datetime.now(timezone.utc)), [])
    sink.conn.close()
    app.run()
    assert not [w for w in app.warning if w.value.startswith("Catching up")]


def test_system_tables_have_headers_for_people_and_rounded_numbers(seeded: Seeded) -> None:
    with connect(seeded.settings) as conn:
        conn.execute(
            "UPDATE engine_status SET throughput_tps = 502.5388, batch_ms_p50 = 12.34567, "
            "batch_ms_p99 = 80.98765"
        )
        conn.commit()
    app = _page("system")
    engines, rejected = (f.value for f in app.dataframe)
    row = engines.iloc[0]
    assert (row["engine"], row["tx/s"], row["lag (messages)"]) == ("e-1", 502.5, 12)
    assert (row["batch p50 (ms)"], row["batch p99 (ms)"]) == (12.3, 81.0)
    assert re.fullmatch(STAMP, row["last heartbeat"]) and re.fullmatch(STAMP, row["started"])
    assert rejected.columns.tolist() == ["received", "topic", "partition", "offset", "reason"]
    assert re.fullmatch(STAMP, rejected["received"].iloc[0])
    assert "throughput_tps" not in _all_text(app) and "502.5388" not in _all_text(app)
    _readable_tables(app)


def test_every_monitoring_page_shows_tables_for_people(seeded: Seeded) -> None:
    for name in ("live", "system", "drift", "quality"):
        _readable_tables(_page(name))
    explore = _page("explore")
    explore.text_input[0].input("T1").run()
    _readable_tables(explore)
    assert explore.dataframe[0].value["event time"].str.fullmatch(STAMP).all()
    timeline = _page("explore")
    timeline.text_input[0].input(CARD).run()
    assert _charts(timeline)[-1]["encoding"]["x"]["title"] == "event time (UTC)"


def test_drift_draws_score_shares_on_a_log_scale(seeded: Seeded) -> None:
    app = _page("drift")
    score = _charts(app)[0]
    assert score["encoding"]["y"]["scale"]["type"] == "log"


def test_the_precision_recall_curve_is_drawn_in_steps(seeded: Seeded) -> None:
    app = _page("quality")
    curve = next(c for c in _charts(app) if c["encoding"]["x"].get("field") == "recall")
    assert curve["mark"] == {"type": "line", "interpolate": "step-before"}
    assert _charts(app)[0]["encoding"]["x"]["title"] == "day (UTC)"  # the per-day measures


def test_explore_shows_labels_and_verdicts_and_finds_a_card_by_part_of_its_token(
    seeded: Seeded,
) -> None:
    with connect(seeded.settings) as conn:  # old-0000: a review of CARD, labelled a fraud
        conn.execute(
            "INSERT INTO review_decisions (tx_id, verdict, analyst, comment) "
            "VALUES ('old-0000', 'fraud', 'ana', 'confirmed')"
        )
        conn.commit()
    app = _page("explore")
    app.text_input[0].input("old-0000").run()
    found = app.dataframe[0].value.set_index("transaction")
    assert found.loc["old-0000", ["label", "analyst verdict"]].tolist() == [
        "fraud (test)", "fraud (ana)",
    ]  # fmt: skip
    for fragment in (CARD[-6:], CARD[:8]):  # the end, the start
        app.text_input[0].input(fragment).run()
        assert not app.exception and not app.warning, [w.value for w in app.warning]
        found = app.dataframe[0].value
        assert set(found["card"]) == {mask_token(CARD)} and len(found) == 200
        assert "fraud (test)" in set(found["label"]) and "none yet" in set(found["label"])
        assert any("1 card(s) whose token starts or ends with" in c.value for c in app.caption)
        assert any("stored in the last 60 min" in c.value for c in app.caption)
        assert CARD not in _all_text(app)
    for fragment in (CARD[-5:], "%%%%%%", "______", CARD[2:10]):  # short, wildcards, middle
        app.text_input[0].input(fragment).run()
        assert not app.exception and not app.dataframe
        assert app.warning[0].value.startswith(f"Nothing stored for {fragment!r}")

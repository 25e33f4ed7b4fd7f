"""The exactly-once sink on the real PostgreSQL: COPY, idempotent replays, atomic checkpoints."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest

from fraudstream.config import Settings
from fraudstream.engines.columns import row_views
from fraudstream.model.profile import PROFILED_FEATURES, FeatureProfile
from fraudstream.records import StoredId
from fraudstream.store import sink as sink_module
from fraudstream.store.db import connect
from fraudstream.store.projections import (
    LATENCY_BUCKETS_MS,
    SCORE_BINS,
    Observed,
    TerminalPlaces,
    rollup_ctes,
)
from fraudstream.store.sink import (
    CHANGES_KEPT,
    Checkpoint,
    PredictionSink,
    Snapshot,
    StepLookups,
    StoredState,
    Unstorable,
    step_lookups,
    stored_ids,
)

from ..engine_kit import isolated

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def _batch(prefix: str, n: int, engine: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "tx_id": [f"{prefix}-{i}" for i in range(n)],
            "event_time": [NOW - timedelta(milliseconds=40 + i) for i in range(n)],
            "card_id": [f"card_{i % 3}" for i in range(n)],
            "terminal_id": [f"T{i % 2}" for i in range(n)],
            "amount": [10.25] * n,
            "score": [i / n for i in range(n)],
            "decision": ["approve" if i % 4 else "review" for i in range(n)],
            "rule_hits": [["card_velocity_1h"] if i == 0 else [] for i in range(n)],
            "reasons": [[{"feature": "amount", "text": "amount 10.25"}] for _ in range(n)],
            "model_version": ["m-test"] * n,
            "engine": [engine] * n,
            "kafka_partition": [0] * n,
            "kafka_offset": list(range(n)),
            "kafka_time": [NOW - timedelta(milliseconds=30)] * n,
            "scored_at": [NOW - timedelta(milliseconds=5)] * n,
            "content_hash": list(range(n)),
            "features": [[float(i), float("nan")] for i in range(n)],
            "rules_version": ["r-test"] * n,
            "late": [i == n - 1 for i in range(n)],
        }
    )


@pytest.fixture(params=["pipelined", "copied"])
def staging(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both ways a batch's rows reach the staging table: INSERTs in a pipeline with the rest
    of the transaction (small batches), or binary COPY (large ones)."""
    if request.param == "copied":
        monkeypatch.setattr(sink_module, "PIPELINED_ROWS", 0)
    else:
        monkeypatch.setattr(sink_module, "PIPELINED_ROWS", 1_000)


@pytest.fixture
def sink(stack_settings: Settings) -> PredictionSink:
    return PredictionSink(
        connect(stack_settings), consumer_group=f"g-{uuid.uuid4().hex[:6]}", features_version="1"
    )


@pytest.mark.usefixtures("staging")
def test_a_batch_is_stored_with_its_offsets_and_a_replay_changes_nothing(
    sink: PredictionSink, db: psycopg.Connection[tuple[object, ...]]
) -> None:
    engine = f"e-{uuid.uuid4().hex[:6]}"
    batch = _batch(engine, 40, engine)
    # A card checkpoint may stand before the offsets.
    snapshot = Snapshot(38, None, b"changes-1", sequence=1, newest_us=1_700_000_000_000_000)
    first = sink.write(batch, [Checkpoint("transactions", 0, 40, snapshot=snapshot)])
    assert (first.rows, first.inserted) == (40, 40)
    stored = db.execute(
        "SELECT count(*), sum(amount), min(rule_hits[1]), max(reasons->0->>'text') "
        "FROM fraud_predictions WHERE engine = %s",
        (engine,),
    ).fetchone()
    assert stored == (40, Decimal("410.00"), "card_velocity_1h", "amount 10.25")
    rollup = db.execute(
        "SELECT sum(tx_count), sum(review_count), sum(amount_review), "
        "sum((SELECT sum(x) FROM unnest(latency_ms_hist) x)) FROM rollup_minute WHERE engine = %s",
        (engine,),
    ).fetchone()
    assert rollup == (40, 10, Decimal("102.50"), 40)

    replay = sink.write(batch, [Checkpoint("transactions", 0, 40)])
    assert replay.inserted == 0
    assert db.execute(
        "SELECT count(*) FROM fraud_predictions WHERE engine = %s", (engine,)
    ).fetchone() == (40,)
    assert db.execute(
        "SELECT sum(tx_count) FROM rollup_minute WHERE engine = %s", (engine,)
    ).fetchone() == (40,)
    assert sink.offsets("transactions") == {0: 40}
    assert sink.card_states("transactions") == {0: StoredState(38, None, 1, None)}
    assert list(sink.card_changes("transactions", 0, after=0)) == [(1, b"changes-1")]
    assert list(sink.card_changes("transactions", 0, after=1)) == []
    kept = db.execute(
        "SELECT content_hash, features[1], features[2] = 'NaN', rules_version, late "
        "FROM fraud_predictions WHERE tx_id = %s",
        (f"{engine}-39",),
    ).fetchone()
    assert kept == (39, 39.0, True, "r-test", True)


def test_pipelined_and_copied_batches_store_the_same_rows(
    sink: PredictionSink,
    db: psycopg.Connection[tuple[object, ...]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = f"e-{uuid.uuid4().hex[:6]}"
    stored = {}
    for way, limit in (("pipelined", 1_000), ("copied", 0)):
        monkeypatch.setattr(sink_module, "PIPELINED_ROWS", limit)
        batch = _batch(f"{engine}-{way}", 12, engine)
        # What the engine hands over besides the easy rows: an unknown append time, a row
        # without reasons, text beyond ASCII, feature vectors as views of one block.
        batch["kafka_time"] = batch["kafka_time"].where(batch.index != 3)
        batch.at[2, "reasons"] = []
        batch.at[5, "reasons"] = [{"feature": "amount", "text": "montant élevé ✓"}]
        matrix = np.arange(36, dtype=float).reshape(12, 3)
        matrix[7, 1] = np.nan
        batch["features"] = row_views(matrix)
        batch = pd.concat([batch.iloc[:6], batch.iloc[6:]])  # text columns in two chunks
        assert sink.write(batch, [Checkpoint("transactions", 0, 12)]).inserted == 12
        stored[way] = db.execute(
            "SELECT split_part(tx_id, '-', 4), event_time, card_id, terminal_id, amount, score, "
            "decision, rule_hits, reasons, model_version, engine, kafka_partition, "
            "kafka_offset, kafka_time, scored_at, content_hash, features::text, "
            "rules_version, late FROM fraud_predictions WHERE tx_id LIKE %s ORDER BY 1",
            (f"{engine}-{way}-%",),
        ).fetchall()
    assert len(stored["pipelined"]) == 12
    assert stored["pipelined"] == stored["copied"]
    by_row = {int(row[0]): row for row in stored["copied"]}
    assert by_row[3][13] is None  # kafka_time
    assert (by_row[2][8], by_row[5][8][0]["text"]) == ([], "montant élevé ✓")
    assert (by_row[7][16], by_row[11][16]) == ("{21,NaN,23}", "{33,34,35}")


def test_latency_lands_in_the_right_bucket(
    sink: PredictionSink, db: psycopg.Connection[tuple[object, ...]]
) -> None:
    engine = f"e-{uuid.uuid4().hex[:6]}"
    batch = _batch(engine, 1, engine)
    batch["event_time"] = [datetime.now(timezone.utc) - timedelta(milliseconds=700)]
    sink.write(batch, [])
    histogram = db.execute(
        "SELECT latency_ms_hist FROM rollup_minute WHERE engine = %s", (engine,)
    ).fetchone()
    assert histogram is not None
    assert histogram[0][9] == 1 and sum(histogram[0]) == 1  # [500, 1000) ms


def test_minute_rollups_keep_each_minute_and_engine_apart(
    db: psycopg.Connection[tuple[object, ...]],
) -> None:
    """Rows of two minutes (a batch stored across a minute's turn) and two engines (the
    table's other key) in one statement: each minute and engine gets its own counts, amounts
    and histograms, as counted here row by row."""
    rng = np.random.default_rng(5)
    engines = [f"e-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    minutes = [NOW.replace(second=0) - timedelta(minutes=m) for m in (3, 2)]
    rows = []
    for i in range(60):
        stored_at = minutes[i % 2] + timedelta(seconds=int(rng.integers(0, 60)))
        latency_ms = float(rng.choice([0.5, 3, 40, 700, 45_000]))
        rows.append((
            stored_at - timedelta(milliseconds=latency_ms), round(float(rng.uniform(1, 900)), 2),
            float(rng.choice([0.0, 0.42, 0.9999, 1.0])), str(rng.choice(["approve", "review",
            "decline"])), engines[(i // 2) % 2], stored_at,
        ))  # fmt: skip
    values = ", ".join(["(%s::timestamptz, %s::float8, %s::float8, %s, %s, %s::timestamptz)"] * 60)
    db.execute(
        f"WITH source (event_time, amount, score, decision, engine, stored_at) AS "
        f"(VALUES {values}), {rollup_ctes('source')} SELECT count(*) FROM rollup",
        [value for row in rows for value in row],
    )
    stored = {
        (minute, engine): [float(v) if isinstance(v, Decimal) else v for v in rest]
        for minute, engine, *rest in db.execute(
            "SELECT minute, engine, tx_count, amount_sum, approve_count, review_count, "
            "decline_count, amount_review, amount_decline, latency_ms_hist, score_hist "
            "FROM rollup_minute WHERE engine = ANY(%s)",
            (engines,),
        ).fetchall()
    }
    assert len(stored) == 4
    for minute in minutes:
        for engine in engines:
            mine = [r for r in rows if r[4] == engine and r[5].replace(second=0) == minute]
            latency = np.zeros(len(LATENCY_BUCKETS_MS) + 1, int)
            scores = np.zeros(SCORE_BINS, int)
            for event_time, _amount, score, *_rest, stored_at in mine:
                ms = (stored_at - event_time).total_seconds() * 1000
                latency[np.searchsorted(LATENCY_BUCKETS_MS, ms, side="right")] += 1
                scores[min(int(score * SCORE_BINS), SCORE_BINS - 1)] += 1
            decided = [r[3] for r in mine]
            assert stored[(minute, engine)] == [
                len(mine), pytest.approx(sum(r[1] for r in mine)),
                decided.count("approve"), decided.count("review"), decided.count("decline"),
                pytest.approx(sum(r[1] for r in mine if r[3] == "review")),
                pytest.approx(sum(r[1] for r in mine if r[3] == "decline")),
                latency.tolist(), scores.tolist(),
            ]  # fmt: skip


@pytest.mark.usefixtures("staging")
def test_a_failed_batch_leaves_no_trace(
    sink: PredictionSink, db: psycopg.Connection[tuple[object, ...]]
) -> None:
    engine = f"e-{uuid.uuid4().hex[:6]}"
    batch = _batch(engine, 10, engine)
    batch.loc[9, "decision"] = "maybe"  # violates the check constraint
    batch.loc[4, "tx_id"] = "nul\x00inside"  # text PostgreSQL cannot store
    with pytest.raises(Unstorable) as refused:
        sink.write(batch, [Checkpoint("transactions", 3, 10)])
    assert [row for row, _ in refused.value.rows] == [4, 9]
    assert "0x00" in refused.value.rows[0][1] and "decision_check" in refused.value.rows[1][1]
    assert db.execute(
        "SELECT count(*) FROM fraud_predictions WHERE engine = %s", (engine,)
    ).fetchone() == (0,)
    assert sink.offsets("transactions") == {}
    ok = sink.write(_batch(engine, 10, engine), [Checkpoint("transactions", 3, 10)])  # usable again
    assert ok.inserted == 10 and sink.offsets("transactions") == {3: 10}


def test_terminal_daily_counts_only_new_rows(
    sink: PredictionSink, db: psycopg.Connection[tuple[object, ...]]
) -> None:
    engine = f"e-{uuid.uuid4().hex[:6]}"
    batch = _batch(engine, 6, engine)
    batch["terminal_id"] = f"T-{engine}"
    sink.write(batch, [])
    sink.write(batch, [])
    assert db.execute(  # the last row is late: scored and stored, never counted
        "SELECT sum(tx_count) FROM terminal_daily WHERE terminal_id = %s", (f"T-{engine}",)
    ).fetchone() == (5,)


def test_a_steps_lookups_give_the_stored_ids_and_the_newest_sealed_table_in_one_statement(
    stack_settings: Settings, tmp_path: Path
) -> None:
    settings = isolated(stack_settings, tmp_path)  # a database with no terminal table yet
    sink = PredictionSink(connect(settings), consumer_group="g", features_version="1")
    batch = _batch("looked-up", 3, "e")
    sink.write(batch, [])
    asked = ["looked-up-0", "looked-up-2", "never-stored"]
    with connect(settings) as conn:
        empty = step_lookups(conn, asked)
        assert empty.stored == {"looked-up-0": StoredId(0, 0, 0), "looked-up-2": StoredId(2, 0, 2)}
        assert stored_ids(conn, asked) == empty.stored and stored_ids(conn, []) == {}
        assert empty.newest_sealed is None
        for day in ("2026-03-01", "2026-03-03", "2026-03-02"):
            conn.execute(
                "INSERT INTO terminal_tables (day, features_version, frame, terminals, built_by) "
                "VALUES (%s, '1', '', 0, 'test')",
                (day,),
            )
        conn.commit()
        sealed = step_lookups(conn, asked)
        assert sealed.stored == empty.stored
        assert sealed.newest_sealed == np.datetime64("2026-03-03")
        assert step_lookups(conn, ["never-stored"]) == StepLookups({}, np.datetime64("2026-03-03"))


def test_observed_features_count_once_and_terminals_are_located_once(
    sink: PredictionSink, db: psycopg.Connection[tuple[object, ...]]
) -> None:
    engine = f"e-{uuid.uuid4().hex[:6]}"
    batch = _batch(engine, 10, engine)
    features = pd.DataFrame({name: [float(i) for i in range(10)] for name in PROFILED_FEATURES})
    profile = FeatureProfile.of_training(features, batch["score"].to_numpy())
    nowhere = np.array([np.nan])
    located = TerminalPlaces(
        np.array([f"T-{engine}"], dtype=object), np.array([1.5]), np.array([2.5]), nowhere, nowhere
    )
    seen = Observed(located, engine, f"m-{engine}", profile.as_dict(), profile.counts(features))
    sink.write(batch, [], observed=seen)
    # A replay (the rows are already stored) and a partly new batch add no feature counts.
    sink.write(batch, [], observed=seen)
    sink.write(pd.concat([batch, _batch(engine + "-more", 2, engine)]), [], observed=seen)
    counts = dict(
        db.execute(
            "SELECT feature, sum(n) FROM feature_hour, unnest(counts) AS n "
            "WHERE engine = %s GROUP BY 1",
            (engine,),
        ).fetchall()
    )
    assert counts == dict.fromkeys(PROFILED_FEATURES, 10)
    amount = db.execute(
        "SELECT counts FROM feature_hour WHERE engine = %s AND feature = 'amount'", (engine,)
    ).fetchone()
    assert amount == (profile.counts(features)["amount"].tolist(),)
    assert db.execute(
        "SELECT profile->'cuts'->'amount' FROM model_profiles WHERE model_version = %s",
        (f"m-{engine}",),
    ).fetchone() == (profile.cuts["amount"],)
    assert db.execute(
        "SELECT x, y, lat FROM terminal_locations WHERE terminal_id = %s", (f"T-{engine}",)
    ).fetchone() == (1.5, 2.5, None)


def test_alerts_open_one_case_per_card_join_it_and_a_resolved_case_is_not_reopened(
    sink: PredictionSink, db: psycopg.Connection[tuple[object, ...]]
) -> None:
    """Cases are written in the batch's transaction: a replay adds nothing, an alert on a
    card with an unresolved case joins it (raising its priority), and after the case is
    resolved the card's next alert opens a new one."""
    from fraudstream.store.cases import resolve
    from fraudstream.store.users import User

    engine = f"e-{uuid.uuid4().hex[:6]}"
    batch = _batch(engine, 12, engine).assign(card_id=lambda f: f["card_id"] + engine)
    sink.write(batch, [])  # reviews at rows 0, 4, 8: cards 0, 1, 2
    sink.write(batch, [])  # a replay
    cases = db.execute(
        "SELECT card_id, alert_count, priority, status FROM cases WHERE card_id LIKE %s "
        "ORDER BY card_id",
        (f"%{engine}",),
    ).fetchall()
    assert cases == [(f"card_{i}{engine}", 1, 3, "open") for i in range(3)]

    urgent = _batch(f"{engine}-b", 1, engine).assign(
        card_id=f"card_0{engine}", decision="decline", score=0.95
    )
    sink.write(urgent, [])
    case_id, count, priority = db.execute(
        "SELECT case_id, alert_count, priority FROM cases WHERE card_id = %s",
        (f"card_0{engine}",),
    ).fetchone()  # type: ignore[misc]
    assert (count, priority) == (2, 1)
    linked = db.execute(
        "SELECT tx_id FROM case_alerts WHERE case_id = %s ORDER BY tx_id", (case_id,)
    ).fetchall()
    assert [t for (t,) in linked] == [f"{engine}-0", f"{engine}-b-0"]

    db.execute(
        "INSERT INTO app_users (username, role, password_hash, created_at, created_by) "
        "VALUES ('sinktest', 'analyst', '$argon2id$x', now(), 'test') ON CONFLICT DO NOTHING"
    )
    labelled = resolve(db, case_id, fraud=True, by=User("sinktest", "analyst"), at=NOW)
    db.commit()
    assert sorted(labelled) == [f"{engine}-0", f"{engine}-b-0"]
    again = _batch(f"{engine}-c", 1, engine).assign(card_id=f"card_0{engine}", decision="review")
    sink.write(again, [])
    assert db.execute(
        "SELECT status, alert_count FROM cases WHERE card_id = %s ORDER BY case_id",
        (f"card_0{engine}",),
    ).fetchall() == [("resolved_fraud", 2), ("open", 1)]


def test_card_changes_no_card_can_need_are_dropped(sink: PredictionSink) -> None:
    """A checkpoint's card changes are kept while a card could still see them: up to the
    TTL plus the longest window behind the newest stored; the rest are deleted."""
    day = 86_400 * 1_000_000
    start = 1_700_000_000_000_000
    for sequence, days in enumerate([0, 10, 50, 80], start=1):
        snapshot = Snapshot(sequence, None, f"c{sequence}".encode(), sequence, start + days * day)
        sink.write(_batch("x", 0, "x"), [Checkpoint("cards", 2, sequence, snapshot=snapshot)])
    kept = [sequence for sequence, _blob in sink.card_changes("cards", 2, after=0)]
    assert timedelta(days=65) == CHANGES_KEPT
    assert kept == [3, 4]  # the newest is day 80: what ends before day 15 is dropped
    idle = Snapshot(9, None, b"", 4, None)  # nothing appended since checkpoint 4
    sink.write(_batch("x", 0, "x"), [Checkpoint("cards", 2, 9, snapshot=idle)])
    assert [sequence for sequence, _blob in sink.card_changes("cards", 2, after=0)] == [3, 4]
    assert sink.card_states("cards")[2].next_offset == 9
    sink.forget_card_state("cards", 2)
    assert list(sink.card_changes("cards", 2, after=0)) == []
    assert sink.card_states("cards") == {}

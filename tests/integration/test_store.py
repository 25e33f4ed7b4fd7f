"""The schema on the real PostgreSQL: predictions round trip, constraints, idempotent migration."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from functools import partial

import numpy as np
import pandas as pd
import psycopg
import pytest

from fraudstream.config import Settings
from fraudstream.engines.base import decision_rules
from fraudstream.engines.terminals import SettledCounts
from fraudstream.features.terminal import count_buckets
from fraudstream.schema import Label
from fraudstream.store import migrations, pins
from fraudstream.store.db import connect
from fraudstream.store.outcomes import load_terminal_activity, store_labels

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)


def _prediction(tx_id: str, decision: str = "review") -> dict[str, object]:
    return {
        "tx_id": tx_id,
        "event_time": NOW,
        "card_id": "tok_7f3a",
        "terminal_id": "T-42",
        "amount": Decimal("125.50"),
        "score": 0.91,
        "decision": decision,
        "rule_hits": ["amount_over_limit"],
        "reasons": json.dumps([{"feature": "card_amount_ratio_30d", "text": "amount 5.2x"}]),
        "model_version": "m-1",
        "engine": "local",
        "kafka_partition": 2,
        "kafka_offset": 17,
        "kafka_time": NOW + timedelta(milliseconds=3),
        "scored_at": NOW + timedelta(milliseconds=9),
    }


_INSERT = """
INSERT INTO fraud_predictions (tx_id, event_time, card_id, terminal_id, amount, score, decision,
    rule_hits, reasons, model_version, engine, kafka_partition, kafka_offset, kafka_time, scored_at)
VALUES (%(tx_id)s, %(event_time)s, %(card_id)s, %(terminal_id)s, %(amount)s, %(score)s,
    %(decision)s, %(rule_hits)s, %(reasons)s, %(model_version)s, %(engine)s, %(kafka_partition)s,
    %(kafka_offset)s, %(kafka_time)s, %(scored_at)s)
ON CONFLICT (tx_id) DO NOTHING
"""


def test_write_and_read_fraud_predictions(db: psycopg.Connection[tuple[object, ...]]) -> None:
    with db.transaction():
        inserted = db.execute(_INSERT, _prediction("tx-store-1")).rowcount
    row = db.execute(
        "SELECT card_id, amount, score, decision, rule_hits, reasons, kafka_offset, stored_at "
        "FROM fraud_predictions WHERE tx_id = %s",
        ("tx-store-1",),
    ).fetchone()
    assert inserted == 1
    assert row is not None
    card, amount, score, decision, rule_hits, reasons, offset, stored_at = row
    assert (card, amount, score, decision, offset) == (
        "tok_7f3a",
        Decimal("125.50"),
        0.91,
        "review",
        17,
    )
    assert rule_hits == ["amount_over_limit"]
    assert reasons == [{"feature": "card_amount_ratio_30d", "text": "amount 5.2x"}]
    assert isinstance(stored_at, datetime)


def test_the_primary_key_absorbs_a_replayed_prediction(
    db: psycopg.Connection[tuple[object, ...]],
) -> None:
    with db.transaction():
        first = db.execute(_INSERT, _prediction("tx-store-2")).rowcount
        replay = db.execute(_INSERT, _prediction("tx-store-2", decision="decline")).rowcount
    count, decision = db.execute(
        "SELECT count(*), min(decision) FROM fraud_predictions WHERE tx_id = 'tx-store-2'"
    ).fetchone()  # type: ignore[misc]
    assert (first, replay, count, decision) == (1, 0, 1, "review")


@pytest.mark.parametrize(
    ("field", "value"), [("decision", "maybe"), ("amount", Decimal("-1")), ("score", 1.5)]
)
def test_constraints_reject_impossible_rows(
    db: psycopg.Connection[tuple[object, ...]], field: str, value: object
) -> None:
    row = _prediction(f"tx-bad-{field}")
    row[field] = value
    with pytest.raises(psycopg.errors.CheckViolation), db.transaction():
        db.execute(_INSERT, row)


def _catalog(db: psycopg.Connection[tuple[object, ...]]) -> list[tuple[object, ...]]:
    return db.execute(
        """
        SELECT 'column', table_name, column_name || ' ' || data_type || ' ' || is_nullable
          FROM information_schema.columns WHERE table_schema = 'public'
        UNION ALL
        SELECT 'index', tablename, indexdef FROM pg_indexes WHERE schemaname = 'public'
        UNION ALL
        SELECT 'constraint', conrelid::regclass::text, pg_get_constraintdef(oid)
          FROM pg_constraint WHERE connamespace = 'public'::regnamespace
        UNION ALL
        SELECT 'migration', version::text, checksum || applied_at::text FROM schema_migrations
        ORDER BY 1, 2, 3
        """
    ).fetchall()


def test_migration_run_twice_changes_nothing(db: psycopg.Connection[tuple[object, ...]]) -> None:
    before = _catalog(db)
    assert migrations.migrate(db) == []
    assert migrations.is_current(db)
    assert _catalog(db) == before
    assert len(before) > 50


def test_an_edited_past_migration_is_detected(
    db: psycopg.Connection[tuple[object, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    original = migrations.migrations()
    edited = (migrations.Migration(1, original[0].name, original[0].sql + "\n-- edit"),)
    monkeypatch.setattr(migrations, "migrations", lambda: edited + original[1:])
    with pytest.raises(migrations.MigrationError, match="must never be edited"):
        migrations.migrate(db)


def test_a_newer_database_schema_is_refused(
    db: psycopg.Connection[tuple[object, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(migrations, "migrations", lambda: ())
    with pytest.raises(migrations.MigrationError, match="upgrade fraudstream"):
        migrations.is_current(db)


def test_counts_kept_from_seal_to_seal_build_the_tables_of_a_full_read(
    db: psycopg.Connection[tuple[object, ...]],
) -> None:
    _tables_from_kept_counts(db, first=date(2035, 3, 1), settled=SettledCounts())


def test_counts_read_ahead_of_the_next_seal_build_the_tables_of_a_full_read(
    db: psycopg.Connection[tuple[object, ...]], stack_settings: Settings
) -> None:
    # A restarted engine knows a day's table and reads ahead, on a connection of its own,
    # the counts the next day's table needs that are final already: that seal reads one day.
    settled = SettledCounts(partial(connect, stack_settings))
    _tables_from_kept_counts(db, first=date(2036, 3, 1), settled=settled, read_ahead=True)


def _tables_from_kept_counts(
    db: psycopg.Connection[tuple[object, ...]],
    *,
    first: date,
    settled: SettledCounts,
    read_ahead: bool = False,
) -> None:
    # An engine reads only the day of counts that became final at each seal and keeps the
    # rest; every table must be the one a full read of the database gives, labels included.
    rng = np.random.default_rng(3)
    # ``first``: after any table other tests sealed in this database (a label reported before
    # the newest sealed midnight is known only after it, migration 0006); a day of its own.
    tag = f"settled-{first:%Y}"
    terminals = [f"{tag}-T{i}" for i in range(40)]

    def history(day: date) -> None:
        chosen = rng.choice(terminals, 25, replace=False).tolist()
        db.execute(
            "INSERT INTO terminal_daily (terminal_id, day, tx_count) "
            "SELECT t, %s, c FROM unnest(%s::text[], %s::int8[]) AS u(t, c)",
            (day, chosen, rng.integers(1, 30, len(chosen)).tolist()),
        )

    def fraud(tx_id: str, terminal: str, at: datetime, reported: datetime) -> None:
        db.execute(_INSERT, {**_prediction(tx_id), "terminal_id": terminal, "event_time": at})
        store_labels(
            db, [Label(tx_id=tx_id, is_fraud=True, reported_at=reported, source="chargeback")]
        )

    for back in range(1, 46):
        history(first - timedelta(days=back))
    start = datetime(first.year, first.month, first.day, tzinfo=timezone.utc)
    fraud(f"{tag}-f1", terminals[3], start - timedelta(days=5), start - timedelta(days=2))
    db.commit()
    for after in range(6):
        day = np.datetime64(first + timedelta(days=after), "D")
        if read_ahead:  # as when the table of the day before was loaded, not sealed here
            settled.read_ahead(day - 1)
            settled.finish_reading()
            needed = np.arange(*count_buckets(day)[[0, -1]], dtype="datetime64[D]")
            assert set(needed) - settled.counted == {needed[-1]}  # the seal reads one day
        got = settled.activity_for(db, day).table(day).frame
        expected = load_terminal_activity(db, day).table(day).frame
        pd.testing.assert_frame_equal(got, expected.loc[got.index])
        assert (expected.drop(got.index) == 0).all().all()
        assert (got["terminal_known_frauds_7d"] > 0).any()
        history(first + timedelta(days=after))  # final by the time a table reads it
        # reported after this table's midnight: the next tables must know it
        fraud(f"{tag}-f{after + 2}", terminals[after], start, start + timedelta(days=after))
        db.commit()
    # labels read again at every seal: the five reported after the first are known by now
    assert (got["terminal_known_frauds_7d"] > 0).sum() == 5
    assert len(settled.counted) == 36  # only the days the windows span are kept


def test_pins_keep_each_partition_s_model_and_whole_rule_set(
    db: psycopg.Connection[tuple[object, ...]],
) -> None:
    """What a restarted engine decides its answered records with comes back as it was
    pinned: per partition, the rule set with its exploration and its lists' entries."""
    group = f"g-pins-{NOW.timestamp()}"
    settings = Settings(policy={"explore_share": 0.05})  # type: ignore[arg-type]
    listed = decision_rules(settings, None, {"blocked_cards": frozenset({"c-9", "c-1"})})
    plain = decision_rules(Settings())
    pins.pin(db, group, "tx", [0, 1], "m-1", listed)
    pins.pin(db, group, "tx", [1, 2], "m-2", plain)  # a switch: partition 1 again
    assert pins.pins(db, group, "tx") == {
        0: pins.Pin("m-1", listed.version),
        1: pins.Pin("m-2", plain.version),
        2: pins.Pin("m-2", plain.version),
    }
    assert pins.pins(db, group, "other-topic") == {}
    assert pins.rule_set(db, listed.version) == listed
    assert pins.rule_set(db, listed.version).lists == listed.lists  # type: ignore[union-attr]
    assert pins.rule_set(db, plain.version) == plain
    assert pins.rule_set(db, "never-used") is None

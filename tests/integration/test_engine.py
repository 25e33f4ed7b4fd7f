"""The local engine against real Kafka and PostgreSQL: exactly once through kill -9, SIGTERM,
broker and database restarts and a lost group member; dead letters; model hot swap."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import psycopg
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from fraudstream.clock import SystemClock
from fraudstream.config import Settings
from fraudstream.engines.local import LocalEngine
from fraudstream.features import history_features
from fraudstream.model.data import from_dataset
from fraudstream.model.profile import PROFILED_FEATURES
from fraudstream.model.registry import Registry
from fraudstream.model.train import train
from fraudstream.simulator.adapters import load_dataset
from fraudstream.simulator.generator import SimulationParams, generate, generate_blocks, preset
from fraudstream.simulator.history import write_history
from fraudstream.stack import Stack
from fraudstream.stack.postgres import EmbeddedPostgres
from fraudstream.store.db import conninfo, engine_conninfo
from fraudstream.store.roles import ENGINE_ROLE
from fraudstream.telemetry import read_samples

from ..engine_kit import (
    isolated,
    predictions,
    publish,
    start_engine,
    stop_engine,
    stored_count,
    wait_for,
)
from ..kafka_kit import read_topic

PAN = "4111111111111111"  # a Luhn-valid test card number


def todays_transactions(count_customers: int, seed: int) -> pd.DataFrame:
    """One simulated day of traffic, moved into today (UTC) before now."""
    history = generate(
        preset(
            "default",
            n_customers=count_customers,
            n_terminals=2 * count_customers,
            days=30,
            seed=seed,
        )
    )
    last_day = history[history["event_time"] >= history["event_time"].max().floor("D")].copy()
    now = pd.Timestamp.now(tz="UTC")
    start, end = now.floor("D"), now - pd.Timedelta(minutes=1)
    first, last = last_day["event_time"].min(), last_day["event_time"].max()
    span = max((last - first).total_seconds(), 1.0)
    fraction = (last_day["event_time"] - first).dt.total_seconds() / span
    last_day["event_time"] = start + pd.to_timedelta(
        fraction * (end - start).total_seconds(), unit="s"
    )
    return last_day.reset_index(drop=True)


def test_every_valid_message_scored_once_and_every_bad_one_dead_lettered(
    stack_settings: Settings, models_dir: Path
) -> None:
    settings = isolated(stack_settings, models_dir)
    frame = todays_transactions(1_000, seed=21)
    publish(settings, frame)
    valid = {
        "tx_id": "x", "event_time": datetime.now(timezone.utc).isoformat(), "card_id": "c",
        "terminal_id": "t", "amount": 1.0,
    }  # fmt: skip
    malformed = {
        b"not json at all": "not valid JSON",
        json.dumps(
            {k: v for k, v in valid.items() if k != "card_id"}
        ).encode(): "missing required field `card_id`",
        json.dumps({**valid, "amount": -5}).encode(): "Expected `float` >= 0.0",
        json.dumps({**valid, "amount": "12"}).encode(): "Expected `float`, got `str`",
        json.dumps({**valid, "event_time": "1999-01-01T00:00:00Z"}).encode(): "is outside",
        json.dumps({**valid, "channel": "x" * 20_000}).encode(): "exceeds the 16384-byte limit",
        json.dumps({**valid, "card_id": PAN}).encode(): "card_id looks like a card number",
    }
    producer = Producer(settings.kafka.client_config())
    for payload in malformed:
        key = PAN.encode() if PAN.encode() in payload else b"bad"  # keyed by card, as producers
        producer.produce(settings.kafka.topics.transactions, key=key, value=payload)
    producer.flush(30)

    stats = LocalEngine(settings, SystemClock()).run(max_idle_s=4)
    stored = predictions(settings)
    assert len(stored) == len(frame) == stats.scored
    assert set(stored.index) == set(frame["tx_id"])
    assert stats.rejected == len(malformed)

    with psycopg.connect(conninfo(settings)) as conn:
        reasons = [r for (r,) in conn.execute("SELECT reason FROM dlq_events").fetchall()]
        status = conn.execute("SELECT dlq_total, model_version FROM engine_status").fetchone()
        rollup = conn.execute("SELECT sum(tx_count) FROM rollup_minute").fetchone()
        counted = conn.execute(
            "SELECT feature, sum(n) FROM feature_hour, unnest(counts) AS n GROUP BY 1"
        ).fetchall()
        located = conn.execute("SELECT count(*), count(x) FROM terminal_locations").fetchone()
        timeline = conn.execute(
            "SELECT count(*) FILTER (WHERE kafka_time IS NULL OR kafka_time > scored_at "
            "OR scored_at > stored_at) FROM fraud_predictions"
        ).fetchone()
    assert timeline == (0,)  # broker append, scoring and storing times recorded, in order
    assert len(reasons) == len(malformed)
    for expected in malformed.values():
        assert any(expected in reason for reason in reasons), expected
    assert status is not None and status[0] == len(malformed)
    assert rollup == (len(frame),)
    # Every scored row counted once per profiled feature for the Drift page; every terminal
    # located once, from the simulator's coordinates, for the map.
    assert dict(counted) == dict.fromkeys(PROFILED_FEATURES, len(frame))
    assert located == (frame["terminal_id"].nunique(),) * 2

    dead = read_topic(settings, settings.kafka.topics.dlq, at_least=len(malformed))
    # The original bytes, kept; a card number never (the message kept without it).
    redacted = {p.replace(PAN.encode(), b"[card number removed]") for p in malformed}
    assert {m.value() for m in dead} == redacted
    assert not any(PAN.encode() in (m.key() or b"") + m.value() for m in dead)
    with psycopg.connect(conninfo(settings)) as conn:
        everywhere = conn.execute(
            "SELECT count(*) FROM fraud_predictions WHERE card_id = %(pan)s OR tx_id = %(pan)s"
            " UNION ALL SELECT count(*) FROM dlq_events WHERE reason LIKE %(like)s",
            {"pan": PAN, "like": f"%{PAN}%"},
        ).fetchall()
    assert everywhere == [(0,), (0,)]
    for message in dead:
        headers = dict(message.headers())
        assert (
            headers["reason"]
            and headers["source.topic"] == settings.kafka.topics.transactions.encode()
        )
    flagged = int((stored["decision"] != "approve").sum())
    alerts = read_topic(settings, settings.kafka.topics.alerts, at_least=flagged)
    assert {json.loads(m.value())["tx_id"] for m in alerts} == set(
        stored.index[stored["decision"] != "approve"]
    )


@dataclass(frozen=True)
class Recorded:
    """A stream of transactions on Kafka and what an uninterrupted engine made of it."""

    settings: Settings
    frame: pd.DataFrame
    expected: pd.DataFrame


ENGINE_KNOBS = {"batch_max_messages": 300, "snapshot_interval_s": 0.3}  # many small batches


@pytest.fixture(scope="module")
def recorded(stack_settings: Settings, models_dir: Path) -> Recorded:
    frame = todays_transactions(8_000, seed=33)
    reference = isolated(stack_settings, models_dir, **ENGINE_KNOBS)
    publish(reference, frame)
    LocalEngine(reference, SystemClock()).run(max_idle_s=4)
    expected = predictions(reference)
    assert len(expected) == len(frame)
    return Recorded(reference, frame, expected)


def replaying(recorded: Recorded, stack_settings: Settings, models: Path) -> Settings:
    """A fresh database and consumer group reading the recorded stream."""
    fresh = isolated(stack_settings, models, **ENGINE_KNOBS)
    return fresh.model_copy(update={"kafka": recorded.settings.kafka})


def assert_same_as_uninterrupted(settings: Settings, recorded: Recorded) -> None:
    got = predictions(settings)
    assert got.index.is_unique and len(got) == len(recorded.expected)
    pd.testing.assert_series_equal(got["decision"], recorded.expected["decision"])
    pd.testing.assert_series_equal(got["score"], recorded.expected["score"], rtol=0, atol=1e-12)


def test_kill_minus_nine_repeatedly_stores_each_transaction_exactly_once(
    stack_settings: Settings, models_dir: Path, recorded: Recorded, tmp_path: Path
) -> None:
    crashing = replaying(recorded, stack_settings, models_dir)
    total = len(recorded.expected)
    rng = random.Random(7)
    kills = 0
    for _ in range(4):
        process = start_engine(crashing, tmp_path / "engine.log")
        time.sleep(rng.uniform(2.5, 4.5))
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.wait(30)
        if stored_count(crashing) == total:
            break
    finished = start_engine(crashing, tmp_path / "engine.log")
    wait_for(lambda: stored_count(crashing) == total, 300, "every row after the kills")
    stop_engine(finished, tmp_path / "engine.log")
    assert kills >= 1
    assert_same_as_uninterrupted(crashing, recorded)


def test_sigterm_mid_stream_commits_whole_batches_and_resumes_exactly(
    stack_settings: Settings, models_dir: Path, recorded: Recorded, tmp_path: Path
) -> None:
    settings = replaying(recorded, stack_settings, models_dir)
    total = len(recorded.expected)
    log = tmp_path / "engine.log"
    process = start_engine(settings, log)
    wait_for(lambda: stored_count(settings) > 0, 60, "the first rows")
    stop_engine(process, log)
    assert "scored" in log.read_text()  # the exit summary: it stopped, it did not die
    with psycopg.connect(conninfo(settings)) as conn:
        mismatched = conn.execute(
            "SELECT c.partition, c.next_offset, count(p.tx_id), max(p.kafka_offset) "
            "FROM stream_checkpoints c LEFT JOIN fraud_predictions p "
            "ON p.kafka_partition = c.partition GROUP BY 1, 2 "
            "HAVING count(p.tx_id) <> c.next_offset OR max(p.kafka_offset) <> c.next_offset - 1"
        ).fetchall()
    stored = stored_count(settings)
    assert 0 < stored < total, "stopped too late to show anything"
    assert mismatched == []  # rows and offsets committed together, whole batches only

    resumed = start_engine(settings, log)
    wait_for(lambda: stored_count(settings) == total, 300, "every row after the resume")
    stop_engine(resumed, log)
    assert_same_as_uninterrupted(settings, recorded)


@pytest.mark.parametrize("service", ["broker", "database"])
def test_engine_waits_out_a_restart_and_loses_nothing(
    service: str,
    stack_settings: Settings,
    models_dir: Path,
    recorded: Recorded,
    tmp_path: Path,
) -> None:
    settings = replaying(recorded, stack_settings, models_dir)
    total = len(recorded.expected)
    log = tmp_path / "engine.log"
    process = start_engine(settings, log)
    wait_for(lambda: stored_count(settings) > total // 10, 120, "some rows before the restart")
    target = getattr(Stack(stack_settings), service)
    before = stored_count(settings)
    assert target.stop(), f"the {service} was not running, or not the one this stack started"
    time.sleep(3)  # the engine meets the outage mid-stream
    assert process.poll() is None, log.read_text()[-3000:]
    target.start()
    wait_for(lambda: stored_count(settings) == total, 180, "every transaction after the restart")
    stop_engine(process, log)
    assert before < total, "the stream ended before the restart"
    if service == "database":  # (librdkafka rides out a broker restart by itself)
        assert "recovering from the stored state" in log.read_text()
    assert_same_as_uninterrupted(settings, recorded)


def test_two_engines_share_the_stream_and_the_survivor_takes_over(
    stack_settings: Settings, models_dir: Path, recorded: Recorded, tmp_path: Path
) -> None:
    settings = isolated(stack_settings, models_dir, **ENGINE_KNOBS)  # an empty topic, for now
    total = len(recorded.expected)
    logs = [tmp_path / "engine-a.log", tmp_path / "engine-b.log"]
    engines = [start_engine(settings, log) for log in logs]

    def owners() -> dict[str, list[int]]:
        with psycopg.connect(conninfo(settings)) as conn:
            rows = conn.execute(
                "SELECT engine_id, partitions FROM engine_status "
                "WHERE heartbeat_at > now() - interval '3 seconds'"
            ).fetchall()
        return {str(engine): list(parts) for engine, parts in rows if parts}

    wait_for(lambda: len(owners()) == 2, 60, "both engines to own partitions")
    half = len(recorded.frame) // 2
    publish(settings, recorded.frame.iloc[:half])  # the same stream, in two parts
    wait_for(lambda: stored_count(settings) > 0, 60, "the first rows")
    os.kill(engines[0].pid, signal.SIGKILL)
    engines[0].wait(30)
    publish(settings, recorded.frame.iloc[half:])
    wait_for(lambda: stored_count(settings) == total, 180, "the survivor to finish the stream")
    survivor = f"{socket.gethostname()}-{engines[1].pid}"
    assert owners().get(survivor) == list(range(settings.kafka.partitions))
    stop_engine(engines[1], logs[1])
    assert_same_as_uninterrupted(settings, recorded)


def _group_is_empty(settings: Settings) -> bool:
    admin = AdminClient(settings.kafka.client_config())
    (future,) = admin.describe_consumer_groups([settings.engine.group_id]).values()
    return not future.result(timeout=10).members


def test_a_batch_that_fails_while_its_partitions_are_revoked_is_scored_again(
    stack_settings: Settings, models_dir: Path, recorded: Recorded, tmp_path: Path
) -> None:
    """The group takes the partitions away while their batch is being written, and the write
    fails: the revocation lets the batch go, the partitions come back and are read again from
    what is stored, and every row is stored once, as without the failure."""
    settings = isolated(stack_settings, models_dir, **ENGINE_KNOBS)
    with psycopg.connect(conninfo(recorded.settings)) as conn:
        partition_of = dict(
            conn.execute("SELECT tx_id, kafka_partition FROM fraud_predictions").fetchall()
        )
    frame = recorded.frame
    half = len(frame) // 2
    later = frame.iloc[half:]
    in_partition = later[later["tx_id"].map(partition_of) == 0]
    caught = in_partition.iloc[:20]  # one partition's next records: a single step
    log = tmp_path / "engine.log"
    publish(settings, frame.iloc[:half])
    process = start_engine(settings, log)
    try:
        wait_for(lambda: stored_count(settings) == half, 180, "the first half")
        with psycopg.connect(conninfo(settings)) as locker:
            locker.execute("LOCK TABLE fraud_predictions IN SHARE MODE")
            publish(settings, caught)

            admin = psycopg.connect(EmbeddedPostgres(settings).admin_conninfo(), autocommit=True)

            def waiting_writer() -> int | None:  # (only the superuser sees others' waits)
                row = admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s AND usename = %s "
                    "AND wait_event_type = 'Lock'",
                    (settings.database.name, ENGINE_ROLE),
                ).fetchone()
                return None if row is None else int(row[0])

            with admin:
                wait_for(lambda: waiting_writer() is not None, 60, "the write to wait on it")
                writer = waiting_writer()
                os.kill(process.pid, signal.SIGSTOP)  # the group expires the engine meanwhile
                try:
                    wait_for(lambda: _group_is_empty(settings), 60, "the group to drop it")
                    admin.execute("SELECT pg_cancel_backend(%s)", [writer])  # the write fails
                finally:
                    os.kill(process.pid, signal.SIGCONT)
        wait_for(
            lambda: "batch in flight at revocation not stored" in log.read_text(),
            60,
            "the revocation to meet the failed write",
        )
        publish(settings, later.drop(caught.index))
        wait_for(lambda: stored_count(settings) == len(frame), 180, "every row")
    finally:
        if process.poll() is None:
            stop_engine(process, log)
    assert_same_as_uninterrupted(settings, recorded)


def test_a_promoted_model_is_picked_up_without_a_restart(
    stack_settings: Settings, models_dir: Path, recorded: Recorded, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    registry = Registry(models)
    first = registry.current()
    params = preset("handbook", n_customers=600, n_terminals=1_200, days=160, seed=9)
    frame, frauds = from_dataset(load_dataset(_history(tmp_path, params), tokenizer=None))
    result = train(
        frame, history_features(frame, frauds), backend_name="xgboost",
        grid=[{"n_estimators": 30, "max_depth": 3}],
        created_at=datetime(2026, 1, 2, tzinfo=timezone.utc), source="test",
    )  # fmt: skip
    second = registry.save(result.model, result.metadata)
    assert second != first

    # The promotion falls between two halves of the stream, after the first is stored and
    # once the engine says it switched: no race with how fast the engine reads.
    settings = isolated(stack_settings, models, **ENGINE_KNOBS)
    half = len(recorded.frame) // 2
    before, after = recorded.frame.iloc[:half], recorded.frame.iloc[half:]
    publish(settings, before)
    log = tmp_path / "engine.log"
    process = start_engine(settings, log)
    wait_for(lambda: stored_count(settings) == len(before), 180, "the first half")
    registry.promote(second)
    wait_for(lambda: _reported_model(settings) == second, 60, "the engine's switch")
    publish(settings, after)
    wait_for(lambda: stored_count(settings) == len(recorded.frame), 180, "the second half")
    stop_engine(process, log)

    got = predictions(settings)
    assert (got.loc[before["tx_id"], "model_version"] == first).all()
    assert (got.loc[after["tx_id"], "model_version"] == second).all()
    assert _reported_model(settings) == second


def _reported_model(settings: Settings) -> str | None:
    with psycopg.connect(conninfo(settings)) as conn:
        row = conn.execute("SELECT model_version FROM engine_status").fetchone()
    return str(row[0]) if row else None


def _history(tmp_path: Path, params: SimulationParams) -> Path:
    path = tmp_path / "history.parquet"
    write_history(generate_blocks(params), path, params)
    return path


def _samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value for s in read_samples(url)}


def _value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_the_engines_metrics_say_what_it_stored(
    stack_settings: Settings, models_dir: Path, tmp_path: Path
) -> None:
    """Scraped from the running engine's /metrics after a known stream with replays, reused
    ids and malformed messages: each series equals what PostgreSQL and Kafka hold."""
    settings = isolated(stack_settings, models_dir, **ENGINE_KNOBS)
    frame = todays_transactions(1_000, seed=23)
    publish(settings, frame)
    again = frame.iloc[:20]  # replays: the same transactions sent again
    reused = frame.iloc[20:25].assign(amount=frame["amount"].iloc[20:25] + 1)  # conflicts
    publish(settings, pd.concat([again, reused], ignore_index=True))
    producer = Producer(settings.kafka.client_config())
    valid = {
        "tx_id": "m", "event_time": datetime.now(timezone.utc).isoformat(), "card_id": "c",
        "terminal_id": "t", "amount": 1.0,
    }  # fmt: skip
    for payload in [b"{", b"not json", json.dumps({**valid, "amount": "1"}).encode(),
                    json.dumps({**valid, "card_id": PAN}).encode()]:  # fmt: skip
        producer.produce(settings.kafka.topics.transactions, key=b"bad", value=payload)
    producer.flush(30)
    dead = {"replay": 20, "conflict": 5, "not_json": 2, "invalid_field": 1, "card_number": 1}

    log = tmp_path / "engine.log"
    process = start_engine(settings, log)
    url = settings.metrics.url_of("engine")
    assert url is not None
    try:
        wait_for(lambda: stored_count(settings) == len(frame), 120, "every transaction stored")
        partitions = settings.kafka.partitions

        def settled() -> bool:  # the status interval (0.5 s) has reported the end of the logs
            found = _samples(url)
            lag = [v for (n, _l), v in found.items() if n == "fraudstream_engine_consumer_lag"]
            return len(lag) == partitions and sum(lag) == 0 and _value(
                found, "fraudstream_engine_dead_letters_total", source="transactions",
                reason="replay",
            ) == dead["replay"]  # fmt: skip

        wait_for(settled, 60, "the metrics to show the logs consumed")
        found = _samples(url)
    finally:
        stop_engine(process, log)

    with psycopg.connect(conninfo(settings)) as conn:
        decisions = dict(
            conn.execute("SELECT decision, count(*) FROM fraud_predictions GROUP BY 1").fetchall()
        )
        (version,) = conn.execute("SELECT DISTINCT model_version FROM fraud_predictions").fetchone()
    assert _value(found, "fraudstream_engine_transactions_total") == len(frame)
    for decision in ("approve", "review", "decline"):
        assert _value(
            found, "fraudstream_engine_decisions_total", decision=decision
        ) == decisions.get(decision, 0), decision
    assert _value(found, "fraudstream_engine_alerts_total") == len(frame) - decisions["approve"]
    letters = {
        dict(labels)["reason"]: value
        for (name, labels), value in found.items()
        if name == "fraudstream_engine_dead_letters_total"
    }
    assert letters == dead
    assert _value(found, "fraudstream_engine_end_to_end_seconds_count") == len(frame)
    assert _value(found, "fraudstream_engine_end_to_end_seconds_sum") > 0
    assert _value(found, "fraudstream_engine_batch_seconds_count") >= 1
    assert _value(found, "fraudstream_engine_model_info", role="champion", version=version) == 1
    assert _value(found, "fraudstream_engine_info", engine="local") == 1
    assert _value(found, "fraudstream_engine_partitions") == partitions
    assert _value(found, "fraudstream_engine_checkpoint_seconds_count") >= 1
    assert _value(found, "fraudstream_engine_last_checkpoint_timestamp_seconds") > time.time() - 600
    assert _value(found, "fraudstream_engine_cards_in_memory") == frame["card_id"].nunique()


def test_the_engines_database_user_writes_only_what_engines_write(
    stack_settings: Settings, models_dir: Path
) -> None:
    """Not a superuser, no DDL, no deletes but its own pruning, and none of the analysts',
    the API's or the audit trail's records changed; the engines run as it (every engine test
    here does)."""
    settings = isolated(stack_settings, models_dir)
    with psycopg.connect(conninfo(settings)) as conn:  # the owner, who migrates: no superuser
        owner = conn.execute(
            "SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert owner == (False, True)
    with psycopg.connect(engine_conninfo(settings), autocommit=True) as conn:
        role = conn.execute(
            "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles "
            "WHERE rolname = current_user"
        ).fetchone()
        assert role == (ENGINE_ROLE, False, False, False)
        conn.execute("SELECT count(*) FROM rule_versions, list_entries, labels")  # reads all
        conn.execute("DELETE FROM card_changes WHERE false")  # its own pruning
        refused = [
            "DROP TABLE fraud_predictions",
            "ALTER TABLE fraud_predictions ADD COLUMN x int",
            "TRUNCATE fraud_predictions",
            "DELETE FROM fraud_predictions",
            "CREATE TABLE mine (x int)",
            "UPDATE rule_versions SET approved_by = 'engine'",
            "INSERT INTO app_users (username, role, password_hash, created_at, created_by) "
            "VALUES ('xx', 'admin', '$argon2id$h', now(), 'engine')",
            "INSERT INTO api_keys (name, prefix, key_sha256) "
            "VALUES ('x', 'fsk_', sha256('k'::bytea))",
            "UPDATE audit_log SET actor = 'x'",
            "INSERT INTO list_entries (list_name, value, reason, added_by, added_at) "
            "VALUES ('blocked_cards', 'c', 'r', 'engine', now())",
        ]
        for statement in refused:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)

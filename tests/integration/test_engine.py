"""The local engine against real Kafka and PostgreSQL: exactly once, dead letters, kill -9."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import psycopg
import pytest
from confluent_kafka import Consumer, Producer
from psycopg import sql

from fraudstream import bus
from fraudstream.clock import SystemClock
from fraudstream.config import Settings, TopicSettings
from fraudstream.engines.local import LocalEngine
from fraudstream.features import history_features
from fraudstream.model.data import from_dataset
from fraudstream.model.registry import Registry
from fraudstream.model.train import train
from fraudstream.simulator.adapters import load_dataset
from fraudstream.simulator.generator import generate, generate_blocks, preset
from fraudstream.simulator.history import write_history
from fraudstream.simulator.publish import Publisher, TransactionRows
from fraudstream.store import migrations
from fraudstream.store.db import connect, conninfo

from ..conftest import overrides_env


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    params = preset("handbook", n_customers=600, n_terminals=1_200, days=160, seed=8)
    history = tmp_path_factory.mktemp("engine-model") / "h.parquet"
    write_history(generate_blocks(params), history, params)
    frame, frauds = from_dataset(load_dataset(history, tokenizer=None))
    result = train(
        frame, history_features(frame, frauds), backend_name="xgboost",
        grid=[{"n_estimators": 80, "max_depth": 4}],
        created_at=datetime(2026, 1, 1, tzinfo=timezone.utc), source="test",
    )  # fmt: skip
    registry = Registry(history.parent / "models")
    registry.promote(registry.save(result.model, result.metadata))
    return registry.root


def isolated(stack_settings: Settings, models: Path, **engine: object) -> Settings:
    """The session's broker and server with this test's own topics, database and group."""
    run = uuid.uuid4().hex[:8]
    topics = TopicSettings(
        transactions=f"tx-{run}", labels=f"lb-{run}", alerts=f"al-{run}", dlq=f"dlq-{run}"
    )
    kafka = stack_settings.kafka.model_copy(update={"topics": topics})
    bus.ensure_topics(kafka)
    with connect(stack_settings, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(f"db_{run}")))
    database = stack_settings.database.model_copy(update={"name": f"db_{run}"})
    engine_settings = stack_settings.engine.model_copy(
        update={"group_id": f"g-{run}", "status_interval_s": 0.5, **engine}
    )
    settings = stack_settings.model_copy(
        update={
            "kafka": kafka,
            "database": database,
            "engine": engine_settings,
            "model": stack_settings.model.model_copy(update={"dir": models}),
        }
    )
    with connect(settings) as conn:
        migrations.migrate(conn)
    return settings


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


def publish(settings: Settings, frame: pd.DataFrame) -> None:
    publisher = Publisher(settings.kafka)
    rows = TransactionRows(frame)
    for index in range(len(rows)):
        publisher.send_transaction(rows.record(index))
    publisher.flush()


def predictions(settings: Settings) -> pd.DataFrame:
    with psycopg.connect(conninfo(settings)) as conn:
        rows = conn.execute(
            "SELECT tx_id, score, decision, model_version FROM fraud_predictions"
        ).fetchall()
    return (
        pd.DataFrame(rows, columns=["tx_id", "score", "decision", "model_version"])
        .set_index("tx_id")
        .sort_index()
    )


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
    }
    producer = Producer(settings.kafka.client_config())
    for payload in malformed:
        producer.produce(settings.kafka.topics.transactions, key=b"bad", value=payload)
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

    dead = _drain(settings, settings.kafka.topics.dlq, len(malformed))
    assert {m.value() for m in dead} == set(malformed)  # the original bytes, kept
    for message in dead:
        headers = dict(message.headers())
        assert (
            headers["reason"]
            and headers["source.topic"] == settings.kafka.topics.transactions.encode()
        )
    flagged = int((stored["decision"] != "approve").sum())
    alerts = _drain(settings, settings.kafka.topics.alerts, flagged)
    assert {json.loads(m.value())["tx_id"] for m in alerts} == set(
        stored.index[stored["decision"] != "approve"]
    )


def _drain(settings: Settings, topic: str, expect: int, timeout_s: float = 60):
    consumer = Consumer(
        {
            **settings.kafka.client_config(),
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    found = []
    deadline = time.monotonic() + timeout_s
    while len(found) < expect and time.monotonic() < deadline:
        found += [m for m in consumer.consume(1000, 0.5) if not m.error()]
    time.sleep(0.5)
    found += [m for m in consumer.consume(1000, 0.5) if not m.error()]
    consumer.close()
    return found


def test_kill_minus_nine_repeatedly_stores_each_transaction_exactly_once(
    stack_settings: Settings, models_dir: Path
) -> None:
    frame = todays_transactions(8_000, seed=33)
    engine_knobs = {"batch_max_messages": 300, "snapshot_interval_s": 0.3}
    reference = isolated(stack_settings, models_dir, **engine_knobs)
    publish(reference, frame)
    LocalEngine(reference, SystemClock()).run(max_idle_s=4)
    expected = predictions(reference)
    assert len(expected) == len(frame)

    crashing = isolated(stack_settings, models_dir, **engine_knobs)
    crashing = crashing.model_copy(update={"kafka": reference.kafka})  # the same recorded stream
    env = overrides_env(
        {
            "state_dir": str(crashing.state_dir),
            "kafka.port": str(crashing.kafka.port),
            "kafka.controller_port": str(crashing.kafka.controller_port),
            "kafka.topics.transactions": crashing.kafka.topics.transactions,
            "kafka.topics.labels": crashing.kafka.topics.labels,
            "kafka.topics.alerts": crashing.kafka.topics.alerts,
            "kafka.topics.dlq": crashing.kafka.topics.dlq,
            "database.port": str(crashing.database.port),
            "database.name": crashing.database.name,
            "engine.group_id": crashing.engine.group_id,
            "engine.batch_max_messages": "300",
            "engine.snapshot_interval_s": "0.3",
            "model.dir": str(models_dir),
        }
    )
    rng = random.Random(7)
    kills = 0
    for _ in range(4):
        process = subprocess.Popen(
            [sys.executable, "-m", "fraudstream", "score"], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(rng.uniform(2.5, 4.5))
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.wait(30)
        if len(predictions(crashing)) == len(frame):
            break
    finished = subprocess.run(
        [sys.executable, "-m", "fraudstream", "score", "--max-idle", "15"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-2000:]
    got = predictions(crashing)
    assert kills >= 1
    assert len(got) == len(frame) and got.index.is_unique
    pd.testing.assert_series_equal(got["decision"], expected["decision"])
    pd.testing.assert_series_equal(got["score"], expected["score"], rtol=0, atol=1e-12)

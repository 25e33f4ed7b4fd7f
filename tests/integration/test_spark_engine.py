"""The Spark engine against the local engine on the same recorded stream (real Kafka, real
PostgreSQL, Spark in local mode and on a standalone cluster started by fraudstream)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psycopg
import pytest
from confluent_kafka import Producer
from prometheus_client import REGISTRY

from fraudstream.clock import SystemClock
from fraudstream.config import Settings, env_name
from fraudstream.engines.local import LocalEngine
from fraudstream.engines.spark import SparkEngine
from fraudstream.stack import Stack
from fraudstream.stack.spark import StandaloneCluster
from fraudstream.store.db import conninfo
from fraudstream.telemetry import ENGINE_LAG, ENGINE_STATE_BYTES

from ..conftest import free_port
from ..engine_kit import (
    engine_env,
    isolated,
    predictions,
    publish,
    stop_engine,
    stored_count,
    wait_for,
)
from .test_engine import todays_transactions

_LAG = "fraudstream_engine_consumer_lag"
MALFORMED = [b"not json", json.dumps({"tx_id": "x", "amount": -1}).encode()]


@dataclass(frozen=True)
class Scored:
    """A recorded stream (with malformed messages) and the local engine's predictions."""

    settings: Settings
    expected: pd.DataFrame


@pytest.fixture(scope="module")
def scored(stack_settings: Settings, models_dir: Path) -> Scored:
    local = isolated(stack_settings, models_dir)
    frame = todays_transactions(1_500, seed=44)
    publish(local, frame.iloc[: len(frame) // 2])
    producer = Producer(local.kafka.client_config())
    for payload in MALFORMED:
        producer.produce(local.kafka.topics.transactions, key=b"bad", value=payload)
    producer.flush(30)
    publish(local, frame.iloc[len(frame) // 2 :])
    LocalEngine(local, SystemClock()).run(max_idle_s=4)
    expected = predictions(local)
    assert len(expected) == len(frame)
    return Scored(local, expected)


def spark_settings(scored: Scored, stack_settings: Settings, models: Path, root: Path) -> Settings:
    """A fresh database and checkpoint reading the recorded stream in small micro-batches."""
    fresh = isolated(stack_settings, models)
    spark = fresh.spark.model_copy(
        update={
            "checkpoint_dir": root / "checkpoints",
            "max_offsets_per_trigger": len(scored.expected) // 4,  # state across micro-batches
            "trigger_interval_s": 0.5,
        }
    )
    return fresh.model_copy(update={"kafka": scored.settings.kafka, "spark": spark})


def assert_same_rows(settings: Settings, scored: Scored) -> None:
    got = predictions(settings)
    assert len(got) == len(scored.expected) and got.index.is_unique
    pd.testing.assert_series_equal(got["decision"], scored.expected["decision"])
    pd.testing.assert_series_equal(got["score"], scored.expected["score"], rtol=0, atol=1e-9)


def test_spark_gives_the_local_engines_predictions_across_micro_batches(
    stack_settings: Settings, models_dir: Path, scored: Scored, tmp_path: Path
) -> None:
    settings = spark_settings(scored, stack_settings, models_dir, tmp_path)
    engine = SparkEngine(settings, SystemClock(), master="local[2]")
    total = len(scored.expected)
    partitions = [str(p) for p in range(settings.kafka.partitions)]
    ENGINE_LAG.clear()  # the metrics are this process's: a local engine's may be there
    ENGINE_STATE_BYTES.set(0)

    def lag() -> list[float | None]:
        return [REGISTRY.get_sample_value(_LAG, {"partition": p}) for p in partitions]

    def stop_when_stored() -> None:  # every row and dead letter stored, or time is up
        try:
            wait_for(
                lambda: stored_count(settings) == total and _dead(settings) == len(MALFORMED)
                and lag() == [0.0] * len(partitions),
                300, "every row and dead letter, and no lag on any partition",
            )  # fmt: skip
        finally:
            engine.stop.set()

    threading.Thread(target=stop_when_stored, daemon=True).start()
    stats = engine.run()
    assert stats.batches >= 4
    # The driver exports what each micro-batch's progress says: lag per partition (all read
    # by now) and the card state's size in Spark's state store.
    assert lag() == [0.0] * len(partitions)
    assert (REGISTRY.get_sample_value("fraudstream_engine_card_store_bytes") or 0) > 0
    assert_same_rows(settings, scored)
    with psycopg.connect(conninfo(settings)) as conn:
        reasons = [r for (r,) in conn.execute("SELECT reason FROM dlq_events").fetchall()]
        engines = conn.execute("SELECT DISTINCT engine FROM fraud_predictions").fetchall()
    assert len(reasons) == len(MALFORMED) and all(reasons)
    assert engines == [("spark",)]


def _dead(settings: Settings) -> int:
    with psycopg.connect(conninfo(settings)) as conn:
        row = conn.execute("SELECT count(*) FROM dlq_events").fetchone()
    return int(row[0]) if row else 0


SPARK_COMMAND = [sys.executable, "-m", "fraudstream", "score", "--engine", "spark"]


def driver_env(settings: Settings) -> dict[str, str]:
    """The environment that gives `fraudstream score --engine spark` these settings."""
    env = engine_env(settings)
    env[env_name("spark.checkpoint_dir")] = str(settings.spark.checkpoint_dir)
    env[env_name("spark.max_offsets_per_trigger")] = str(settings.spark.max_offsets_per_trigger)
    env[env_name("spark.trigger_interval_s")] = str(settings.spark.trigger_interval_s)
    return env


def test_a_killed_driver_restarts_from_its_checkpoint_exactly_once(
    stack_settings: Settings, models_dir: Path, scored: Scored, tmp_path: Path
) -> None:
    settings = spark_settings(scored, stack_settings, models_dir, tmp_path)
    env = driver_env(settings)
    log = (tmp_path / "driver.log").open("ab")
    command = SPARK_COMMAND
    driver = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: stored_count(settings) > 0, 180, "the first micro-batch")
    assert stored_count(settings) < len(scored.expected), "the stream ended before the kill"
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(30)
    time.sleep(2)  # the driver's JVM notices its Python is gone
    restarted = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    total = len(scored.expected)
    wait_for(lambda: stored_count(settings) == total, 300, "every row after the restart")
    restarted.send_signal(signal.SIGTERM)
    assert restarted.wait(60) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    assert_same_rows(settings, scored)


def test_the_driver_waits_out_a_database_restart_and_loses_nothing(
    stack_settings: Settings, models_dir: Path, scored: Scored, tmp_path: Path
) -> None:
    settings = spark_settings(scored, stack_settings, models_dir, tmp_path)
    spark = settings.spark.model_copy(update={"max_offsets_per_trigger": 100})
    settings = settings.model_copy(update={"spark": spark})  # many micro-batches to interrupt
    log = tmp_path / "driver.log"
    driver = subprocess.Popen(
        SPARK_COMMAND, env=driver_env(settings), stdout=log.open("ab"), stderr=subprocess.STDOUT
    )
    wait_for(lambda: stored_count(settings) > 0, 180, "the first micro-batch")
    database = Stack(stack_settings).database
    assert database.stop(), "the database was not running, or not the one this stack started"
    time.sleep(3)  # micro-batches meet the outage
    assert driver.poll() is None, log.read_text()[-3000:]
    database.start()
    total = len(scored.expected)
    wait_for(lambda: stored_count(settings) == total, 240, "every transaction after the restart")
    stop_engine(driver, log)
    assert "recovering from the checkpoint" in log.read_text()
    assert_same_rows(settings, scored)


def test_a_standalone_cluster_runs_the_engine(
    stack_settings: Settings, models_dir: Path, scored: Scored, tmp_path: Path
) -> None:
    settings = spark_settings(scored, stack_settings, models_dir, tmp_path)
    cluster = StandaloneCluster(settings, master_port=free_port(), root=tmp_path / "cluster")
    cluster.start()
    try:
        # Wait on progress (every row stored), never on wall time: a loaded machine starts
        # the cluster's executors slowly.
        stop = threading.Event()
        engine = SparkEngine(settings, SystemClock(), stop, master=cluster.url)
        running = threading.Thread(target=engine.run, name="spark-engine")
        running.start()
        wait_for(
            lambda: stored_count(settings) >= len(scored.expected) or not running.is_alive(),
            600, "every row stored by the cluster",
        )  # fmt: skip
        stop.set()
        running.join(180)
        assert not running.is_alive(), "the engine did not stop within 180 s"
        executors = (tmp_path / "cluster" / "work").rglob("stderr")
        assert any(executors), "no executor ran on the worker"
    finally:
        cluster.stop()
    assert_same_rows(settings, scored)

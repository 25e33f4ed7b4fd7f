"""The Spark engine against the local engine on the same recorded stream (real Kafka, real
PostgreSQL, Spark in local mode)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import psycopg
from confluent_kafka import Producer

from fraudstream.clock import SystemClock
from fraudstream.config import Settings
from fraudstream.engines.local import LocalEngine
from fraudstream.engines.spark import SparkEngine
from fraudstream.store.db import conninfo

from .test_engine import isolated, models_dir, predictions, publish, todays_transactions

__all__ = ["models_dir"]  # the fixture, shared with the local engine's tests

MALFORMED = [b"not json", json.dumps({"tx_id": "x", "amount": -1}).encode()]


def test_spark_gives_the_local_engines_predictions_across_micro_batches(
    stack_settings: Settings, models_dir: Path, tmp_path: Path
) -> None:
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

    spark = isolated(stack_settings, models_dir)
    spark = spark.model_copy(
        update={
            "kafka": local.kafka,  # the same recorded stream
            "spark": spark.spark.model_copy(
                update={
                    "checkpoint_dir": tmp_path / "checkpoints",
                    "max_offsets_per_trigger": len(frame) // 4,  # state across micro-batches
                    "trigger_interval_s": 0.5,
                }
            ),
        }
    )
    stats = SparkEngine(spark, SystemClock(), master="local[2]").run(max_idle_s=10)
    got = predictions(spark)

    assert stats.batches >= 4
    assert len(got) == len(expected) and got.index.is_unique
    pd.testing.assert_series_equal(got["decision"], expected["decision"])
    pd.testing.assert_series_equal(got["score"], expected["score"], rtol=0, atol=1e-9)
    assert set(got["model_version"]) == set(expected["model_version"])
    with psycopg.connect(conninfo(spark)) as conn:
        reasons = [r for (r,) in conn.execute("SELECT reason FROM dlq_events").fetchall()]
        engines = conn.execute("SELECT DISTINCT engine FROM fraud_predictions").fetchall()
    assert len(reasons) == len(MALFORMED) and all(reasons)
    assert engines == [("spark",)]

"""The Spark engine: the local engine's pipeline as one Structured Streaming query.

Kafka source (the official connector) → decode and validate each message with the canonical
decoder (a pandas UDF) → card features in ``applyInPandasWithState`` with the shared feature
code → ``foreachBatch`` on the driver: terminal and calendar features, the same model and
policy, dead letters to Kafka, predictions through the same idempotent COPY sink, alerts.

Card state is kept per hash bucket of the card id, a ``CardState`` of many cards, so the
feature code runs vectorised once per bucket and micro-batch (one Python call per card was
8× slower). Within a bucket, rows are ordered by partition and offset: a card's arrival order,
exactly as the local engine sees it. Offsets and state live in the query's checkpoint (RocksDB
state store); a micro-batch replayed after a crash produces the same rows, absorbed by the
primary key.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd

from fraudstream.clock import Clock
from fraudstream.config import Settings
from fraudstream.engines.common import (
    DeadLetter,
    StatusReporter,
    TerminalRisk,
    dead_letter,
    decision_rules,
    empty_predictions,
    engine_id,
    engine_producer,
    predictions_frame,
    publish_alerts,
)
from fraudstream.engines.local import EngineStats
from fraudstream.features import FEATURE_NAMES, FeatureComputer
from fraudstream.model.registry import Registry
from fraudstream.model.scoring import Scorer
from fraudstream.policy import RuleSet
from fraudstream.schema import Invalid, Transaction, decode_transaction
from fraudstream.stack.spark import spark_session
from fraudstream.store.db import connect
from fraudstream.store.sink import PredictionSink

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming.query import StreamingQuery
    from pyspark.sql.streaming.state import GroupState

__all__ = ["SparkEngine"]

log = logging.getLogger("fraudstream.engine")

STATE_BUCKETS = 64
"""Card-state groups. Part of the checkpoint's meaning: changing it needs a new checkpoint."""

CARD_FEATURES = [name for name in FEATURE_NAMES if name.startswith("card_")]
_FIELDS = list(Transaction.__struct_fields__)
_TEXT = {"tx_id", "card_id", "terminal_id", "currency", "merchant_category", "channel"}
_DECODED = (
    ", ".join(
        f"{name} {'string' if name in _TEXT else 'timestamp' if name == 'event_time' else 'double'}"
        for name in _FIELDS
    )
    + ", reason string, raw binary, _partition int, _offset long, _kafka_time timestamp"
)
_FEATURED = _DECODED + ", " + ", ".join(f"{name} double" for name in CARD_FEATURES)


def _decode(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """Executor side: each Kafka record through the canonical decoder; bad ones keep their
    bytes and the reason."""
    for raw in batches:
        now = datetime.now(timezone.utc)
        columns: dict[str, list[Any]] = {name: [] for name in _FIELDS}
        reasons: list[str | None] = []
        for value in raw["value"]:
            record = decode_transaction(bytes(value) if value is not None else b"", now=now)
            if isinstance(record, Invalid):
                reasons.append(record.reason)
                for name in _FIELDS:
                    columns[name].append(None)
            else:
                reasons.append(None)
                for name in _FIELDS:
                    columns[name].append(getattr(record, name))
        frame = pd.DataFrame(columns)
        frame["event_time"] = pd.to_datetime(frame["event_time"], utc=True)
        frame["reason"] = reasons
        frame["raw"] = raw["value"].to_numpy()
        frame["_partition"] = raw["partition"].to_numpy(dtype=np.int32)
        frame["_offset"] = raw["offset"].to_numpy(dtype=np.int64)
        frame["_kafka_time"] = raw["timestamp"].to_numpy()
        yield frame


def _card_step(
    key: tuple[Any, ...], batches: Iterator[pd.DataFrame], state: GroupState
) -> Iterator[pd.DataFrame]:
    """Executor side: one bucket's rows of a micro-batch through the shared card features,
    with the bucket's card state carried in Spark's state store."""
    from fraudstream.features.card import CardState, card_features

    frame = pd.concat(list(batches), ignore_index=True).drop(columns="_bucket")
    if int(key[0]) < 0:  # rejected messages pass through, for the dead-letter topic
        for name in CARD_FEATURES:
            frame[name] = np.nan
        yield frame
        return
    frame = frame.sort_values(["_partition", "_offset"], kind="stable", ignore_index=True)
    frame["event_time"] = pd.to_datetime(frame["event_time"], utc=True)
    cards = CardState.from_bytes(bytes(state.get[0])) if state.exists else CardState()
    features = card_features(cards, frame)
    state.update((cards.to_bytes(),))
    for name in CARD_FEATURES:
        frame[name] = features[name]
    yield frame


class SparkEngine:
    name = "spark"

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        stop: threading.Event | None = None,
        master: str | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.stop = stop or threading.Event()
        self.master = master
        self.registry = Registry(settings.models_dir)
        self.scorer = Scorer(self.registry.load())
        self.rules: RuleSet = decision_rules(settings)
        self.conn = connect(settings)
        self.sink = PredictionSink(
            connect(settings), consumer_group=f"spark:{settings.engine.group_id}",
            features_version=self.scorer.artifact.metadata["features_version"],
        )  # fmt: skip
        self.terminals = TerminalRisk(settings, f"spark-{settings.engine.group_id}")
        self.producer = engine_producer(settings)
        self.stats = EngineStats()
        self._reporter = StatusReporter(
            engine_id=engine_id(settings), engine=self.name, group=settings.engine.group_id,
            started_at=clock.now(),
        )  # fmt: skip
        self._reported = 0.0

    @property
    def checkpoint(self) -> Path:
        root = self.settings.spark.checkpoint_dir or self.settings.state_dir / "spark"
        return root / "checkpoints" / self.settings.engine.group_id

    def query(self, spark: SparkSession) -> DataFrame:
        """The streaming pipeline up to the micro-batch sink."""
        from pyspark.sql import functions as F
        from pyspark.sql.streaming.state import GroupStateTimeout

        kafka = self.settings.kafka
        source = (
            spark.readStream.format("kafka")
            .option("kafka.bootstrap.servers", kafka.bootstrap)
            .option("subscribe", kafka.topics.transactions)
            .option("startingOffsets", "earliest")
            .option("maxOffsetsPerTrigger", str(self.settings.spark.max_offsets_per_trigger))
        )
        for key, value in kafka.client_config().items():
            if key != "bootstrap.servers":
                source = source.option(f"kafka.{key}", value)
        decoded = (
            source.load()
            .select("value", "partition", "offset", "timestamp")
            .mapInPandas(_decode, _DECODED)
        )
        bucket = F.when(
            F.col("reason").isNull(), F.abs(F.hash("card_id")) % STATE_BUCKETS
        ).otherwise(F.lit(-1))
        return (
            decoded.withColumn("_bucket", bucket)
            .groupBy("_bucket")
            .applyInPandasWithState(
                _card_step, _FEATURED, "cards binary", "append", GroupStateTimeout.NoTimeout
            )
        )

    def run(self, max_idle_s: float | None = None) -> EngineStats:
        """Run the query until ``stop`` is set (or nothing arrives for ``max_idle_s``),
        stopping between micro-batches."""
        spark = spark_session(self.settings, self.master)
        self._report()  # the query reads every partition of the topic
        running: StreamingQuery = (
            self.query(spark)
            .writeStream.foreachBatch(self._write)
            .option("checkpointLocation", str(self.checkpoint))
            .trigger(processingTime=f"{self.settings.spark.trigger_interval_s} seconds")
            .queryName(f"fraudstream-{self.settings.engine.group_id}")
            .start()
        )
        idle_since = time.monotonic()
        try:
            while not self.stop.is_set():
                if running.awaitTermination(1):
                    break
                progress = running.lastProgress
                if progress and progress.get("numInputRows", 0) > 0:
                    idle_since = time.monotonic()
                if max_idle_s is not None and time.monotonic() - idle_since > max_idle_s:
                    break
            self._stop_between_batches(running)
        finally:
            spark.stop()
            self.producer.flush(10)
            self.terminals.close()
            self.conn.close()
            self.sink.conn.close()
        return self.stats

    @staticmethod
    def _stop_between_batches(running: StreamingQuery) -> None:
        """Stopping a query mid-batch cancels its jobs noisily; wait for a quiet moment."""
        deadline = time.monotonic() + 120
        while (
            running.isActive
            and running.status.get("isTriggerActive")
            and (time.monotonic() < deadline)
        ):
            time.sleep(0.05)
        running.stop()
        error = running.exception()
        if error is not None:
            raise RuntimeError(f"the Spark query failed: {error}")

    def _write(self, batch: DataFrame, batch_id: int) -> None:
        """Driver side, once per micro-batch (again after a crash: the sink is idempotent)."""
        started = time.perf_counter()
        topic = self.settings.kafka.topics.transactions
        frame = cast(pd.DataFrame, batch.toPandas())
        if frame.empty:
            return
        rejected = frame[frame["reason"].notna()]
        valid = frame[frame["reason"].isna()].sort_values(
            ["_partition", "_offset"], kind="stable", ignore_index=True
        )
        if len(rejected):
            self._dead_letter(rejected)
        predictions = pd.DataFrame()
        if len(valid):
            valid["event_time"] = pd.to_datetime(valid["event_time"], utc=True)
            valid["_kafka_time"] = pd.to_datetime(valid["_kafka_time"], utc=True)
            computer = FeatureComputer(tables=lambda day: self.terminals.table(day, self.conn))
            features = computer.complete(valid, {n: valid[n].to_numpy() for n in CARD_FEATURES})
            predictions = predictions_frame(
                valid, features, self.scorer, self.rules, self.clock.now(), engine=self.name
            )
        stored = self.sink.write(
            predictions if len(predictions) else empty_predictions(),
            [],
            [
                (topic, int(partition), int(offset), str(reason))
                for partition, offset, reason, _raw in _sources(rejected)
            ],
        )
        if len(predictions):
            self.stats.alerts += publish_alerts(
                self.producer, self.settings.kafka.topics.alerts, predictions
            )
        self.stats.batches += 1
        self.stats.scored += len(predictions)
        self.stats.stored += stored.inserted
        self.stats.rejected += len(rejected)
        self.stats.batch_ms.append((time.perf_counter() - started) * 1000)
        self._maybe_switch_model()
        if time.monotonic() - self._reported >= self.settings.engine.status_interval_s:
            self._report()
        log.info(
            "batch %d: %d scored (%d new), %d rejected in %.0f ms",
            batch_id, len(predictions), stored.inserted, len(rejected),
            self.stats.batch_ms[-1],
        )  # fmt: skip

    def _dead_letter(self, rejected: pd.DataFrame) -> None:
        topic = self.settings.kafka.topics.transactions
        dead_letter(
            self.producer,
            self.settings.kafka.topics.dlq,
            (
                DeadLetter(None, bytes(raw) if raw is not None else b"", topic, int(partition),
                           int(offset), str(reason))
                for partition, offset, reason, raw in _sources(rejected)
            ),
        )  # fmt: skip

    def _report(self) -> None:
        self._reported = time.monotonic()
        self._reporter.report(
            self.conn, self.stats, model_version=self.scorer.version,
            partitions=list(range(self.settings.kafka.partitions)), lag=None,
        )  # fmt: skip

    def _maybe_switch_model(self) -> None:
        current = self.registry.current()
        if current and current != self.scorer.version:
            self.scorer = Scorer(self.registry.load(current))
            log.info("switched to model %s", current)


def _sources(rejected: pd.DataFrame) -> zip[tuple[Any, Any, Any, Any]]:
    """(partition, offset, reason, original bytes) of each rejected message."""
    columns = ("_partition", "_offset", "reason", "raw")
    return zip(*(rejected[name].tolist() for name in columns), strict=True)

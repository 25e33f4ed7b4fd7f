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

import contextlib
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd
import psycopg

from fraudstream.clock import Clock
from fraudstream.config import Settings
from fraudstream.engines.common import (
    DeadLetter,
    DeadLetterError,
    StatusReporter,
    TerminalRisk,
    dead_letter,
    decision_rules,
    empty_predictions,
    engine_id,
    engine_producer,
    first_line,
    observed,
    predictions_frame,
    publish_alerts,
)
from fraudstream.engines.local import EngineStats
from fraudstream.features import FEATURE_NAMES, FeatureComputer, TerminalTable
from fraudstream.model.registry import Registry
from fraudstream.model.scoring import Scorer
from fraudstream.policy import RuleSet
from fraudstream.schema import Invalid, Transaction, decode_transaction
from fraudstream.stack.spark import spark_session
from fraudstream.store.db import connect
from fraudstream.store.sink import PredictionSink

if TYPE_CHECKING:
    from pyspark.core.broadcast import Broadcast
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming.query import StreamingQuery
    from pyspark.sql.streaming.state import GroupState

__all__ = ["SparkEngine"]

log = logging.getLogger("fraudstream.engine")

STATE_BUCKETS = 16
"""Card-state groups. Part of the checkpoint's meaning: changing it needs a new checkpoint."""

CARD_FEATURES = [name for name in FEATURE_NAMES if name.startswith("card_")]
_FIELDS = list(Transaction.__struct_fields__)
_TEXT = {"tx_id", "card_id", "terminal_id", "currency", "merchant_category", "channel"}
_DECODED = (
    ", ".join(
        f"{name} {'string' if name in _TEXT else 'timestamp' if name == 'event_time' else 'double'}"
        for name in _FIELDS
    )
    + ", reason string, raw_key binary, raw binary, _partition int, _offset long, "
    + "_kafka_time timestamp"
)
_FEATURED = _DECODED + ", " + ", ".join(f"{name} double" for name in CARD_FEATURES)
_BACKOFF_S = (0.5, 10.0)
_BROADCAST_DAYS = 2
"""Terminal tables sent to the executors: the newest day's and the one before (late events)."""
_COMPLETED = [name for name in FEATURE_NAMES if name not in CARD_FEATURES and name != "amount"]
_SCORED = _FEATURED + ", " + ", ".join(f"{name} double" for name in [*_COMPLETED, "score"])


def card_bucket(card_ids: pd.Series) -> np.ndarray:
    """The state bucket of each card: CRC-32 of its UTF-8 id, as Spark's ``crc32`` computes
    it when routing a message (before decoding it)."""
    return np.fromiter(
        (zlib.crc32(card.encode()) % STATE_BUCKETS for card in card_ids), np.int64, len(card_ids)
    )


def _decoded(raw: pd.DataFrame, now: datetime) -> pd.DataFrame:
    """Each Kafka record through the canonical decoder; ``reason`` says why one is unusable."""
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
    frame["reason"] = pd.Series(reasons, dtype=object)
    frame["raw_key"] = raw["key"].to_numpy()
    frame["raw"] = raw["value"].to_numpy()
    frame["_partition"] = raw["partition"].to_numpy(dtype=np.int32)
    frame["_offset"] = raw["offset"].to_numpy(dtype=np.int64)
    frame["_kafka_time"] = raw["timestamp"].to_numpy()
    return frame


def _card_step(
    key: tuple[Any, ...], batches: Iterator[pd.DataFrame], state: GroupState
) -> Iterator[pd.DataFrame]:
    """Executor side: one bucket's messages of a micro-batch decoded, then through the shared
    card features with the bucket's card state carried in Spark's state store. Unusable
    messages pass through with their reason, key and bytes, for the dead-letter topic."""
    from fraudstream.features.card import CardState, card_features

    bucket = int(key[0])
    raw = pd.concat(list(batches), ignore_index=True)
    frame = _decoded(raw, now=datetime.now(timezone.utc))
    valid = frame["reason"].isna().to_numpy(copy=True)
    if valid.any():
        # Routing read card_id from the raw JSON; a message it read differently (duplicate
        # keys, say) would split a card's history, so it is refused rather than mis-scored.
        misrouted = np.zeros(len(frame), bool)
        misrouted[valid] = card_bucket(frame.loc[valid, "card_id"]) != bucket
        frame.loc[misrouted, "reason"] = "card_id is ambiguous: the message routes elsewhere"
        valid = valid & ~misrouted
    frame.loc[valid, ["raw_key", "raw"]] = None  # only dead letters need their bytes
    rows = frame[valid].sort_values(["_partition", "_offset"], kind="stable")
    features = pd.DataFrame(np.nan, index=frame.index, columns=CARD_FEATURES)
    if len(rows):
        cards = CardState.from_bytes(bytes(state.get[0])) if state.exists else CardState()
        computed = card_features(cards, rows.reset_index(drop=True))
        cards.expire_idle()  # the bucket is rewritten whole: keep it to the cards still needed
        state.update((cards.to_bytes(),))
        features.loc[rows.index] = np.column_stack([computed[name] for name in CARD_FEATURES])
    yield pd.concat([frame, features], axis=1)


def _scoring(
    scorer: Broadcast[Scorer], tables: Broadcast[dict[np.datetime64, TerminalTable]]
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """Executor side: the rest of each valid row's features and its model score, for rows
    of the days in ``tables`` (others are left for the driver)."""

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        model, known = scorer.value, tables.value
        computer = FeatureComputer(tables=known.__getitem__)
        for frame in batches:
            days = frame["event_time"].to_numpy(dtype="datetime64[us]").astype("datetime64[D]")
            ready = frame["reason"].isna().to_numpy() & np.isin(days, list(known))
            added = pd.DataFrame(np.nan, index=frame.index, columns=[*_COMPLETED, "score"])
            _complete_and_score(frame, ready, added, computer, model)
            yield pd.concat([frame, added], axis=1)

    return score


def _complete_and_score(
    frame: pd.DataFrame,
    rows: np.ndarray,
    out: pd.DataFrame,
    computer: FeatureComputer,
    scorer: Scorer,
) -> None:
    """The calendar and terminal features and the score of ``frame``'s selected ``rows``
    (card features already there), written into ``out`` (same index)."""
    if not rows.any():
        return
    chosen = frame[rows].copy()
    chosen["event_time"] = pd.to_datetime(chosen["event_time"], utc=True)
    features = computer.complete(chosen, {n: chosen[n].to_numpy() for n in CARD_FEATURES})
    out.loc[rows, _COMPLETED] = features[_COMPLETED].to_numpy()
    out.loc[rows, "score"] = scorer.score(features)


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
        self.sink = self._new_sink(connect(settings))
        self.terminals = TerminalRisk(settings, f"spark-{settings.engine.group_id}")
        self.producer = engine_producer(settings)
        self.stats = EngineStats()
        self._reporter = StatusReporter(
            engine_id=engine_id(settings), engine=self.name, group=settings.engine.group_id,
            started_at=clock.now(),
        )  # fmt: skip
        self._reported = 0.0
        self._spark: SparkSession | None = None
        self._lag: int | None = None
        self._failure: Exception | None = None
        self._broadcasts: dict[str, tuple[object, Broadcast[Any]]] = {}

    def _new_sink(self, conn: psycopg.Connection[Any]) -> PredictionSink:
        return PredictionSink(
            conn, consumer_group=f"spark:{self.settings.engine.group_id}",
            features_version=self.scorer.artifact.metadata["features_version"],
        )  # fmt: skip

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
        card_id = F.get_json_object(F.col("value").cast("string"), "$.card_id")
        bucket = F.coalesce(F.crc32(card_id.cast("binary")) % STATE_BUCKETS, F.lit(-1))
        return (
            source.load()
            .select("key", "value", "partition", "offset", "timestamp")
            .withColumn("_bucket", bucket)
            .groupBy("_bucket")
            .applyInPandasWithState(
                _card_step, _FEATURED, "cards binary", "append", GroupStateTimeout.NoTimeout
            )
        )

    def run(self, max_idle_s: float | None = None) -> EngineStats:
        """Run the query until ``stop`` is set (or nothing arrives for ``max_idle_s``),
        stopping between micro-batches. When PostgreSQL (or the dead-letter topic) fails a
        micro-batch, the query stops uncommitted; it restarts from its checkpoint once the
        database answers again."""
        from pyspark.errors import StreamingQueryException

        spark = self._spark = spark_session(self.settings, self.master)
        self._report()  # the query reads every partition of the topic
        try:
            while not self.stop.is_set():
                running = self._start(spark)
                try:
                    self._watch(running, max_idle_s)
                    self._stop_between_batches(running)
                    break
                except (StreamingQueryException, RuntimeError):
                    failure, self._failure = self._failure, None
                    if failure is None:
                        raise
                    log.warning("%s; recovering from the checkpoint", first_line(failure))
                    self._reconnect()
        finally:
            spark.stop()
            self.producer.flush(10)
            self.terminals.close()
            self.conn.close()
            self.sink.conn.close()
        return self.stats

    def _start(self, spark: SparkSession) -> StreamingQuery:
        return (
            self.query(spark)
            .writeStream.foreachBatch(self._write)
            .option("checkpointLocation", str(self.checkpoint))
            .trigger(processingTime=f"{self.settings.spark.trigger_interval_s} seconds")
            .queryName(f"fraudstream-{self.settings.engine.group_id}")
            .start()
        )

    def _watch(self, running: StreamingQuery, max_idle_s: float | None) -> None:
        """Log each micro-batch's timings and the lag until stop, idleness or failure."""
        idle_since = time.monotonic()
        last_batch = -1
        while not self.stop.is_set():
            if running.awaitTermination(1):
                return
            progress = running.lastProgress
            if progress and progress.get("numInputRows", 0) > 0:
                idle_since = time.monotonic()
            if progress and progress["batchId"] != last_batch:
                last_batch = progress["batchId"]
                self._lag = _lag(progress, self.settings.kafka.partitions)
                log.info("micro-batch %s", _timings(progress))
            if max_idle_s is not None and time.monotonic() - idle_since > max_idle_s:
                return

    def _reconnect(self) -> None:
        """New database connections, retried with backoff until the database answers."""
        delay = _BACKOFF_S[0]
        while not self.stop.is_set():
            try:
                conn, sink_conn = connect(self.settings), connect(self.settings)
            except psycopg.OperationalError as error:
                log.warning("still unavailable (%s); retrying in %.1f s", first_line(error), delay)
                self.stop.wait(delay)
                delay = min(delay * 2, _BACKOFF_S[1])
                continue
            for old in (self.conn, self.sink.conn):
                with contextlib.suppress(psycopg.Error):
                    old.close()
            self.conn, self.sink = conn, self._new_sink(sink_conn)
            return

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
        try:
            self._write_batch(batch, batch_id)
        except (psycopg.OperationalError, psycopg.InterfaceError, DeadLetterError) as error:
            self._failure = error  # transient: run() restarts the query once it can
            raise

    def _write_batch(self, batch: DataFrame, batch_id: int) -> None:
        """Driver side, once per micro-batch (again after a crash: the sink is idempotent):
        terminal tables for the batch's days, scoring on the executors, then policy, sink,
        dead letters and alerts here."""
        started = time.perf_counter()
        topic = self.settings.kafka.topics.transactions
        frame = self._scored(batch)
        if frame.empty:
            return
        collected = time.perf_counter()
        rejected = frame[frame["reason"].notna()]
        valid = frame[frame["reason"].isna()].sort_values(
            ["_partition", "_offset"], kind="stable", ignore_index=True
        )
        if len(rejected):
            self._dead_letter(rejected)
        predictions, seen = pd.DataFrame(), None
        if len(valid):
            valid["event_time"] = pd.to_datetime(valid["event_time"], utc=True)
            valid["_kafka_time"] = pd.to_datetime(valid["_kafka_time"], utc=True)
            features = valid[list(FEATURE_NAMES)]
            predictions = predictions_frame(
                valid, features, self.scorer, self.rules, self.clock.now(),
                engine=self.name, scores=valid["score"].to_numpy(dtype=float),
            )  # fmt: skip
            seen = observed(valid, features, self.scorer, self.name)
        stored = self.sink.write(
            predictions if len(predictions) else empty_predictions(),
            [],
            [
                (topic, int(partition), int(offset), str(reason))
                for partition, offset, reason, _key, _raw in _sources(rejected)
            ],
            seen,
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
            "batch %d: %d scored (%d new), %d rejected in %.0f ms (%.0f ms to score)",
            batch_id, len(predictions), stored.inserted, len(rejected),
            self.stats.batch_ms[-1], (collected - started) * 1000,
        )  # fmt: skip

    def _scored(self, batch: DataFrame) -> pd.DataFrame:
        """The micro-batch with full feature vectors and model scores.

        The executors score (a pandas UDF) the rows of days whose terminal table is already
        built; the first rows of a new day come back unscored and are scored here, where
        that day's table is built from what is stored before it, as the local engine does.
        """
        known = self.terminals.recent(_BROADCAST_DAYS)
        score = _scoring(self._broadcast("scorer", self.scorer.version, self.scorer),
                         self._broadcast("tables", tuple(known), known))  # fmt: skip
        frame = cast(pd.DataFrame, batch.mapInPandas(score, _SCORED).toPandas())
        late = (frame["reason"].isna() & frame["score"].isna()).to_numpy()
        computer = FeatureComputer(tables=lambda day: self.terminals.table(day, self.conn))
        _complete_and_score(frame, late, frame, computer, self.scorer)
        return frame

    def _broadcast(self, name: str, version: object, value: object) -> Broadcast[Any]:
        """A broadcast of ``value``, sent to executors again only when ``version`` changes."""
        held = self._broadcasts.get(name)
        if held is not None and held[0] == version:
            return held[1]
        if held is not None:
            held[1].unpersist()
        assert self._spark is not None
        broadcast = self._spark.sparkContext.broadcast(value)
        self._broadcasts[name] = (version, broadcast)
        return broadcast

    def _dead_letter(self, rejected: pd.DataFrame) -> None:
        topic = self.settings.kafka.topics.transactions
        dead_letter(
            self.producer,
            self.settings.kafka.topics.dlq,
            (
                DeadLetter(
                    None if key is None else bytes(key), b"" if raw is None else bytes(raw),
                    topic, int(partition), int(offset), str(reason),
                )
                for partition, offset, reason, key, raw in _sources(rejected)
            ),
        )  # fmt: skip

    def _report(self) -> None:
        self._reported = time.monotonic()
        self._reporter.report(
            self.conn, self.stats, model_version=self.scorer.version,
            partitions=list(range(self.settings.kafka.partitions)), lag=self._lag,
        )  # fmt: skip

    def _maybe_switch_model(self) -> None:
        current = self.registry.current()
        if current and current != self.scorer.version:
            self.scorer = Scorer(self.registry.load(current))
            log.info("switched to model %s", current)


def _lag(progress: dict[str, Any], partitions: int) -> int | None:
    """Messages behind the topic's end after the last micro-batch, from the Kafka source's
    metrics (it reports the mean over partitions)."""
    for source in progress.get("sources", []):
        behind = source.get("metrics", {}).get("avgOffsetsBehindLatest")
        if behind is not None:
            return round(float(behind) * partitions)
    return None


def _timings(progress: dict[str, Any]) -> str:
    """Where a micro-batch's time went, from Spark's query progress."""
    durations = progress.get("durationMs", {})
    parts = ", ".join(f"{name} {ms:,}" for name, ms in sorted(durations.items()) if ms)
    state = ", ".join(
        f"state {op.get('operatorName', '?')}: {op.get('numRowsTotal', 0):,} rows, "
        f"commit {op.get('commitTimeMs', 0):,} ms, {op.get('memoryUsedBytes', 0) / 1e6:,.0f} MB"
        for op in progress.get("stateOperators", [])
    )
    return f"{progress['batchId']}: {progress.get('numInputRows', 0):,} rows; {parts} ms; {state}"


def _sources(rejected: pd.DataFrame) -> zip[tuple[Any, Any, Any, Any, Any]]:
    """(partition, offset, reason, original key and bytes) of each rejected message."""
    columns = ("_partition", "_offset", "reason", "raw_key", "raw")
    return zip(*(rejected[name].tolist() for name in columns), strict=True)

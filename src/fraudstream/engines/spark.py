"""The Spark engine: the local engine's pipeline as one Structured Streaming query.

Kafka source (the official connector) → decode, validate and deduplicate each message, then
card features in ``applyInPandasWithState`` with the shared feature code and a card state per
hash bucket of the card id → ``foreachBatch`` on the driver: the same pure step as the local
engine (``engines/step.py``) with the card features computed on the executors, terminal
tables sealed by the same rule, the same sink contract (``engines/base.py``).

Card state is kept per hash bucket of the card id, a ``CardState`` of many cards, so the
feature code runs vectorised once per bucket and micro-batch (one Python call per card was
8× slower). Within a bucket, rows are ordered by partition and offset: a card's arrival order,
exactly as the local engine sees it. The bucket also remembers the tx_ids it has seen (for the
card-state TTL), so that a replayed or reused id never changes a card's state. Offsets and
state live in the query's checkpoint (RocksDB state store); a micro-batch replayed after a
crash produces the same rows, absorbed by the primary key.

A record whose day's terminal table cannot be sealed yet (another partition is behind) is
kept in ``deferred_rows`` with its card features and scored first in a later micro-batch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import msgspec
import numpy as np
import pandas as pd
import psycopg
from confluent_kafka import KafkaException

from fraudstream.bus.clients import engine_producer, first_line, offsets_client, transient
from fraudstream.bus.deadletter import DeadLetterError
from fraudstream.clock import Clock
from fraudstream.config import Settings
from fraudstream.engines.base import (
    EngineStats,
    ModelHolder,
    PolicyWatcher,
    StepOutput,
    StepWriter,
    engine_id,
)
from fraudstream.engines.scoring import empty_predictions, observed
from fraudstream.engines.step import (
    CARD_FEATURES,
    Decoded,
    PartitionState,
    StepResult,
    drive,
    duplicate_reason,
    earliest_day,
    late_after_seal,
)
from fraudstream.engines.terminals import LabelReader, TerminalTables
from fraudstream.features import TerminalTable
from fraudstream.features.definitions import CARD_STATE_TTL
from fraudstream.features.watermarks import NO_WATERMARK
from fraudstream.model.registry import Registry
from fraudstream.policy import RuleSet
from fraudstream.records import Rejected, StoredId
from fraudstream.schema import Invalid, Transaction, content_digest, decode_transaction
from fraudstream.stack.spark import spark_session
from fraudstream.store.db import engine_connect
from fraudstream.store.deferred import DeferredRow, load_deferred, replace_deferred
from fraudstream.store.outcomes import stored_progress
from fraudstream.store.sink import Checkpoint, PredictionSink, stored_ids
from fraudstream.store.status import StatusReporter
from fraudstream.telemetry import (
    ENGINE_BATCH_SECONDS,
    ENGINE_INFO,
    ENGINE_LATE,
    ENGINE_PARTITIONS,
    ENGINE_STATE_BYTES,
    show_lag,
    show_model,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming.query import StreamingQuery
    from pyspark.sql.streaming.state import GroupState

__all__ = ["SparkEngine"]

log = logging.getLogger("fraudstream.engine")

STATE_BUCKETS = 16
"""Card-state groups. Part of the checkpoint's meaning: changing it needs a new checkpoint."""

_FIELDS = list(Transaction.__struct_fields__)
_TEXT = {"tx_id", "card_id", "terminal_id", "currency", "merchant_category", "channel"}
_DECODED = (
    ", ".join(
        f"{name} {'string' if name in _TEXT else 'timestamp' if name == 'event_time' else 'double'}"
        for name in _FIELDS
    )
    + ", reason string, raw_key binary, raw binary, _partition int, _offset long, "
    + "_kafka_time timestamp, content_hash long"
)
_FEATURED = _DECODED + ", " + ", ".join(f"{name} double" for name in CARD_FEATURES)
_STATE = "cards binary, seen binary"
_BACKOFF_S = (0.5, 10.0)
_TTL_US = int(CARD_STATE_TTL.total_seconds() * 1_000_000)
_DECODE_ANY_TIME = datetime.max.replace(tzinfo=timezone.utc) - timedelta(days=2)
"""The driver decodes again what the executors validated: their time check is not repeated."""
_seen_codec = msgspec.msgpack.Decoder(dict[str, tuple[int, int, int, int]])
_seen_encoder = msgspec.msgpack.Encoder()


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
    digests: list[int] = []
    for value in raw["value"]:
        record = decode_transaction(bytes(value) if value is not None else b"", now=now)
        if isinstance(record, Invalid):
            reasons.append(record.reason)
            digests.append(0)
            for name in _FIELDS:
                columns[name].append(None)
        else:
            reasons.append(None)
            digests.append(content_digest(record))
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
    frame["content_hash"] = np.array(digests, dtype=np.int64)
    return frame


def _card_step(
    key: tuple[Any, ...], batches: Iterator[pd.DataFrame], state: GroupState
) -> Iterator[pd.DataFrame]:
    """Executor side: one bucket's messages of a micro-batch decoded, duplicates refused, then
    the shared card features with the bucket's card state carried in Spark's state store.
    Unusable messages pass through with their reason, for the dead-letter topic."""
    from fraudstream.features.card import card_features

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
    order = frame[valid].sort_values(["_partition", "_offset"], kind="stable").index
    features = pd.DataFrame(np.nan, index=frame.index, columns=CARD_FEATURES)
    if len(order):
        cards, seen = _load_state(state)
        fresh = _refuse_duplicates(frame, order, seen)
        if len(fresh):
            rows = frame.loc[fresh]
            computed = card_features(cards, rows.reset_index(drop=True))
            features.loc[fresh] = np.column_stack([computed[name] for name in CARD_FEATURES])
        cards.expire_idle()  # the bucket is rewritten whole: keep it to the cards still needed
        newest = max((v[3] for v in seen.values()), default=0)
        seen = {tx: v for tx, v in seen.items() if v[3] >= newest - _TTL_US}
        state.update((cards.to_bytes(), _seen_encoder.encode(seen)))
    yield pd.concat([frame, features], axis=1)


def _load_state(state: GroupState) -> tuple[Any, dict[str, tuple[int, int, int, int]]]:
    from fraudstream.features.card import CardState

    if not state.exists:
        return CardState(), {}
    cards, seen = state.get
    return CardState.from_bytes(bytes(cards)), _seen_codec.decode(bytes(seen))


def _refuse_duplicates(
    frame: pd.DataFrame, order: pd.Index, seen: dict[str, tuple[int, int, int, int]]
) -> list[int]:
    """Rows of ``order`` whose tx_id this bucket has not seen from another message (the
    others get their reason); ``seen`` learns the new ones (digest, partition, offset, µs)."""
    # Columns read once as lists: ``frame.at`` costs microseconds a cell, on every row.
    rows = order.to_numpy()
    tx_ids = frame["tx_id"].to_numpy()[rows].tolist()
    digests = frame["content_hash"].to_numpy()[rows].tolist()
    partitions = frame["_partition"].to_numpy()[rows].tolist()
    offsets = frame["_offset"].to_numpy()[rows].tolist()
    event_us = frame["event_time"].to_numpy(dtype="datetime64[us]").astype(np.int64)[rows].tolist()
    fresh: list[int] = []
    refused: dict[int, str] = {}
    for row, tx_id, digest, partition, offset, micros in zip(
        rows.tolist(), tx_ids, digests, partitions, offsets, event_us, strict=True
    ):
        before = seen.get(tx_id)
        reason = duplicate_reason(
            tx_id, digest, partition, offset,
            None if before is None else StoredId(before[0], before[1], before[2]),
        )  # fmt: skip
        if reason is not None:
            refused[row] = reason
            continue
        seen.setdefault(tx_id, (digest, partition, offset, micros))
        fresh.append(row)
    if refused:
        frame.loc[list(refused), "reason"] = list(refused.values())
    return fresh


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
        self.topic = settings.kafka.topics.transactions
        self.group = f"spark:{settings.engine.group_id}"
        self.lateness = timedelta(seconds=settings.engine.allowed_lateness_s)
        self.models = ModelHolder(Registry(settings.models_dir))
        self.conn = engine_connect(settings)
        self.policy = PolicyWatcher(settings, clock)
        self.policy.refresh(self.conn)
        self.rules: RuleSet = self.policy.rules
        self.sink = self._new_sink(engine_connect(settings))
        self.producer = engine_producer(settings.kafka)
        self.stats = EngineStats()
        ENGINE_INFO.labels(self.name).set(1)
        self.writer = StepWriter(settings, self.producer, self.stats)
        self.labels = LabelReader(settings, f"spark-{settings.engine.group_id}", self.producer)
        self.offsets = offsets_client(settings.kafka, self.group)
        self.tables = TerminalTables(
            self.labels, lateness=self.lateness, built_by=engine_id(settings),
            group=self.group, topic=self.topic, log_ends=self.offsets,
            connect=partial(engine_connect, settings),
        )  # fmt: skip
        self.partitions: dict[int, PartitionState] = {}  # watermarks (cards live in Spark)
        self.precomputed: dict[tuple[int, int], np.ndarray] = {}
        self._pending: list[Decoded] = []  # the micro-batch's records being driven
        self._deferred: list[Decoded] = []
        self._driving = threading.Lock()  # micro-batches, and deferred records between them
        self._reporter = StatusReporter(
            engine_id=engine_id(settings), engine=self.name, group=settings.engine.group_id,
            started_at=clock.now(),
        )  # fmt: skip
        self._reported = 0.0
        self._spark: SparkSession | None = None
        self._lag: int | None = None
        self._failure: Exception | None = None

    @property
    def scorer(self):  # type: ignore[no-untyped-def]
        return self.models.scorer

    def _new_sink(self, conn: psycopg.Connection[Any]) -> PredictionSink:
        return PredictionSink(
            conn, consumer_group=self.group,
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
                _card_step, _FEATURED, _STATE, "append", GroupStateTimeout.NoTimeout
            )
        )

    def run(self, max_idle_s: float | None = None) -> EngineStats:
        """Run the query until ``stop`` is set (or nothing arrives for ``max_idle_s``),
        stopping between micro-batches. When PostgreSQL (or the dead-letter topic) fails a
        micro-batch, the query stops uncommitted; it restarts from its checkpoint once the
        database answers again. The same when Kafka is out of reach, once the broker
        answers."""
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
                except (StreamingQueryException, RuntimeError) as error:
                    failure, self._failure = self._failure, None
                    if failure is None and not self._kafka_outage(error):
                        raise  # not an outage: a fault to see, not to retry
                    log.warning("%s; recovering from the checkpoint", first_line(failure or error))
                    self._await_broker()
                    self._reconnect()
        finally:
            spark.stop()
            self.producer.flush(10)
            self.labels.close()
            self.offsets.close()
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
        """Log each micro-batch's timings and the lag until stop, idleness or failure. Not
        idle while records wait for a terminal table."""
        idle_since = time.monotonic()
        last_batch = -1
        while not self.stop.is_set():
            if running.awaitTermination(1):
                return
            progress = running.lastProgress
            # Idle means no input since the first micro-batch, not a slow start (a cluster's
            # executors can take longer to come up than any idle bound).
            if not progress or progress.get("numInputRows", 0) > 0 or self._deferred:
                idle_since = time.monotonic()
            if self._deferred and not running.status.get("isTriggerActive"):
                # Spark runs no micro-batch without new input: records waiting for a table
                # would wait for the next transaction. Try them between micro-batches.
                self._retry_deferred()
            if progress and progress["batchId"] != last_batch:
                last_batch = progress["batchId"]
                self._lag = self._show_progress(progress)
                log.info("micro-batch %s", _timings(progress))
            if max_idle_s is not None and time.monotonic() - idle_since > max_idle_s:
                return

    def _kafka_outage(self, error: Exception) -> bool:
        """Whether the query failed because Kafka is (or just was) out of reach: an error of
        Spark's Kafka source, or a broker that does not answer now."""
        return "org.apache.kafka" in str(error) or not self._broker_answers()

    def _broker_answers(self) -> bool:
        try:
            metadata = self.offsets.list_topics(self.topic, timeout=5)
        except KafkaException:
            return False
        topic = metadata.topics.get(self.topic)
        return topic is not None and topic.error is None and bool(topic.partitions)

    def _await_broker(self) -> None:
        """Back off until the broker answers: a query restarted while it is down fails at
        once (Spark's Kafka source gives up after a few quick retries)."""
        delay = _BACKOFF_S[0]
        while not self.stop.is_set() and not self._broker_answers():
            log.warning("the broker does not answer; retrying in %.1f s", delay)
            self.stop.wait(delay)
            delay = min(delay * 2, _BACKOFF_S[1])

    def _reconnect(self) -> None:
        """New database connections, retried with backoff until the database answers."""
        delay = _BACKOFF_S[0]
        while not self.stop.is_set():
            try:
                conn, sink_conn = engine_connect(self.settings), engine_connect(self.settings)
            except psycopg.OperationalError as error:
                log.warning("still unavailable (%s); retrying in %.1f s", first_line(error), delay)
                self.stop.wait(delay)
                delay = min(delay * 2, _BACKOFF_S[1])
                continue
            for old in (self.conn, self.sink.conn):
                with contextlib.suppress(psycopg.Error):
                    old.close()
            self.conn, self.sink = conn, self._new_sink(sink_conn)
            self.partitions = {}  # watermarks again from what PostgreSQL recorded
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
        except KafkaException as error:  # the driver's own calls (tables, labels) in an outage
            if transient(error):
                self._failure = error
            raise

    def _write_batch(self, batch: DataFrame, batch_id: int) -> None:
        """Driver side, once per micro-batch (again after a crash: the sink is idempotent):
        the records deferred earlier, then this micro-batch's, through the shared step."""
        frame = cast(pd.DataFrame, batch.toPandas())
        with self._driving:
            self._process(frame, f"batch {batch_id}")

    def _retry_deferred(self) -> None:
        try:
            with self._driving:
                self._process(None, "deferred records")
        except (psycopg.OperationalError, psycopg.InterfaceError, DeadLetterError) as error:
            log.warning("deferred records wait: %s", first_line(error))
        except KafkaException as error:
            if not transient(error):
                raise
            log.warning("deferred records wait: %s", first_line(error))

    def _process(self, frame: pd.DataFrame | None, what: str) -> None:
        started = time.perf_counter()
        rejected_before = self.stats.rejected
        if frame is None:
            frame = pd.DataFrame({"reason": pd.Series([], dtype=object)})
        refused = frame[frame["reason"].notna()]
        if len(refused):
            letters = self.writer.dead_letter(
                [
                    Rejected(
                        self.topic, int(p), int(o), str(reason),
                        None if key is None else bytes(key), b"" if raw is None else bytes(raw),
                    )
                    for p, o, reason, key, raw in zip(
                        refused["_partition"], refused["_offset"], refused["reason"],
                        refused["raw_key"], refused["raw"], strict=True,
                    )
                ]
            )  # fmt: skip
            self.sink.write(empty_predictions(), [], letters)
            self.stats.rejected += len(letters)
            self.stats.replays += int(refused["reason"].str.startswith("replay").sum())
            self.stats.conflicts += int(refused["reason"].str.startswith("duplicate tx_id").sum())
        items = self._items(frame[frame["reason"].isna()]) if len(frame) else self._items(None)
        self._pending, self._deferred = items, []
        self._load_watermarks({item.partition for item in items})
        drive(items, self)
        replace_deferred(
            self.conn, self.group, self.topic,
            [
                DeferredRow(
                    item.partition, item.offset, item.key, item.value, item.kafka_time_ms,
                    self.precomputed[(item.partition, item.offset)],
                )
                for item in self._deferred
            ],
        )  # fmt: skip
        self.precomputed = {
            (i.partition, i.offset): self.precomputed[(i.partition, i.offset)]
            for i in self._deferred
        }
        seconds = time.perf_counter() - started
        self.stats.batch_ms.append(seconds * 1000)
        ENGINE_BATCH_SECONDS.observe(seconds)
        self.models.refresh()
        if self.policy.refresh(self.conn):  # once per micro-batch: the next one decides by it
            self.rules = self.policy.rules
        if frame.empty and len(self._deferred) == len(items):
            return  # a retry that changed nothing
        if time.monotonic() - self._reported >= self.settings.engine.status_interval_s:
            self._report()
        log.info(
            "%s: %d records, %d rejected, %d deferred in %.0f ms",
            what, len(frame), self.stats.rejected - rejected_before, len(self._deferred),
            self.stats.batch_ms[-1],
        )  # fmt: skip

    def _items(self, valid: pd.DataFrame | None) -> list[Decoded]:
        """The records deferred earlier and this micro-batch's valid ones, once each, in log
        order per partition, with their card features from the executors."""
        by_position: dict[tuple[int, int], Decoded] = {}
        for row in load_deferred(self.conn, self.group, self.topic):
            position = (row.partition, row.offset)
            self.precomputed[position] = row.card_features
            by_position[position] = self._decoded(
                row.partition, row.offset, row.key, row.value, row.kafka_time_ms
            )
        if valid is None:
            return [by_position[position] for position in sorted(by_position)]
        cards = valid[CARD_FEATURES].to_numpy(dtype=float)
        appended = valid["_kafka_time"].to_numpy(dtype="datetime64[ms]")
        appended_ms = [
            None if missing else int(ms)
            for missing, ms in zip(
                np.isnat(appended).tolist(), appended.astype(np.int64).tolist(), strict=True
            )
        ]
        for i, (p, o, key, raw, millis, digest) in enumerate(
            zip(
                valid["_partition"].tolist(), valid["_offset"].tolist(), valid["raw_key"],
                valid["raw"], appended_ms, valid["content_hash"].tolist(), strict=True,
            )
        ):  # fmt: skip
            position = (int(p), int(o))
            self.precomputed[position] = cards[i]
            by_position.setdefault(
                position,
                self._decoded(position[0], position[1], None if key is None else bytes(key),
                              bytes(raw), millis, digest),
            )  # fmt: skip
        return [by_position[position] for position in sorted(by_position)]

    def _decoded(
        self, partition: int, offset: int, key: bytes | None, value: bytes, millis: int | None,
        digest: int | None = None,
    ) -> Decoded:  # fmt: skip
        """The record decoded again (the executors validated it); ``digest``: theirs."""
        record = decode_transaction(value, now=_DECODE_ANY_TIME)
        assert not isinstance(record, Invalid), record
        return Decoded(self.topic, partition, offset, key, value, millis, record, digest=digest)

    def _load_watermarks(self, partitions: set[int]) -> None:
        """Each partition's watermark, from PostgreSQL the first time the driver sees it."""
        missing = partitions - set(self.partitions)
        if missing:
            stored = stored_progress(self.conn, self.group, self.topic)
            for partition in missing:
                _offset, watermark = stored.get(partition, (0, int(NO_WATERMARK)))
                self.partitions[partition] = PartitionState(watermark=watermark)

    # --- what the pure step needs (engines/step.py: StepHost) ------------------------------

    def now(self) -> datetime:
        return self.clock.now()

    def tables_for(self, days: set[np.datetime64]) -> dict[np.datetime64, TerminalTable]:
        return self.tables.available(self.conn, days)

    def stored_ids(self, tx_ids: list[str]) -> Mapping[str, StoredId]:
        return stored_ids(self.conn, tx_ids)

    def seal_for(self, waiting: dict[int, Decoded]) -> bool:
        return self.tables.seal_for(self.conn, waiting)

    def hold(self, waiting: dict[int, Decoded]) -> None:
        """Keep the waiting records (and their partitions' later ones) for a later
        micro-batch; Spark's checkpoint moves on, ``deferred_rows`` remembers them."""
        self._deferred += [
            item for item in self._pending
            if item.partition in waiting and item.offset >= waiting[item.partition].offset
        ]  # fmt: skip
        log.info(
            "partitions %s wait for the terminal table of %s", sorted(waiting),
            earliest_day(waiting),
        )  # fmt: skip

    def commit(self, items: list[Decoded], result: StepResult) -> None:
        late = late_after_seal(result.predictions, self.tables.newest_sealed(self.conn))
        self.stats.late += late
        rejected = self.writer.dead_letter(result.rejected)
        seen = None
        if len(result.predictions):
            seen = observed(
                result.batch, result.features, self.scorer, self.name,
                self.models.challenger, self.rules, shadow_rules=self.policy.shadow,
                scores=result.predictions["score"].to_numpy(),
            )  # fmt: skip
        next_offsets: dict[int, int] = {}
        for item in items:
            next_offsets[item.partition] = max(next_offsets.get(item.partition, 0), item.offset + 1)
        checkpoints = [
            Checkpoint(self.topic, p, o, self.partitions[p].watermark)
            for p, o in sorted(next_offsets.items())
        ]
        stored = self.writer.write(
            self.sink,
            StepOutput(
                result.predictions, checkpoints, rejected, observed=seen,
                redelivered=result.redelivered,
                sources={i.record.tx_id: i for i in items if isinstance(i.record, Transaction)},
            ),
        )  # fmt: skip
        self.stats.batches += 1
        self.stats.scored += len(result.predictions)
        self.stats.stored += stored.inserted
        self.stats.rejected += len(result.rejected)
        self.stats.late += result.late
        ENGINE_LATE.inc(late + result.late)
        self.stats.replays += result.replays
        self.stats.conflicts += result.conflicts

    def _show_progress(self, progress: dict[str, Any]) -> int | None:
        """Export a finished micro-batch's lag per partition and card-state size (the cards
        themselves live in Spark's state store, a bucket of cards per row: their number is
        not exported); returns the whole lag. Metrics only, no database: this runs beside
        the micro-batches, whose thread has the connections."""
        lag = partition_lag(progress, self.topic)
        if lag is not None:
            show_lag(lag)
        state_bytes = _state_bytes(progress)
        if state_bytes is not None:
            ENGINE_STATE_BYTES.set(state_bytes)
        return _lag(progress, self.settings.kafka.partitions) if lag is None else sum(lag.values())

    def _report(self) -> None:
        """The status row and log line, and the slow metrics."""
        self._reported = time.monotonic()
        self._reporter.report(
            self.conn, self.stats, model_version=self.scorer.version,
            partitions=list(range(self.settings.kafka.partitions)), lag=self._lag,
        )  # fmt: skip
        ENGINE_PARTITIONS.set(self.settings.kafka.partitions)
        challenger = self.models.challenger
        show_model(self.scorer.version, challenger.version if challenger else None)


def _lag(progress: dict[str, Any], partitions: int) -> int | None:
    """Messages behind the topic's end after the last micro-batch, from the Kafka source's
    metrics (it reports the mean over partitions)."""
    for source in progress.get("sources", []):
        behind = source.get("metrics", {}).get("avgOffsetsBehindLatest")
        if behind is not None:
            return round(float(behind) * partitions)
    return None


def partition_lag(progress: dict[str, Any], topic: str) -> dict[int, int] | None:
    """Messages behind the log end per partition of ``topic`` after the last micro-batch:
    the Kafka source's latest offsets minus those the batch read to (None when the progress
    does not say, as before a first batch)."""
    for source in progress.get("sources", []):
        latest = _offsets(source.get("latestOffset"), topic)
        end = _offsets(source.get("endOffset"), topic)
        if latest is not None and end is not None:
            return {p: max(latest[p] - end.get(p, latest[p]), 0) for p in sorted(latest)}
    return None


def _offsets(value: object, topic: str) -> dict[int, int] | None:
    """A Kafka source's offsets (``{topic: {partition: offset}}``, or that as JSON text) for
    ``topic``."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    per_partition = value.get(topic) if isinstance(value, dict) else None
    if not isinstance(per_partition, dict):
        return None
    return {int(partition): int(offset) for partition, offset in per_partition.items()}


def _state_bytes(progress: dict[str, Any]) -> int | None:
    """The memory the stateful operators' stores use, from the last micro-batch's progress."""
    operators = progress.get("stateOperators") or []
    if not operators:
        return None
    return sum(int(op.get("memoryUsedBytes", 0)) for op in operators)


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

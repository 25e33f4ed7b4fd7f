"""What every engine shares: terminal-risk tables fed by the labels topic, the prediction rows
(score, decision, reasons), and patience with Kafka's transient errors."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import psycopg
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from fraudstream.config import Settings
from fraudstream.features import TerminalTable
from fraudstream.model.scoring import Scorer
from fraudstream.policy import RuleSet, decide, default_rules, load_rules
from fraudstream.schema import Invalid, decode_label
from fraudstream.store.outcomes import load_terminal_activity, store_labels
from fraudstream.store.sink import COLUMNS, Observed

__all__ = [
    "DeadLetter", "DeadLetterError", "StatusReporter", "TerminalRisk", "dead_letter",
    "decision_rules", "empty_predictions", "engine_id", "engine_producer", "first_line",
    "message_offset", "message_partition", "observed", "predictions_frame", "publish_alerts",
    "retry", "transient",
]  # fmt: skip

log = logging.getLogger("fraudstream.engine")

_TABLE_DAYS_KEPT = 16  # terminal tables cached (partitions may stand on different days)
_TRANSIENT = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT,
}


class TerminalRisk:
    """Terminal tables per UTC day, built from PostgreSQL after reading the labels topic to
    its end (labels are stored idempotently, so every engine may read them all)."""

    def __init__(self, settings: Settings, group_id: str) -> None:
        self.settings = settings
        self.consumer = Consumer(
            {
                **settings.kafka.client_config(),
                "group.id": f"{group_id}-labels",
                "enable.auto.commit": True,
                "enable.auto.offset.store": True,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 10,  # offset queries queue behind a waiting fetch
                "log_level": 3,
            }
        )
        self.tables: dict[np.datetime64, TerminalTable] = {}
        self._next: dict[int, int] = {}
        self._assigned = False

    def table(
        self,
        day: np.datetime64,
        conn: psycopg.Connection[Any],
        before_building: Callable[[], None] = lambda: None,
    ) -> TerminalTable:
        """The table of ``day``, built once from everything stored before it."""
        if day not in self.tables:
            before_building()
            self.drain(conn)
            activity = load_terminal_activity(conn, day)
            conn.commit()
            self.tables[day] = activity.table(day)
            for old in sorted(self.tables)[:-_TABLE_DAYS_KEPT]:
                del self.tables[old]
        return self.tables[day]

    def recent(self, days: int) -> dict[np.datetime64, TerminalTable]:
        """The tables of the newest ``days`` days built so far."""
        return {day: self.tables[day] for day in sorted(self.tables)[-days:]}

    def assign(self) -> None:
        """Start from where this group committed (earliest when it never did)."""
        topic = self.settings.kafka.topics.labels
        metadata = retry(lambda: self.consumer.list_topics(topic, timeout=10), "labels")
        partitions = [TopicPartition(topic, p) for p in metadata.topics[topic].partitions]
        committed = retry(lambda: self.consumer.committed(partitions, timeout=10), "label offsets")
        for partition in committed:
            if partition.offset < 0:
                low, _high = retry(
                    lambda p=partition: self.consumer.get_watermark_offsets(p, timeout=10),
                    "label offsets",
                )
                partition.offset = low
            self._next[partition.partition] = partition.offset
        self.consumer.assign(committed)
        self._assigned = True

    def drain(self, conn: psycopg.Connection[Any]) -> None:
        """Read the labels topic up to its current end, so a day's table has every label
        produced before the day's first transaction (the simulator and replay send labels in
        time order with the transactions)."""
        if not self._assigned:
            self.assign()
        ends = {}
        for partition in self.consumer.assignment():
            _low, high = retry(
                lambda p=partition: self.consumer.get_watermark_offsets(p, timeout=10),
                "label offsets",
            )
            ends[partition.partition] = high
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(self._next.get(p, 0) >= end for p, end in ends.items()):
                return
            labels = []
            for message in self.consumer.consume(10_000, 0.2):
                if message.error():
                    continue
                self._next[message_partition(message)] = message_offset(message) + 1
                label = decode_label(message.value() or b"")
                if isinstance(label, Invalid):
                    log.warning(
                        "invalid label at %s/%s: %s",
                        message.partition(), message.offset(), label.reason,
                    )  # fmt: skip
                else:
                    labels.append(label)
            if labels:
                with conn.transaction():
                    store_labels(conn, labels)
        log.warning("labels topic not drained within 60 s; building the terminal table anyway")

    def close(self) -> None:
        self.consumer.close()


class StatusReporter:
    """An engine's ``engine_status`` row and log line: throughput since the last report, lag,
    batch times, dead letters, model version, heartbeat."""

    def __init__(self, *, engine_id: str, engine: str, group: str, started_at: datetime) -> None:
        self.engine_id, self.engine, self.group = engine_id, engine, group
        self.started_at = started_at
        self._at, self._scored = time.monotonic(), 0

    def report(
        self,
        conn: psycopg.Connection[Any],
        stats: Any,
        *,
        model_version: str,
        partitions: list[int],
        lag: int | None,
    ) -> None:
        now = time.monotonic()
        elapsed = now - self._at
        throughput = (stats.scored - self._scored) / elapsed if elapsed > 0 else 0.0
        self._at, self._scored = now, stats.scored
        p50, p99 = (
            (float(np.percentile(stats.batch_ms, q)) for q in (50, 99))
            if stats.batch_ms
            else (None, None)
        )
        with conn.transaction():
            conn.execute(
                "INSERT INTO engine_status (engine_id, engine, consumer_group, model_version, "
                "partitions, throughput_tps, lag, batch_ms_p50, batch_ms_p99, dlq_total, "
                "started_at, heartbeat_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now()) "
                "ON CONFLICT (engine_id) DO UPDATE SET model_version = excluded.model_version, "
                "partitions = excluded.partitions, throughput_tps = excluded.throughput_tps, "
                "lag = excluded.lag, batch_ms_p50 = excluded.batch_ms_p50, "
                "batch_ms_p99 = excluded.batch_ms_p99, dlq_total = excluded.dlq_total, "
                "heartbeat_at = now()",
                (
                    self.engine_id, self.engine, self.group, model_version, partitions,
                    throughput, lag, p50, p99, stats.rejected, self.started_at,
                ),
            )  # fmt: skip
        log.info(
            "%.0f tx/s, lag %s, batch p50 %s ms; scored %d, stored %d, rejected %d, alerts %d",
            throughput, "?" if lag is None else lag, "-" if p50 is None else f"{p50:.1f}",
            stats.scored, stats.stored, stats.rejected, stats.alerts,
        )  # fmt: skip


@dataclass(frozen=True)
class DeadLetter:
    """An unusable message: its original key and bytes, where it came from, and why."""

    key: bytes | None
    value: bytes
    topic: str
    partition: int
    offset: int
    reason: str


class DeadLetterError(Exception):
    """Dead letters were not acknowledged: the batch must not commit (it is scored again)."""


def engine_producer(settings: Settings) -> Producer:
    """The producer engines send dead letters and alerts with: idempotent, ``acks=all``, and
    no delivery timeout, so messages wait out a broker restart."""
    return Producer(
        {
            **settings.kafka.client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "message.timeout.ms": 0,
            "log_level": 3,
        }
    )


def dead_letter(producer: Producer, topic: str, letters: Iterable[DeadLetter]) -> None:
    """Keep every unusable message on the dead-letter topic with the reason and source as
    headers, acknowledged before the caller commits (so none is lost if the engine dies)."""
    failures: list[KafkaError] = []

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            failures.append(error)

    for letter in letters:
        producer.produce(
            topic,
            key=letter.key,
            value=letter.value,
            headers={
                "reason": letter.reason.encode()[:1000],
                "source.topic": letter.topic.encode(),
                "source.partition": str(letter.partition).encode(),
                "source.offset": str(letter.offset).encode(),
            },
            on_delivery=delivered,
        )
    if producer.flush(30) or failures:
        raise DeadLetterError(
            f"dead-letter messages not acknowledged by Kafka: {failures[:1] or 'timed out'}"
        )


def decision_rules(settings: Settings) -> RuleSet:
    """The operator's rules file when one is set, else the built-in rules."""
    return load_rules(settings.policy.rules_file) if settings.policy.rules_file else default_rules()


def engine_id(settings: Settings) -> str:
    """This process's name in ``engine_status``: configured, else host and pid."""
    return settings.engine.engine_id or f"{socket.gethostname()}-{os.getpid()}"


def empty_predictions() -> pd.DataFrame:
    """A batch with nothing valid still commits its offsets and dead letters."""
    return pd.DataFrame({name: [] for name in COLUMNS})


def predictions_frame(
    batch: pd.DataFrame,
    features: pd.DataFrame,
    scorer: Scorer,
    rules: RuleSet,
    scored_at: datetime,
    *,
    engine: str,
    scores: np.ndarray | None = None,
) -> pd.DataFrame:
    """Score, decide and explain a batch: the rows the sink stores (``sink.COLUMNS``).

    ``batch`` has the canonical columns plus ``_partition``, ``_offset``, ``_kafka_time``;
    ``scores`` are ``scorer``'s, when already computed elsewhere (Spark's executors)."""
    if scores is None:
        scores = scorer.score(features)
    decisions = decide(
        scores, features, batch["terminal_id"].to_numpy(), batch["card_id"].to_numpy(),
        scorer.thresholds, rules,
    )  # fmt: skip
    reasons: list[list[dict[str, object]]] = [[] for _ in range(len(batch))]
    flagged = np.flatnonzero(decisions.decision != "approve")
    if len(flagged):
        for row, row_reasons in zip(flagged, scorer.explain(features.iloc[flagged]), strict=True):
            reasons[row] = [reason.as_dict() for reason in row_reasons]
    return pd.DataFrame(
        {
            "tx_id": batch["tx_id"],
            "event_time": batch["event_time"],
            "card_id": batch["card_id"],
            "terminal_id": batch["terminal_id"],
            "amount": batch["amount"].round(2),
            "score": scores,
            "decision": decisions.decision,
            "rule_hits": decisions.rule_hits,
            "reasons": reasons,
            "model_version": scorer.version,
            "engine": engine,
            "kafka_partition": batch["_partition"],
            "kafka_offset": batch["_offset"],
            "kafka_time": batch["_kafka_time"],
            "scored_at": scored_at,
        }
    )


def observed(batch: pd.DataFrame, features: pd.DataFrame, scorer: Scorer, engine: str) -> Observed:
    """What the sink keeps for the dashboard besides predictions: the batch's terminals with
    their coordinates, and its feature values counted into the model's training bins."""
    terminals = (
        batch[["terminal_id", "terminal_x", "terminal_y", "terminal_lat", "terminal_lon"]]
        .drop_duplicates("terminal_id")
        .set_axis(["terminal_id", "x", "y", "lat", "lon"], axis=1)
    )
    profile = scorer.profile
    return Observed(
        terminals=terminals,
        engine=engine,
        model_version=scorer.version,
        profile=None if profile is None else profile.as_dict(),
        feature_counts=None if profile is None else profile.counts(features),
    )


def publish_alerts(producer: Producer, topic: str, predictions: pd.DataFrame) -> int:
    """Review and decline rows to the alerts topic, keyed by card (at-least-once: consumers
    dedupe by ``tx_id``); returns how many."""
    flagged = predictions[predictions["decision"] != "approve"]
    for row in flagged.itertuples(index=False):
        payload = {
            "tx_id": row.tx_id,
            "card_id": row.card_id,
            "terminal_id": row.terminal_id,
            "amount": float(row.amount),
            "score": round(float(row.score), 6),
            "decision": row.decision,
            "rule_hits": row.rule_hits,
            "reasons": row.reasons,
            "model_version": row.model_version,
            "event_time": row.event_time.isoformat(),
        }
        producer.produce(topic, key=row.card_id, value=json.dumps(payload).encode())
    producer.poll(0)
    return len(flagged)


def retry(call: Any, what: str, attempts: int = 10) -> Any:
    """Retry a Kafka call through transient errors (coordinator moving, broker restarting)."""
    delay = 0.2
    for attempt in range(attempts):
        try:
            return call()
        except KafkaException as error:
            if attempt == attempts - 1 or not transient(error):
                raise
            log.warning("%s: %s; retrying in %.1f s", what, error, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


def transient(error: KafkaException) -> bool:
    kafka_error = error.args[0]
    return bool(kafka_error.retriable() or kafka_error.code() in _TRANSIENT)


def message_partition(message: Message) -> int:
    return int(message.partition() or 0)


def message_offset(message: Message) -> int:
    return int(message.offset() or 0)


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]

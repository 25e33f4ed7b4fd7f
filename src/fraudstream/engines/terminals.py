"""Terminal tables for the engines: labels read into PostgreSQL, each day's table sealed once
when the input logs allow it, and cached (docs/adr/0004-deterministic-terminal-tables.md)."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import timedelta
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition

from fraudstream.bus.clients import (
    FETCH_WAIT_MS,
    message_offset,
    message_partition,
    offsets_client,
    retry,
)
from fraudstream.bus.deadletter import dead_letter
from fraudstream.config import Settings
from fraudstream.engines.step import Decoded, earliest_day
from fraudstream.features import FEATURES_VERSION, TerminalActivity, TerminalTable
from fraudstream.features.terminal import count_buckets
from fraudstream.features.watermarks import NO_WATERMARK, PartitionProgress, sealable
from fraudstream.records import Rejected
from fraudstream.schema import Invalid, Label, decode_label
from fraudstream.store.outcomes import (
    add_daily_counts,
    known_frauds,
    load_sealed_table,
    newest_sealed_day,
    promise_watermarks,
    seal_table,
    store_labels,
    stored_progress,
)
from fraudstream.telemetry import count_dead_letters

__all__ = ["LabelReader", "SettledCounts", "TerminalTables"]

log = logging.getLogger("fraudstream.engine")

_CACHED_DAYS = 64
_US = 1_000_000


def _micros(stamp: pd.Timestamp) -> int:
    return int(stamp.value // 1000)


class LabelReader:
    """The labels topic into PostgreSQL, every partition, offsets committed only after the
    labels they cover are stored (a crash loses none; storing twice changes nothing).
    Invalid labels go to the labels dead-letter topic with the reason."""

    def __init__(self, settings: Settings, group_id: str, producer: Producer) -> None:
        self.settings = settings
        self.topic = settings.kafka.topics.labels
        self.producer = producer
        group = f"{group_id}-labels"
        self.consumer = Consumer(
            {
                **settings.kafka.client_config(),
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": FETCH_WAIT_MS,
                "log_level": 3,
            }
        )
        self.offsets = offsets_client(settings.kafka, group)
        self.watermarks: dict[int, int] = {}  # newest reported_at read per partition (µs)
        self.positions: dict[int, int] = {}
        self.invalid = 0
        self._assigned = False

    def _assign(self) -> None:
        """Start from where this group committed (the log's start when it never did)."""
        metadata = retry(lambda: self.consumer.list_topics(self.topic, timeout=10), "labels")
        partitions = [TopicPartition(self.topic, p) for p in metadata.topics[self.topic].partitions]
        committed = retry(lambda: self.consumer.committed(partitions, timeout=10), "label offsets")
        for partition in committed:
            if partition.offset < 0:
                low, _high = retry(
                    partial(self.offsets.get_watermark_offsets, partition, timeout=10),
                    "label offsets",
                )
                partition.offset = low
            self.positions[partition.partition] = partition.offset
            self.watermarks.setdefault(partition.partition, int(NO_WATERMARK))
        self.consumer.assign(committed)
        self._assigned = True

    def read(
        self, conn: psycopg.Connection[Any], until_us: int | None = None, timeout_s: float = 30
    ) -> bool:
        """Read and store labels until every partition has shown a label reported at or after
        ``until_us`` or has nothing more to read (``None``: to the end). False when that did
        not happen within ``timeout_s`` (the broker is slow or away)."""
        if not self._assigned:
            self._assign()
        ends = {}
        for partition in self.consumer.assignment():
            _low, high = retry(
                partial(self.offsets.get_watermark_offsets, partition, timeout=10),
                "label offsets",
            )
            ends[partition.partition] = high

        def done(partition: int) -> bool:
            return self.positions.get(partition, 0) >= ends[partition] or (
                until_us is not None and self.watermarks.get(partition, NO_WATERMARK) >= until_us
            )

        deadline = time.monotonic() + timeout_s
        while not all(done(p) for p in ends):
            if time.monotonic() > deadline:
                return False
            # A batch consume waits for its whole count or its timeout (0.2 s on every
            # seal when a few labels are left): wait for one, then take what has arrived.
            messages = self.consumer.consume(1, 0.2)
            if messages:
                messages += self.consumer.consume(9_999, 0)
            messages = [m for m in messages if not m.error()]
            if messages:
                self._store(conn, messages)
        return True

    def _store(self, conn: psycopg.Connection[Any], messages: list[Any]) -> None:
        labels: list[Label] = []
        rejected: list[Rejected] = []
        for message in messages:
            partition, offset = message_partition(message), message_offset(message)
            label = decode_label(message.value() or b"")
            if isinstance(label, Invalid):
                rejected.append(
                    Rejected(self.topic, partition, offset, label.reason, message.key(),
                             message.value() or b"")
                )  # fmt: skip
            else:
                labels.append(label)
                stamp = _micros(pd.Timestamp(label.reported_at))
                self.watermarks[partition] = max(self.watermarks.get(partition, stamp), stamp)
            self.positions[partition] = offset + 1
        refused = []
        if rejected:
            count_dead_letters("labels", [r.reason for r in rejected])
            refused = dead_letter(
                self.producer, self.settings.kafka.topics.labels_dlq, rejected,
                max_message_bytes=self.settings.kafka.max_message_bytes,
            )  # fmt: skip
            self.invalid += len(rejected)
            for letter in rejected:
                log.warning(
                    "invalid label at %s/%s: %s", letter.partition, letter.offset, letter.reason
                )
        with conn.transaction():
            store_labels(conn, labels)
            if rejected:
                reasons = {(r.partition, r.offset): r.reason for r in refused}
                conn.cursor().executemany(
                    "INSERT INTO dlq_events (source_topic, source_partition, source_offset, "
                    "reason) VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    [
                        (r.topic, r.partition, r.offset,
                         reasons.get((r.partition, r.offset), r.reason)[:1000])
                        for r in rejected
                    ],
                )  # fmt: skip
        self.consumer.commit(
            offsets=[TopicPartition(self.topic, p, o) for p, o in self.positions.items()],
            asynchronous=False,
        )

    def close(self) -> None:
        self.consumer.close()
        self.offsets.close()


class SettledCounts:
    """What terminal tables are built from, kept from one seal to the next: a day's table
    then reads the one day of counts that became final since the last, not the forty its
    windows span (sealing a day used to stall every partition for seconds).

    An engine that (re)starts has none of them: with ``connect``, once a day's table is
    known the counts the next day's table will need that are already final are read in the
    background, so the next seal reads one day. The reading (5 s of CPU at 100,000
    terminals) starts ``read_ahead_delay_s`` later, not while a restarted engine catches up
    and the decision API waits on it; a seal that needs the counts before then reads at once.
    """

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]] | None = None,
        read_ahead_delay_s: float = 60.0,
    ) -> None:
        self.activity = TerminalActivity()
        self.counted: set[np.datetime64] = set()  # the days whose counts are in ``activity``
        self._connect = connect
        self._delay_s = read_ahead_delay_s
        self._needed_now = threading.Event()  # a seal waits: no more delay
        self._reading: threading.Thread | None = None
        self._read_ahead_of: np.datetime64 | None = None

    def activity_for(self, conn: psycopg.Connection[Any], day: np.datetime64) -> TerminalActivity:
        """What the table of ``day`` is built from, once the logs allow sealing it. Its count
        windows end before ``day - 1``: transactions of those days not stored by now are late
        (``sealable``; ``late_after_seal`` for idle partitions) and never counted, so the
        counts read are final and kept. Frauds are read again each time: labels arrive."""
        self.finish_reading()
        edges = count_buckets(day)
        self.activity.forget_before(day)
        self.counted = {counted for counted in self.counted if counted >= edges[0]}
        self._add_counts(conn, np.arange(edges[0], edges[-1], dtype="datetime64[D]"))
        self.activity.replace_frauds(*known_frauds(conn, day))
        conn.commit()
        return self.activity

    def read_ahead(self, known: np.datetime64) -> None:
        """The table of ``known`` exists (sealed, here or by another engine): start reading
        the counts the table of the next day needs that are final already (those the table
        of ``known`` covers). The caller uses ``activity`` only through ``activity_for``,
        which waits for the reading to end."""
        if self._connect is None:
            return
        if self._read_ahead_of is not None and known <= self._read_ahead_of:
            return
        if self._reading is not None:
            if self._reading.is_alive():
                return  # one reading at a time; the seal reads what it did not
            self.finish_reading()
        self._read_ahead_of = known
        self._needed_now.clear()
        final_before = count_buckets(known)[-1]
        after = count_buckets(known + 1)
        days = np.arange(after[0], min(after[-1], final_before), dtype="datetime64[D]")
        if all(day in self.counted for day in days):
            return  # sealed here: the seal read them
        self._reading = threading.Thread(
            target=self._read_in_background, args=(days,), name="terminal-counts", daemon=True
        )
        self._reading.start()

    def _read_in_background(self, days: np.ndarray) -> None:
        assert self._connect is not None
        self._needed_now.wait(self._delay_s)
        started = time.monotonic()
        try:
            with self._connect() as conn:
                added = self._add_counts(conn, days)
        except psycopg.Error as error:  # the seal reads what is missing
            log.warning("terminal counts not read ahead: %s", error)
            return
        if added:
            log.info(
                "terminal counts of %d days read ahead of the next seal in %.1f s",
                added, time.monotonic() - started,
            )  # fmt: skip

    def finish_reading(self) -> None:
        """Wait until the counts being read ahead, if any, are in (read now if still
        delayed)."""
        if self._reading is not None:
            self._needed_now.set()
            self._reading.join()
            self._reading = None

    def _add_counts(self, conn: psycopg.Connection[Any], days: np.ndarray) -> int:
        """The counts of those of ``days`` not counted yet; the days are marked counted
        once their counts are in (``add_daily_counts`` adds all or none)."""
        missing = [day for day in days if day not in self.counted]
        add_daily_counts(conn, self.activity, missing)
        self.counted.update(missing)
        return len(missing)


class TerminalTables:
    """Each UTC day's terminal table: read from PostgreSQL once sealed, else sealed here when
    ``sealable`` allows it and the labels reported by its midnight are stored. ``group`` and
    ``topic`` name the transactions whose progress is stored; ``log_ends`` is a Kafka client
    that can tell where each partition's log ends; ``connect`` opens a database connection
    of its own, to read counts ahead of the next seal (``SettledCounts``)."""

    def __init__(
        self,
        labels: LabelReader,
        *,
        lateness: timedelta,
        built_by: str,
        group: str,
        topic: str,
        log_ends: Consumer,
        connect: Callable[[], psycopg.Connection[Any]] | None = None,
    ) -> None:
        self.labels = labels
        self.lateness = lateness
        self.built_by = built_by
        self.group, self.topic, self.log_ends = group, topic, log_ends
        self._cache: OrderedDict[np.datetime64, TerminalTable] = OrderedDict()
        self.sealed_here = 0
        self._settled = SettledCounts(connect)

    def cached(self) -> set[np.datetime64]:
        return set(self._cache)

    def get(self, conn: psycopg.Connection[Any], day: np.datetime64) -> TerminalTable | None:
        """The sealed table of ``day`` (None when no engine sealed it yet)."""
        table = self._cache.get(day)
        if table is None:
            table = load_sealed_table(conn, day)
            conn.commit()
            if table is None:
                return None
            self._remember(table)
        self._cache.move_to_end(day)
        return table

    def available(
        self, conn: psycopg.Connection[Any], days: set[np.datetime64]
    ) -> dict[np.datetime64, TerminalTable]:
        found = {day: self.get(conn, day) for day in sorted(days)}
        return {day: table for day, table in found.items() if table is not None}

    def newest_sealed(self, conn: psycopg.Connection[Any]) -> np.datetime64 | None:
        day = newest_sealed_day(conn)
        conn.commit()
        return day

    def progress(self, conn: psycopg.Connection[Any]) -> dict[int, PartitionProgress]:
        """Every transactions partition: how far the group's stored work goes (offset and
        watermark), and where its log ends now."""
        stored = stored_progress(conn, self.group, self.topic)
        conn.commit()
        metadata = retry(partial(self.log_ends.list_topics, self.topic, timeout=10), "metadata")
        progress = {}
        for partition in metadata.topics[self.topic].partitions:
            low, high = retry(
                partial(
                    self.log_ends.get_watermark_offsets,
                    TopicPartition(self.topic, partition),
                    timeout=10,
                ),
                "offsets",
            )
            next_offset, watermark = stored.get(partition, (low, int(NO_WATERMARK)))
            progress[partition] = PartitionProgress(max(next_offset, low), watermark, high)
        return progress

    def seal_for(self, conn: psycopg.Connection[Any], waiting: Mapping[int, Decoded]) -> bool:
        """Seal the table the earliest waiting record needs, if the logs allow it. Every
        waiting partition first promises its record's event time as its watermark, so that
        engines owning the other partitions can seal too."""
        promises = {
            p: (item.offset, int(pd.Timestamp(item.record.event_time).value // 1000))  # type: ignore[union-attr]
            for p, item in waiting.items()
        }
        with conn.transaction():
            promise_watermarks(conn, self.group, self.topic, promises)
        return self.try_seal(conn, earliest_day(waiting)) is not None

    def try_seal(self, conn: psycopg.Connection[Any], day: np.datetime64) -> TerminalTable | None:
        """Seal (or fetch) the table of ``day`` if the transactions and labels read so far
        allow it; None when they do not yet."""
        table = self.get(conn, day)
        if table is not None:
            return table
        ready, idle = sealable(day, self.progress(conn), self.lateness)
        if not ready:
            return None
        midnight = int(
            np.asarray(day).astype("datetime64[D]").astype("datetime64[us]").astype(np.int64)
        )
        if not self.labels.read(conn, midnight + int(self.lateness.total_seconds() * _US)):
            log.warning("labels topic not read up to %s; the table of that day waits", day)
            return None
        activity = self._settled.activity_for(conn, day)
        with conn.transaction():
            table, sealed = seal_table(
                conn, activity.table(day), features_version=FEATURES_VERSION,
                idle_partitions=idle, built_by=self.built_by,
            )  # fmt: skip
        if sealed:
            self.sealed_here += 1
            log.info(
                "terminal table of %s sealed (%d terminals%s)", day, len(table.frame),
                f"; idle partitions {idle}" if idle else "",
            )  # fmt: skip
        self._remember(table)
        return table

    def _remember(self, table: TerminalTable) -> None:
        self._settled.read_ahead(table.day)
        self._cache[table.day] = table
        while len(self._cache) > _CACHED_DAYS:
            self._cache.popitem(last=False)

    def clear(self) -> None:
        self._cache.clear()

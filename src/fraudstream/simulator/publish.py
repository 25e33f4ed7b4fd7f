"""Putting transactions and labels on Kafka: the producer, the live simulator, dataset replay.

The producer is idempotent with ``acks=all`` and compression, keys transactions by card so a
card's events stay in order, and surfaces every delivery error instead of dropping it.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property, partial

import numpy as np
import pandas as pd
from confluent_kafka import KafkaError, Message, Producer

from fraudstream.bus import DeliveryError
from fraudstream.clock import Clock
from fraudstream.config import KafkaSettings
from fraudstream.schema import Label, Transaction, encode
from fraudstream.simulator.adapters import TRANSACTION_COLUMNS, Dataset
from fraudstream.simulator.generator import SimulationParams, generate_blocks, new_stream
from fraudstream.telemetry import (
    SIMULATOR_CAUGHT_UP,
    SIMULATOR_LABELS,
    SIMULATOR_RATE,
    SIMULATOR_SENT,
    SIMULATOR_TARGET,
)

__all__ = [
    "LabelRows",
    "LiveReport",
    "Publisher",
    "ReplayReport",
    "ResumePoint",
    "TransactionRows",
    "replay",
    "simulate_live",
]


class Publisher:
    """A Kafka producer for the ``transactions`` and ``labels`` topics.

    ``produced`` counts the messages handed to the producer, in order; ``acknowledged`` how
    many of the first of them Kafka has acknowledged, every one (delivery reports come in order
    within a partition, not across partitions). A run can so record how far it got without
    waiting for the broker."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.topics = kafka.topics
        self.produced = 0
        self.failed = 0
        self.first_errors: list[str] = []
        self._acknowledged = AcknowledgedPrefix()
        self._producer = Producer(
            {
                **kafka.client_config(),
                "enable.idempotence": True,
                "acks": "all",
                "compression.type": "lz4",
                "linger.ms": 5,
                "batch.size": 1_000_000,
                "queue.buffering.max.messages": 1_000_000,
                "queue.buffering.max.kbytes": 1_048_576,
                "message.max.bytes": kafka.max_message_bytes,  # the topics' limit
            }
        )

    @property
    def acknowledged(self) -> int:
        return self._acknowledged.count

    def _on_delivery(self, serial: int, error: KafkaError | None, _message: Message) -> None:
        if error is None:
            self._acknowledged.add(serial)
            return
        self.failed += 1
        if len(self.first_errors) < 5:
            self.first_errors.append(str(error))

    def send(self, topic: str, key: str, value: bytes) -> None:
        on_delivery = partial(self._on_delivery, self.produced)
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.05)
        self.produced += 1

    def send_transaction(self, record: Transaction) -> None:
        self.send(self.topics.transactions, record.card_id, encode(record))

    def send_label(self, record: Label) -> None:
        self.send(self.topics.labels, record.card_id or record.tx_id, encode(record))

    def poll(self) -> None:
        """Serve delivery reports; raise if Kafka refused a message."""
        self._producer.poll(0)
        if self.failed:
            raise self._error(0)

    def close(self, timeout_s: float = 60.0) -> None:
        """Flush, then let the producer go now: its delivery callback refers back to this
        publisher, so without this it would live (and reconnect) until a garbage collection."""
        try:
            self.flush(timeout_s)
        finally:
            del self._producer

    def flush(self, timeout_s: float = 60.0) -> None:
        """Wait for every message to be acknowledged; raise if any was not."""
        remaining = self._producer.flush(timeout_s)
        if remaining or self.failed:
            raise self._error(remaining, timeout_s)

    def _error(self, remaining: int, timeout_s: float = 0.0) -> DeliveryError:
        queued = f" ({remaining} still queued after {timeout_s:.0f} s)" if remaining else ""
        return DeliveryError(
            f"{self.failed + remaining} message(s) not delivered to Kafka{queued}: "
            + "; ".join(self.first_errors or ["timed out"])
        )


class AcknowledgedPrefix:
    """The length of the longest run of serials 0, 1, 2… all acknowledged, whatever the order
    the acknowledgements come in."""

    def __init__(self) -> None:
        self.count = 0
        self._ahead: set[int] = set()  # acknowledged, after a gap

    def add(self, serial: int) -> None:
        if serial != self.count:
            self._ahead.add(serial)
            return
        self.count += 1
        while self._ahead and self.count in self._ahead:
            self._ahead.remove(self.count)
            self.count += 1


# --- rows to records ---------------------------------------------------------------------


def _column(frame: pd.DataFrame, name: str) -> list[object]:
    if name not in frame or frame[name].isna().all():
        return [None] * len(frame)
    column = frame[name]
    present = column.notna()
    values: list[object] = (
        column.tolist()
        if bool(present.all())
        else column.astype(object).where(present, None).tolist()
    )
    return values


class TransactionRows:
    """Canonical records for the rows of a frame, built one at a time (no list of millions)."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self._names = [name for name in TRANSACTION_COLUMNS if name != "event_time"]
        self._columns = [_column(frame, name) for name in self._names]
        self._times = frame["event_time"].dt.to_pydatetime().tolist()

    def __len__(self) -> int:
        return len(self._times)

    def record(self, index: int, event_time: datetime | None = None) -> Transaction:
        fields = {
            name: column[index]
            for name, column in zip(self._names, self._columns, strict=True)
            if column[index] is not None
        }
        return Transaction(event_time=event_time or self._times[index], **fields)  # type: ignore[arg-type]


class LabelRows:
    def __init__(self, frame: pd.DataFrame) -> None:
        self._rows = list(
            zip(
                frame["tx_id"], frame["is_fraud"], frame["reported_at"], frame["source"],
                frame["card_id"], frame["scenario"], strict=True,
            )
        )  # fmt: skip

    def record(self, index: int) -> Label:
        tx_id, is_fraud, reported_at, source, card_id, scenario = self._rows[index]
        return Label(
            tx_id=tx_id,
            is_fraud=bool(is_fraud),
            reported_at=pd.Timestamp(reported_at).to_pydatetime(),
            source=source,
            card_id=card_id if isinstance(card_id, str) else None,
            scenario=scenario if isinstance(scenario, str) else None,
        )


# --- live simulation -----------------------------------------------------------------------


@dataclass
class LiveReport:
    target_rate: float
    sent: int = 0
    labels_sent: int = 0
    frauds: int = 0
    seconds: float = 0.0
    scenarios: dict[str, int] = field(default_factory=dict)

    @property
    def achieved_rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class ResumePoint:
    """Where a live simulation stopped: how many transactions it had sent, how its simulated
    time maps onto the wall clock (accelerated runs), and its stream (the ids' namespace)."""

    sent: int
    origin_wall: datetime
    origin_sim: datetime
    stream: str


_CHECKPOINT_EVERY_S = 5.0


def simulate_live(
    publisher: Publisher,
    params: SimulationParams,
    *,
    rate: float,
    clock: Clock,
    count: int | None = None,
    duration_s: float | None = None,
    accelerated: bool = False,
    stop: threading.Event | None = None,
    resume: ResumePoint | None = None,
    checkpoint: Callable[[ResumePoint], None] | None = None,
    stream: str | None = None,
    live_rate: float | None = None,
) -> LiveReport:
    """Send simulated traffic at ``rate`` transactions/s until ``count``, ``duration_s`` or
    ``stop``. Event time is the send time (``clock.now()``); with ``accelerated`` it is the
    simulation's own time, started at now, so days pass in minutes and labels arrive.

    An accelerated run that reaches the present goes on in real time: at ``live_rate``
    transactions/s, event time the send time (a live demo that stays busy, with the
    population's fraud scenarios still starting), or without it at the simulation's own
    pace (a few transactions a minute for a small population).

    Transaction ids are ``s<seed>-<stream>-<serial>``. Without ``resume`` the run starts the
    stream ``stream`` from its beginning; left out, a new one (``new_stream``), so that no two
    runs share an id. ``resume`` continues an earlier run's stream after the transactions it
    sent (the next ids, time going on, its labels still due re-queued) instead of repeating it;
    ``checkpoint`` receives the point to resume from every few seconds and at the end."""
    if count is None and duration_s is None and stop is None:
        raise ValueError("give a count, a duration or a stop event")
    if resume is not None and stream is not None and stream != resume.stream:
        raise ValueError(f"stream {stream!r} cannot resume stream {resume.stream!r}")
    stream = resume.stream if resume is not None else stream or new_stream()
    stop = stop or threading.Event()
    report = LiveReport(target_rate=rate)
    blocks = generate_blocks(params.live(stream))
    buffer = _Buffer(blocks)
    pending: list[tuple[datetime, int, Label]] = []  # labels waiting for their report time
    if resume is not None:
        origin_wall, origin_sim = resume.origin_wall, pd.Timestamp(resume.origin_sim)
        _skip_sent(buffer, resume.sent, origin_wall, origin_sim, pending)
    else:
        origin_wall = clock.now()
        if accelerated:
            # Simulated time runs ahead of the wall clock; start it far enough in the past that
            # the stream ends around now (engines reject events from the future).
            origin_wall -= _simulated_span(buffer, rate, count, duration_s)
        origin_sim = buffer.first_time()
    already = resume.sent if resume is not None else 0

    def point() -> ResumePoint:
        return ResumePoint(already + report.sent, origin_wall, origin_sim.to_pydatetime(), stream)

    # A resume point only counts what Kafka has acknowledged. Waiting for it (a flush) would
    # stall the stream, so a point is taken every few seconds and saved once every message
    # produced before it is acknowledged.
    taken: tuple[int, ResumePoint] | None = None
    saved = clock.monotonic()
    began = started = clock.monotonic()  # `started` moves when the stream waits for the present
    pace = _Pace(rate, clock)
    realtime = not accelerated  # event time is the send time
    # What is due is sent at once (a few rows per step on pace), at most 50 ms of traffic:
    # on a busy machine the rate is caught up rather than lost.
    most = max(1, int(rate / 20))
    SIMULATOR_TARGET.set(rate)
    while not stop.is_set():
        elapsed = clock.monotonic() - started
        if duration_s is not None and elapsed >= duration_s:
            break
        due = pace.due()
        if count is not None:
            due = min(due, count - report.sent)
            if due <= 0 and report.sent >= count:
                break
        if due <= 0:
            clock.sleep(pace.until_next())
            continue
        rows = buffer.peek_rows(min(due, most))
        if realtime:
            times = [clock.now()] * len(rows)
        else:
            times = rows.wall_times(origin_wall, origin_sim)
            if times[-1] > clock.now():  # caught up with the present
                SIMULATOR_CAUGHT_UP.set(1)
                if live_rate is not None:
                    realtime = True
                    pace = _Pace(live_rate, clock)
                    most = max(1, int(live_rate / 20))
                    SIMULATOR_TARGET.set(live_rate)
                    continue
                # At the simulation's own pace: wait for the next transaction's time.
                waited = min((times[-1] - clock.now()).total_seconds(), 0.5)
                clock.sleep(waited)
                started += waited
                pace = _Pace(rate, clock)  # no burst after the wait
                continue
        buffer.advance(len(rows))
        for index, event_time in enumerate(times, rows.start):
            publisher.send_transaction(rows.chunk.records.record(index, event_time))
        report.sent += len(rows)
        pace.sent(len(rows))
        SIMULATOR_SENT.inc(len(rows))
        report.seconds = clock.monotonic() - began  # wall time, waits included
        _queue_labels(rows, times, pending, report)
        now = clock.now() if realtime else times[-1]
        labels = 0
        while pending and pending[0][0] <= now:
            publisher.send_label(heapq.heappop(pending)[2])
            labels += 1
        report.labels_sent += labels
        SIMULATOR_LABELS.inc(labels)
        publisher.poll()
        if checkpoint is None:
            continue
        if taken is None and clock.monotonic() - saved >= _CHECKPOINT_EVERY_S:
            taken, saved = (publisher.produced, point()), clock.monotonic()
        if taken is not None and publisher.acknowledged >= taken[0]:
            checkpoint(taken[1])
            taken = None
    publisher.flush()
    if checkpoint is not None:
        checkpoint(point())
    return report


class _Pace:
    """How many transactions are due to hold ``rate`` since this pace began, and the
    achieved rate over the last seconds for the metrics."""

    _WINDOW_S = 10.0

    def __init__(self, rate: float, clock: Clock) -> None:
        self.rate, self.clock = rate, clock
        self.began = clock.monotonic()
        self.count = 0
        self._recent: list[tuple[float, int]] = [(self.began, 0)]

    def due(self) -> int:
        return int(self.rate * (self.clock.monotonic() - self.began)) + 1 - self.count

    def until_next(self) -> float:
        """Seconds to the next transaction's turn (at most 10 ms: stop is checked between)."""
        return min((self.count + 1) / self.rate - (self.clock.monotonic() - self.began), 0.01)

    def sent(self, count: int) -> None:
        self.count += count
        now = self.clock.monotonic()
        if now - self._recent[-1][0] >= 1.0:
            self._recent.append((now, self.count))
            while len(self._recent) > 2 and now - self._recent[1][0] >= self._WINDOW_S:
                self._recent.pop(0)
            since, then = self._recent[0]
            SIMULATOR_RATE.set((self.count - then) / (now - since))


def _skip_sent(
    buffer: _Buffer,
    sent: int,
    origin_wall: datetime,
    origin_sim: pd.Timestamp,
    pending: list[tuple[datetime, int, Label]],
) -> None:
    """Pass over the ``sent`` transactions of an earlier run, keeping the labels of its
    frauds that were not yet due when it stopped (their report times are simulated)."""
    left = sent
    last: datetime | None = None
    ignored = LiveReport(target_rate=1.0)
    while left > 0:
        rows = buffer.peek_rows(left)
        times = rows.wall_times(origin_wall, origin_sim)
        _queue_labels(rows, times, pending, ignored)
        buffer.advance(len(rows))
        left -= len(rows)
        last = times[-1]
    while pending and last is not None and pending[0][0] <= last:
        heapq.heappop(pending)  # sent by the earlier run


def _queue_labels(
    rows: _Rows,
    times: list[datetime],
    pending: list[tuple[datetime, int, Label]],
    report: LiveReport,
) -> None:
    chunk = rows.chunk
    for position in np.flatnonzero(chunk.fraud[rows.start : rows.stop]):
        row = chunk.frame.iloc[rows.start + position]
        name = str(row["scenario"])
        report.frauds += 1
        report.scenarios[name] = report.scenarios.get(name, 0) + 1
        if pd.isna(row["label_reported_at"]):
            continue  # this fraud is never reported
        delay = row["label_reported_at"] - row["event_time"]
        label = Label(
            tx_id=row["tx_id"],
            is_fraud=True,
            reported_at=times[position] + delay.to_pytimedelta(),
            source="simulator",
            card_id=row["card_id"],
            scenario=name,
        )
        heapq.heappush(pending, (label.reported_at, report.frauds, label))


def _simulated_span(
    buffer: _Buffer, rate: float, count: int | None, duration_s: float | None
) -> timedelta:
    """How much simulated time the run will cover, from the first block's daily volume."""
    first = buffer.peek()
    days = max(
        (first["event_time"].iat[-1] - first["event_time"].iat[0]).total_seconds() / 86_400, 1e-3
    )
    per_day = len(first) / days
    if count is None and duration_s is None:
        return timedelta(days=30)  # endless: a month of history, then live
    total = count if count is not None else rate * (duration_s or 0.0)
    # A margin, so that volume drifting above the first week's never makes a bounded run wait
    # for the wall clock to catch up.
    return timedelta(days=min(total / per_day * 1.2 + 1, 365.0))


class _Chunk:
    """Consecutive rows of a block, converted once for sending: building records from a
    frame costs pandas a few milliseconds a call, which per send of a few rows kept the live
    simulator on a whole core at 1,000 transactions/s."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self.event_us = frame["event_time"].to_numpy(dtype="datetime64[us]").astype(np.int64)
        self.fraud = frame["is_fraud"].to_numpy(dtype=bool)

    @cached_property
    def records(self) -> TransactionRows:
        """Built when first sent from (a resumed run passes over what it already sent)."""
        return TransactionRows(self.frame)


@dataclass(frozen=True)
class _Rows:
    """Rows ``start:stop`` of a chunk."""

    chunk: _Chunk
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    def wall_times(self, origin_wall: datetime, origin_sim: pd.Timestamp) -> list[datetime]:
        """The rows' simulated times moved onto the wall clock (``origin_sim`` is at
        ``origin_wall``)."""
        offsets = self.chunk.event_us[self.start : self.stop] - origin_sim.value // 1_000
        return [origin_wall + timedelta(microseconds=offset) for offset in offsets.tolist()]


class _Buffer:
    """Rows from consecutive generated blocks, handed out in slices of chunks."""

    _CHUNK_ROWS = 20_000

    def __init__(self, blocks: Iterator[pd.DataFrame]) -> None:
        self._blocks = blocks
        self._frame = next(blocks)
        self._chunk_start = 0  # in the block
        self._chunk = _Chunk(self._frame.iloc[: self._CHUNK_ROWS])
        self._position = 0  # in the chunk

    def peek(self) -> pd.DataFrame:
        """The block being sent."""
        return self._frame

    def first_time(self) -> pd.Timestamp:
        return pd.Timestamp(self._frame["event_time"].iat[0])

    def peek_rows(self, count: int) -> _Rows:
        """The next ``count`` rows (fewer at a chunk's end), without consuming them."""
        if self._position >= len(self._chunk.frame):
            self._chunk_start += len(self._chunk.frame)
            if self._chunk_start >= len(self._frame):
                self._frame, self._chunk_start = next(self._blocks), 0
            self._chunk = _Chunk(
                self._frame.iloc[self._chunk_start : self._chunk_start + self._CHUNK_ROWS]
            )
            self._position = 0
        return _Rows(
            self._chunk, self._position, min(self._position + count, len(self._chunk.frame))
        )

    def advance(self, count: int) -> None:
        self._position += count


# --- replay -----------------------------------------------------------------------------


@dataclass
class ReplayReport:
    transactions: int = 0
    labels: int = 0
    seconds: float = 0.0
    stopped_early: bool = False


def replay(
    publisher: Publisher,
    dataset: Dataset,
    *,
    clock: Clock,
    speed: float | None = None,
    stop: threading.Event | None = None,
) -> ReplayReport:
    """Stream a dataset's transactions and label events in time order, as fast as possible
    (``speed`` None) or at ``speed`` × real time by event time."""
    stop = stop or threading.Event()
    txs, labels = dataset.transactions, dataset.labels
    times = np.concatenate(
        [
            txs["event_time"].to_numpy(dtype="datetime64[us]"),
            labels["reported_at"].to_numpy(dtype="datetime64[us]"),
        ]
    )
    kinds = np.concatenate([np.zeros(len(txs), np.int8), np.ones(len(labels), np.int8)])
    order = np.lexsort((kinds, times))  # by time; a transaction before a label at the same time
    tx_records = TransactionRows(txs)
    label_records = LabelRows(labels)
    report = ReplayReport()
    started = clock.monotonic()
    first = times[order[0]] if len(order) else None
    for step, index in enumerate(order):
        if stop.is_set():
            report.stopped_early = True
            break
        if speed is not None and first is not None:
            offset = (times[index] - first) / np.timedelta64(1, "s") / speed
            wait = offset - (clock.monotonic() - started)
            if wait > 0:
                publisher.poll()
                clock.sleep(wait)
        if index < len(txs):
            publisher.send_transaction(tx_records.record(index))
            report.transactions += 1
        else:
            publisher.send_label(label_records.record(index - len(txs)))
            report.labels += 1
        if step % 10_000 == 0:
            publisher.poll()
    publisher.flush()
    report.seconds = clock.monotonic() - started
    return report

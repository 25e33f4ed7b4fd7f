"""The per-message pipeline most tutorials build, measured beside the local engine.

A confluent-kafka consumer polls one message at a time; each is decoded, its features computed
and its one row scored, decided and explained with this project's own code (the same decoder,
card state, terminal tables, model and rules, so the numbers are the engine's), stored with one
``INSERT`` on an autocommit connection, and its alert (if any) produced; the consumer
auto-commits offsets, as those tutorials leave it. It does less than the engine per message:
no rollups, no snapshots, no exactly-once bookkeeping, no duplicate checks, no watermarks
(nothing is flagged late; a day's terminal table is built from what is stored when the day's
first transaction arrives, not sealed).

Both run in one benchmark on the same private broker and database, on the same backlog (a fresh
database and consumer group for each drain), alternately, so that the noise of a busy machine
falls on both. Both are measured the same way: rows stored, first to last stored row.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import pandas as pd
from confluent_kafka import Consumer, Message
from psycopg.types.json import Jsonb

from bench.ceiling import IOCeiling
from bench.engine import (
    FULL,
    QUICK,
    Drained,
    EngineBench,
    Progress,
    Workload,
    cpu_per_1000,
    stored_span,
)
from bench.peer import QuixPeer, peer_python
from bench.stages import Result
from fraudstream.bus.alerts import publish_alerts
from fraudstream.bus.clients import engine_producer, message_offset, message_partition
from fraudstream.clock import SystemClock
from fraudstream.config import Settings
from fraudstream.engines.base import decision_rules
from fraudstream.engines.scoring import predictions_of
from fraudstream.engines.step import Decoded, columns_of
from fraudstream.engines.terminals import LabelReader
from fraudstream.features import CardState, FeatureComputer, TerminalTable
from fraudstream.model.registry import Registry
from fraudstream.model.scoring import Scorer
from fraudstream.records import PREDICTION_COLUMNS as COLUMNS
from fraudstream.schema import Invalid, decode_transaction
from fraudstream.store.db import connect
from fraudstream.store.outcomes import load_terminal_activity

__all__ = ["PerMessage", "run"]

_PEER_ROWS = 150_000  # the peer drains this much of the backlog (it is far slower)

_INSERT = (
    f"INSERT INTO fraud_predictions ({', '.join(COLUMNS)}) "  # noqa: S608 (names from records)
    f"VALUES ({', '.join(['%s'] * len(COLUMNS))})"
)
# The engine's sink keeps per-terminal daily counts with every batch; one INSERT per message
# does not, so they are counted from the stored rows when a day's terminal table is built
# (once per simulated day): the terminal features stay the engine's.
_COUNT_TERMINALS = """
DELETE FROM terminal_daily;
INSERT INTO terminal_daily (terminal_id, day, tx_count)
SELECT terminal_id, (event_time AT TIME ZONE 'UTC')::date, count(*) FROM fraud_predictions
WHERE NOT late
GROUP BY 1, 2
"""


class PerMessage:
    """One message at a time: poll, decode, features, score, INSERT (autocommit)."""

    name = "baseline"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.clock = SystemClock()
        group = settings.engine.group_id
        self.consumer = Consumer(
            {
                **settings.kafka.client_config(),
                "group.id": group,
                "enable.auto.commit": True,  # every 5 s, librdkafka's default
                "auto.offset.reset": "earliest",
                "log_level": 3,
            }
        )
        self.conn = connect(settings, autocommit=True)
        self.tables_conn = connect(settings)  # the terminal tables', as the engine has one
        self.scorer = Scorer(Registry(settings.models_dir).load())
        self.rules = decision_rules(settings)
        self.producer = engine_producer(settings.kafka)
        self.labels = LabelReader(settings, group, self.producer)
        self.features = FeatureComputer(state=CardState(), tables=self._table)
        self.handled = 0

    def run(self, seconds: float, limit: int) -> int:
        """Handle messages for ``seconds`` from the first one (or until ``limit``)."""
        self.consumer.subscribe([self.settings.kafka.topics.transactions])
        started: float | None = None
        deadline = time.monotonic() + 120  # to be assigned partitions and get a message
        try:
            while self.handled < limit:
                message = self.consumer.poll(1.0)
                now = time.monotonic()
                if started is None and now > deadline:
                    raise RuntimeError("baseline: no message within 120 s")
                if message is not None and not message.error():
                    started = started or now
                    self.handle(message)
                if started is not None and now - started >= seconds:
                    break
        finally:
            self.close()
        return self.handled

    def handle(self, message: Message) -> None:
        now = self.clock.now()
        value = message.value() or b""
        record = decode_transaction(value, now=now)
        if isinstance(record, Invalid):
            return  # (the simulator sends none)
        appended = message.timestamp()[1]
        decoded = Decoded(
            self.settings.kafka.topics.transactions, message_partition(message),
            message_offset(message), message.key(), value, appended if appended > 0 else None,
            record,
        )  # fmt: skip
        row = columns_of([decoded], late=np.zeros(1, dtype=bool))  # no watermark: never late
        features = self.features.compute(row.frame())
        scored = predictions_of(row, features, self.scorer, self.rules, now, engine=self.name)
        if scored.failed:
            return  # (not with the simulator's transactions)
        prediction = scored.predictions
        stored = prediction.iloc[0]
        self.conn.execute(_INSERT, _values(stored))
        if stored["decision"] != "approve":
            publish_alerts(self.producer, self.settings.kafka.topics.alerts, prediction)
        self.handled += 1

    def close(self) -> None:
        self.consumer.close()
        self.labels.close()
        self.producer.flush(30)
        # The producer (the label reader holds it too) now, not at a garbage collection after
        # the broker has gone.
        del self.producer, self.labels
        self.conn.close()
        self.tables_conn.close()

    def _table(self, day: np.datetime64) -> TerminalTable:
        """The terminal table of ``day`` (``FeatureComputer`` asks once per day): counts from
        the stored rows, the labels topic read to its end, then the engine's own activity
        query and table."""
        with self.tables_conn.transaction():
            self.tables_conn.execute(_COUNT_TERMINALS)
        self.labels.read(self.tables_conn, timeout_s=60)  # else built with what was read
        activity = load_terminal_activity(self.tables_conn, day)
        self.tables_conn.commit()
        return activity.table(day)


def _values(row: pd.Series[Any]) -> tuple[object, ...]:
    def plain(name: str, value: Any) -> object:
        if name == "reasons":
            return Jsonb(value)
        if name == "rule_hits":
            return list(value)
        if name == "features":
            return value.tolist()  # a view of the step's feature block
        if isinstance(value, pd.Timestamp):
            return value.to_pydatetime()
        if value is pd.NaT:
            return None
        return value.item() if isinstance(value, np.generic) else value

    return tuple(plain(name, row[name]) for name in COLUMNS)


def _ceiling(bench: EngineBench, trial: Settings, sent: int) -> Drained:
    """The I/O ceiling drains ``trial``'s backlog; its CPU and the services' are counted."""
    services = bench.service_cpu()
    ceiling = IOCeiling(trial)
    try:
        stored = ceiling.run(sent)
        if stored != sent:
            raise RuntimeError(f"ceiling: {stored:,} of {sent:,} transactions stored")
        rows, seconds = stored_span(trial, "ceiling_transactions")
    finally:
        ceiling.close()
    after = bench.service_cpu()
    cpu = {"consumer": ceiling.cpu_s, **{name: after[name] - services[name] for name in after}}
    return Drained(rows, seconds, 0, 0.0, cpu)


def run(
    base: Settings, *, quick: bool, progress: Progress, seconds: float | None = None
) -> list[Result]:
    """The per-message baseline and one local engine on one backlog, alternately."""
    sizes = QUICK if quick else FULL
    workload = Workload(customers=2_000) if quick else Workload()
    seconds = seconds or (3.0 if quick else 30.0)
    repeats = 1 if quick else 3
    bench = EngineBench(base, workload, sizes, progress)
    engine_runs: list[float] = []
    baseline_runs: list[float] = []
    handled: list[int] = []
    engines: list[Drained] = []
    ceilings: list[Drained] = []
    peers: list[Drained] = []
    with bench.running():
        first, sent = bench.backlog()
        peer_rows = min(sent, _PEER_ROWS)
        python = peer_python(base.cache_dir, progress)
        registry = Registry(bench.settings.models_dir)
        model_dir = registry.root / str(registry.current())
        for attempt in range(repeats):
            trial = first if attempt == 0 else bench.trial(like=first)
            engines.append(bench.drain(trial, sent))
            engine_runs.append(engines[-1].rate)
            progress(f"ceiling: decode and COPY only ({attempt + 1})")
            ceilings.append(_ceiling(bench, bench.trial(like=first), sent))
            progress(f"peer: quix-streams on the first {peer_rows:,} transactions ({attempt + 1})")
            peer = QuixPeer(bench.trial(like=first), python, model_dir, bench.root)
            peers.append(peer.drain(peer_rows))
            trial = bench.trial(like=first)
            progress(f"baseline: one message at a time for {seconds:.0f} s ({attempt + 1})")
            handled.append(PerMessage(trial).run(seconds, sent))
            stored = bench.scored(trial)
            if stored.rows != handled[-1]:
                raise RuntimeError(f"baseline: {handled[-1]:,} handled, {stored.rows:,} stored")
            baseline_runs.append(stored.rate)
    ratios = [e / b for e, b in zip(engine_runs, baseline_runs, strict=True)]
    of_ceiling = [e.rate / c.rate for e, c in zip(engines, ceilings, strict=True)]
    how = (
        f"the first {min(handled):,}–{max(handled):,} transactions of the backlog, "
        "first to last stored row"
    )
    return [
        Result(
            "baseline: one message at a time, one INSERT each (autocommit)",
            statistics.median(baseline_runs),
            "tx/s",
            baseline_runs,
            f"{how}; poll, decode, features, score one row, INSERT, alert; offsets auto-committed",
        ),
        Result(
            "local engine on the same backlog, same run",
            statistics.median(engine_runs),
            "tx/s",
            engine_runs,
            f"all {sent:,} transactions of the backlog, first to last stored row; CPU-seconds "
            f"per 1,000 transactions: {cpu_per_1000(engines)}; engine peak RSS "
            f"{statistics.median(e.peak_rss for e in engines) / 2**20:,.0f} MiB",
        ),
        Result(
            "I/O ceiling: decode and COPY only, same backlog, same run",
            statistics.median(c.rate for c in ceilings),
            "tx/s",
            [c.rate for c in ceilings],
            f"all {sent:,} transactions, first to last stored row (bench/ceiling.py); "
            f"CPU-seconds per 1,000 transactions: {cpu_per_1000(ceilings)}",
        ),
        Result(
            "peer: the same job in quix-streams (RocksDB state, same model)",
            statistics.median(p.rate for p in peers),
            "tx/s",
            [p.rate for p in peers],
            f"the first {min(p.rows for p in peers):,} transactions, first to last stored row "
            f"(bench/peer_quix); CPU-seconds per 1,000 transactions: {cpu_per_1000(peers)}; "
            f"peak RSS {statistics.median(p.peak_rss for p in peers) / 2**20:,.0f} MiB; no "
            "terminal features, rules, explanations or dead letters",
        ),
        Result(
            "local engine ÷ quix-streams peer",
            statistics.median(e.rate / p.rate for e, p in zip(engines, peers, strict=True)),
            "×",
            [e.rate / p.rate for e, p in zip(engines, peers, strict=True)],
            "per pair of drains (issue 19's goal: at least 10)",
        ),
        Result(
            "local engine ÷ I/O ceiling",
            statistics.median(of_ceiling),
            "×",
            of_ceiling,
            "per pair of drains (issue 19's goal: at least 0.75)",
        ),
        Result(
            "local engine ÷ baseline",
            statistics.median(ratios),
            "×",
            ratios,
            "per pair of drains; the engine's card state grows through the whole backlog, the "
            "baseline's only through its first part",
        ),
    ]

"""How the local engine scales with the cards it remembers and the rows it has stored.

Cards: before it starts, the engine is given a stored card state of N cards, written where
the engine keeps it (checkpointed changes per partition in ``card_changes``, by its own sink),
and no card store on its disk. The backlog's cards (the first min(N, 200,000): the simulator
builds its whole population in memory, 1,000,000 customers take about 6 GB and 100 s before
the first transaction) hold their own simulated last month, computed by the feature code; the
other cards hold the last few rows of one of those histories. One engine rebuilds its disk
from PostgreSQL and drains the backlog; then an engine restarts on that disk. Reported per N:
catch-up tx/s, the engine's peak RSS (VmHWM), the size of the state, how long it takes to
write, to rebuild and to restart on.

Table: ``PredictionSink.write`` of engine-sized batches into a predictions table that already
holds N rows, filled by COPY as a month of traffic would leave it (then vacuumed and analysed,
as autovacuum would).
"""

from __future__ import annotations

import json
import statistics
import time
import zlib
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd
import psycopg
from confluent_kafka import Consumer, TopicPartition

from bench import engine as engine_bench
from bench.engine import EngineBench, Progress, Workload
from bench.rows import engine_columns
from bench.stages import Result
from fraudstream.config import Settings
from fraudstream.engines.scoring import empty_predictions
from fraudstream.features import FEATURES_VERSION, CardState
from fraudstream.features.card import CardChanges, card_features
from fraudstream.records import PREDICTION_COLUMNS as COLUMNS
from fraudstream.schema import Invalid, decode_transaction
from fraudstream.simulator.generator import generate_blocks
from fraudstream.store.db import connect
from fraudstream.store.sink import Checkpoint, PredictionSink, Snapshot

__all__ = ["GrowthSizes", "run"]

_TRAFFIC_CARDS = 200_000  # the largest population the backlog is simulated from
_HISTORY = timedelta(days=30)  # the longest card window: what a card's state holds
_FEATURE_ROWS = 1_000_000  # history rows per feature call while the state is built
_FILLER_ROWS = 8  # rows of a card that is not in the backlog's traffic
_SEGMENT_CARDS = 500_000  # cards generated at a time
_SEGMENT_ROWS = 2_000_000  # rows per stored checkpoint of the state (about 100 MB)
_FILL_CHUNK = 500_000
_FILL_DAYS = 30
_CARD_POPULATION = 1_000_000  # the stored predictions' cards and terminals
_TERMINAL_POPULATION = 500_000


@dataclass(frozen=True)
class GrowthSizes:
    cards: tuple[tuple[int, int], ...]  # cards in the engine's state, and partitions
    backlog: int  # transactions drained per card count
    card_repeats: int
    drain_limit_s: float  # after which a drain stops (the rows stored by then are measured)
    rows: tuple[int, ...]  # predictions already stored
    batch_rows: int  # the engine's batch (engine.batch_max_messages)
    batches: int  # written per measured run
    table_repeats: int


FULL = GrowthSizes(
    cards=((10_000, 8), (1_000_000, 8), (10_000_000, 8)), backlog=1_000_000, card_repeats=1,
    drain_limit_s=240,
    rows=(0, 1_000_000, 10_000_000), batch_rows=5_000, batches=40, table_repeats=3,
)  # fmt: skip
QUICK = GrowthSizes(
    cards=((1_000, 4), (5_000, 4)), backlog=3_000, card_repeats=1, drain_limit_s=120,
    rows=(0, 20_000), batch_rows=1_000, batches=4, table_repeats=1,
)  # fmt: skip


def run(base: Settings, *, quick: bool, progress: Progress) -> list[Result]:
    sizes = QUICK if quick else FULL
    engine_sizes = engine_bench.QUICK if quick else engine_bench.FULL
    bench = EngineBench(base, Workload(customers=sizes.cards[0][0]), engine_sizes, progress)
    results: list[Result] = []
    with bench.running():
        for cards, partitions in sizes.cards:
            results += _cards(bench, cards, partitions, sizes, progress)
        results += _table(bench.trial(), sizes, progress)
    return results


# --- cards ---------------------------------------------------------------------------------


def _cards(
    bench: EngineBench, cards: int, partitions: int, sizes: GrowthSizes, progress: Progress
) -> list[Result]:
    traffic = Workload(customers=min(cards, _TRAFFIC_CARDS))
    first, sent = bench.backlog(sizes.backlog, traffic, partitions)
    progress(f"growth: a stored state of {cards:,} cards (a simulated month)")
    segments = _card_state(cards, traffic, partitions, _first_event_time(first))
    state_mib = sum(len(blob) for parts in segments.values() for blob in parts) / 2**20
    drains, restarts, writes, found = [], [], [], list[float]()
    for attempt in range(sizes.card_repeats):
        trial = first if attempt == 0 else bench.trial(like=first)
        started = time.monotonic()
        _store_state(trial, segments)
        writes.append(time.monotonic() - started)
        progress(
            f"growth: one engine rebuilds its disk from {cards:,} stored cards and drains "
            f"{sent:,} transactions"
        )
        drains.append(bench.drain(trial, sent, limit_s=sizes.drain_limit_s, join_s=3_600))
        found += _seeded_share(trial, cards, partitions)
        progress(f"growth: a restart with {cards:,} cards on its disk")
        restarts.append(bench.drain(trial, 0, limit_s=0, join_s=600).joined_s)
    del segments
    if found and min(found) < 0.99:
        raise RuntimeError(
            f"growth: only {min(found):.0%} of the scored cards had a stored state "
            "(has the simulator's card naming or the producer's partitioner changed?)"
        )
    rates = [drained.rate for drained in drains]
    stored = min(drained.rows for drained in drains)
    scored = (
        f"{sent:,} transactions"
        if stored >= sent
        else f"{stored:,} of {sent:,} transactions stored in {sizes.drain_limit_s:.0f} s"
    )
    written = statistics.median(writes)
    rebuilt = statistics.median(d.joined_s for d in drains)
    note = (
        f"{scored} from the first {traffic.customers:,} cards; the others hold their last "
        f"{_FILLER_ROWS} transactions; {state_mib:,.0f} MiB of checkpointed changes in "
        f"{partitions} partitions, written in {written:,.0f} s; the engine's disk rebuilt "
        f"from them in {rebuilt:,.0f} s (engine start to partitions assigned)"
    )
    peaks = [drained.peak_rss / 2**20 for drained in drains]
    return [
        Result(f"catch-up with {cards:,} cards in the state", statistics.median(rates), "tx/s",
               rates, note),
        Result(f"engine peak RSS with {cards:,} cards in the state", statistics.median(peaks),
               "MiB", peaks, "VmHWM of the engine process: rebuild from PostgreSQL included"),
        Result(f"restart with {cards:,} cards on local disk", statistics.median(restarts), "s",
               restarts, "engine start to partitions assigned, its card store up to date"),
    ]  # fmt: skip


def _first_event_time(trial: Settings) -> pd.Timestamp:
    """The earliest event time at the head of the backlog's partitions."""
    topic = trial.kafka.topics.transactions
    consumer = Consumer(
        {**trial.kafka.client_config(), "group.id": "bench-head", "enable.auto.commit": False}
    )
    try:
        heads = [TopicPartition(topic, p, 0) for p in range(trial.kafka.partitions)]
        consumer.assign(heads)
        times: dict[int, datetime] = {}
        deadline = time.monotonic() + 60
        while len(times) < len(heads) and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None or message.error() or message.partition() in times:
                continue
            now = datetime.now(timezone.utc)
            record = decode_transaction(message.value() or b"", now=now)
            if not isinstance(record, Invalid):
                times[int(message.partition() or 0)] = record.event_time
    finally:
        consumer.close()
    if not times:
        raise RuntimeError("growth: no transaction at the head of the backlog")
    return pd.Timestamp(min(times.values()))


def _card_state(
    cards: int, traffic: Workload, partitions: int, before: pd.Timestamp
) -> dict[int, list[bytes]]:
    """Checkpointed changes (per partition, in segments) that rebuild a state of ``cards``
    cards: the traffic's cards with the month they had before ``before`` (simulated from the
    same population, replayed through the feature code), the others with the last
    ``_FILLER_ROWS`` rows of one of those histories (a card seen lately, but rarely)."""
    params = replace(
        traffic.params(),
        days=_HISTORY.days,
        start=(before - _HISTORY).floor("D").to_pydatetime(),
    )
    month = CardState()
    for block in generate_blocks(params):
        block = block[block["event_time"] < before]
        for start in range(0, len(block), _FEATURE_ROWS):
            card_features(month, block.iloc[start : start + _FEATURE_ROWS])
    own = month.cards
    copies = list(own.values())
    segments: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
    pending: list[CardChanges] = [CardChanges() for _ in range(partitions)]
    for chunk in range(0, cards, _SEGMENT_CARDS):
        names = [_card(i) for i in range(chunk, min(chunk + _SEGMENT_CARDS, cards))]
        by_partition: list[tuple[list[str], list[np.ndarray]]] = [
            ([], []) for _ in range(partitions)
        ]
        for offset, name in enumerate(names):
            history = own.get(name)
            if history is None:
                history = copies[(chunk + offset) % len(copies)][-_FILLER_ROWS:]
            ids, rows = by_partition[_partition(name, partitions)]
            ids.append(name)
            rows.append(history)
        for partition, (ids, rows) in enumerate(by_partition):
            counts = [len(r) for r in rows]
            pending[partition].add(np.repeat(np.array(ids, object), counts), np.concatenate(rows))
            if len(pending[partition]) >= _SEGMENT_ROWS or chunk + _SEGMENT_CARDS >= cards:
                segments[partition].append(pending[partition].to_bytes())
                pending[partition] = CardChanges()
    return segments


def _card(index: int) -> str:
    return f"C{index:07d}"  # the simulator's card ids


def _partition(card: str, partitions: int) -> int:
    """The partition the producer puts a card's key in (librdkafka's default partitioner,
    consistent_random: CRC-32 of the key)."""
    return zlib.crc32(card.encode()) % partitions


def _store_state(trial: Settings, segments: dict[int, list[bytes]]) -> None:
    """The changes where the engine rebuilds its state from, written by its own sink: one
    checkpoint per segment, all at offset 0."""
    topic = trial.kafka.topics.transactions
    with connect(trial) as conn:
        sink = PredictionSink(
            conn, consumer_group=trial.engine.group_id, features_version=FEATURES_VERSION
        )
        for partition, blobs in segments.items():
            for sequence, blob in enumerate(blobs, start=1):
                snapshot = Snapshot(0, None, blob, sequence)
                sink.write(
                    empty_predictions(), [Checkpoint(topic, partition, 0, snapshot=snapshot)]
                )


def _seeded_share(trial: Settings, cards: int, partitions: int) -> list[float]:
    """The share of a sample of scored transactions whose card had a stored state there
    (none when nothing was stored)."""
    with connect(trial) as conn:
        sample = conn.execute(
            "SELECT card_id, kafka_partition FROM fraud_predictions LIMIT 2000"
        ).fetchall()
    hits = sum(
        1
        for card, partition in sample
        if str(card).startswith("C")
        and int(str(card)[1:]) < cards
        and _partition(str(card), partitions) == partition
    )
    return [hits / len(sample)] if sample else []


# --- the predictions table -----------------------------------------------------------------


def _table(trial: Settings, sizes: GrowthSizes, progress: Progress) -> list[Result]:
    rng = np.random.default_rng(11)
    results = []
    stored = 0
    with connect(trial) as conn:
        sink = PredictionSink(
            conn, consumer_group="bench-growth", features_version=FEATURES_VERSION
        )
        for target in sizes.rows:
            if target > stored:
                _fill(conn, stored, target - stored, rng, progress)
                stored = target
                progress("growth: VACUUM ANALYZE and CHECKPOINT, as a resting table would be")
                with connect(trial, autocommit=True) as maintenance:
                    maintenance.execute("VACUUM ANALYZE")
                    maintenance.execute("CHECKPOINT")
            runs = []
            for attempt in range(sizes.table_repeats):
                progress(f"growth: sink writes into {target:,} stored rows ({attempt + 1})")
                frames = [
                    _predictions(rng, stored + i * sizes.batch_rows, sizes.batch_rows, None)
                    for i in range(sizes.batches)
                ]
                started = time.perf_counter()
                for i, frame in enumerate(frames):
                    sink.write(frame, _checkpoints(i))
                runs.append(sizes.batch_rows * sizes.batches / (time.perf_counter() - started))
                stored += sizes.batch_rows * sizes.batches
            results.append(
                Result(
                    f"sink: {sizes.batch_rows:,}-row batches into a table of {target:,} rows",
                    statistics.median(runs),
                    "rows/s",
                    runs,
                    f"{sizes.batches} batches per run, one transaction each (predictions, "
                    "rollups, terminal counts, offsets); cards and terminals of the stored rows",
                )
            )
    return results


def _checkpoints(batch: int) -> list[Checkpoint]:
    return [Checkpoint("transactions", p, batch * 1_000 + 1) for p in range(4)]


def _fill(
    conn: psycopg.Connection[Any], first: int, rows: int, rng: np.random.Generator,
    progress: Progress,
) -> None:  # fmt: skip
    """``rows`` more predictions over the last 30 days, with their terminals' daily counts."""
    with conn.cursor() as cursor:
        for start in range(first, first + rows, _FILL_CHUNK):
            n = min(_FILL_CHUNK, first + rows - start)
            progress(f"growth: storing predictions {start + n:,} / {first + rows:,}")
            frame = _predictions(rng, start, n, _FILL_DAYS, text=True)
            frame["rule_hits"] = "{}"
            frame["reasons"] = [_REASONS_TEXT if r else "[]" for r in frame["reasons"]]
            frame["stored_at"] = frame["scored_at"] + pd.Timedelta(milliseconds=20)
            columns = ", ".join(frame.columns)
            with cursor.copy(f"COPY fraud_predictions ({columns}) FROM STDIN (FORMAT csv)") as copy:
                copy.write(frame.to_csv(header=False, index=False))
            conn.commit()
        progress("growth: terminal daily counts of the stored predictions")
        cursor.execute(
            "INSERT INTO terminal_daily AS t (terminal_id, day, tx_count) "
            "SELECT terminal_id, (event_time AT TIME ZONE 'UTC')::date, count(*) "
            "FROM fraud_predictions GROUP BY 1, 2 "
            "ON CONFLICT (terminal_id, day) DO UPDATE SET tx_count = excluded.tx_count"
        )
    conn.commit()


_REASONS = [
    {"feature": "card_amount_ratio_30d", "value": 6.2, "contribution": 1.9,
     "text": "amount 6.2× the card's 30-day mean"},
    {"feature": "card_tx_count_1h", "value": 4.0, "contribution": 0.8,
     "text": "4 transactions on the card in the last hour"},
    {"feature": "terminal_risk_7d", "value": 0.3, "contribution": 0.5,
     "text": "30 % of the terminal's recent transactions were fraud"},
]  # fmt: skip
_REASONS_TEXT = json.dumps(_REASONS, ensure_ascii=False)


def _predictions(
    rng: np.random.Generator, first: int, n: int, days: int | None, *, text: bool = False
) -> pd.DataFrame:
    """``n`` prediction rows as the engine writes them (``PREDICTION_COLUMNS``): spread over
    the last ``days`` days, or happening now; with ``text``, feature vectors as array literals
    (for ``COPY``)."""
    now = pd.Timestamp.now(tz="UTC")
    if days is None:
        event = now - pd.to_timedelta(rng.gamma(2.0, 30.0, n), unit="ms")
    else:
        offsets = np.sort(rng.integers(0, days * 86_400_000_000, n))
        event = now - pd.Timedelta(days=days) + pd.to_timedelta(offsets, unit="us")
    scores = rng.beta(0.6, 12.0, n)
    decision = np.where(scores > 0.67, "decline", np.where(scores > 0.32, "review", "approve"))
    flagged = decision != "approve"
    frame = pd.DataFrame(
        {
            "tx_id": [f"g-{i:012d}" for i in range(first, first + n)],
            "event_time": event,
            "card_id": [f"C{c:07d}" for c in rng.integers(0, _CARD_POPULATION, n)],
            "terminal_id": [f"T{t:07d}" for t in rng.integers(0, _TERMINAL_POPULATION, n)],
            "amount": np.round(rng.gamma(2.0, 30.0, n), 2),
            "score": scores,
            "decision": decision,
            "rule_hits": [[] for _ in range(n)],
            "reasons": [_REASONS if f else [] for f in flagged],
            "model_version": "m-bench",
            "engine": "local",
            "kafka_partition": rng.integers(0, 4, n),
            "kafka_offset": np.arange(first, first + n),
            "kafka_time": event + pd.Timedelta(milliseconds=2),
            "scored_at": event + pd.Timedelta(milliseconds=30),
            **engine_columns(rng, n, text=text),
        }
    )
    return frame[list(COLUMNS)]

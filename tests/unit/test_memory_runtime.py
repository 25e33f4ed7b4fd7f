"""The in-memory runtime: however its logs are cut into batches, and whatever aborts and
rebalances happen on the way, it stores the same rows as the training features give."""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from msgspec.structs import replace

from fraudstream.engines.step import Decoded, StepResult
from fraudstream.features import FEATURE_NAMES, history_features
from fraudstream.model.data import frauds_for_features
from fraudstream.policy import default_rules
from fraudstream.schema import encode
from fraudstream.simulator.generator import generate, preset
from fraudstream.simulator.history import labels_from_history
from fraudstream.simulator.publish import LabelRows, TransactionRows
from fraudstream.testing import ABORT, REBALANCE, MemoryMessage, MemoryRuntime

from .step_kit import FakeScorer, transaction

NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)
PARTITIONS = 2
DAY = timedelta(days=1)


@dataclass(frozen=True)
class Stream:
    transactions: pd.DataFrame
    logs: dict[int, list[MemoryMessage]]
    labels: list[bytes]
    hostile: dict[tuple[int, int], str]  # (partition, offset) -> what its dead letter says
    late: list[str]  # valid records days older than their neighbours


def _partition(card_id: str) -> int:
    return zlib.crc32(card_id.encode()) % PARTITIONS  # stable, unlike hash()


@pytest.fixture(scope="module")
def stream() -> Stream:
    frame = generate(preset("handbook", n_customers=30, n_terminals=60, days=12, seed=11))
    rows = TransactionRows(frame)
    logs: dict[int, list[MemoryMessage]] = {p: [] for p in range(PARTITIONS)}
    hostile: dict[tuple[int, int], str] = {}
    late: list[str] = []
    for index in range(len(rows)):
        record = rows.record(index)
        stamp = int(record.event_time.timestamp() * 1000)
        partition = _partition(record.card_id)
        logs[partition].append(MemoryMessage(encode(record), record.card_id.encode(), stamp))
        if index in (len(rows) * 4 // 10, len(rows) * 5 // 10, len(rows) * 6 // 10):
            # A valid record three days behind the stream, on a card of its own and a busy
            # terminal: stored, flagged late, and never counted in terminal activity.
            old = replace(
                record, tx_id=f"late-{index}", card_id=f"late-card-{index}",
                event_time=record.event_time - 3 * DAY,
            )  # fmt: skip
            late.append(old.tx_id)
            logs[_partition(old.card_id)].append(MemoryMessage(encode(old), None, stamp))
        if index == len(rows) // 3:  # the first record sent again, as it was
            first = rows.record(0)
            home = _partition(first.card_id)
            hostile[home, len(logs[home])] = "replay: tx_id"
            logs[home].append(MemoryMessage(encode(first), first.card_id.encode(), stamp))
        if index == len(rows) // 2:  # a reused tx_id, other content; then garbage
            reused = json.loads(encode(rows.record(1)))
            reused["amount"] += 1
            hostile[partition, len(logs[partition])] = "duplicate tx_id with different content"
            logs[partition].append(MemoryMessage(json.dumps(reused).encode(), None, stamp))
            hostile[partition, len(logs[partition])] = "not valid JSON"
            logs[partition].append(MemoryMessage(b"\x00{", None, stamp))
    labels = labels_from_history(frame)
    label_rows = LabelRows(labels)
    label_log = [encode(label_rows.record(i)) for i in range(len(labels))]
    assert len(label_log) > 20 and all(len(log) > 100 for log in logs.values())
    return Stream(frame, logs, label_log, hostile, late)


class Recording(MemoryRuntime):
    """Counts the rows each step stored again (messages read again after an abort)."""

    redelivered = 0

    def commit(self, items: list[Decoded], result: StepResult) -> None:
        self.redelivered += len(result.redelivered)
        super().commit(items, result)


def _run(
    stream: Stream, *, seed: int, batch_sizes: tuple[int, int], markers: Mapping[int, str]
) -> Recording:
    runtime = Recording(
        stream.logs, stream.labels, scorer=FakeScorer(), rules=default_rules(),  # type: ignore[arg-type]
        now=NOW, lateness=timedelta(hours=1), batch_sizes=batch_sizes, snapshot_every=3,
        seed=seed,
    )  # fmt: skip
    runtime.run(markers)
    return runtime


def _stored(runtime: MemoryRuntime) -> pd.DataFrame:
    frame = runtime.sink.frame()
    features = pd.DataFrame(
        np.vstack(frame["features"].to_numpy()), columns=list(FEATURE_NAMES), index=frame.index
    )
    return features.assign(
        score=frame["score"], decision=frame["decision"], late=frame["late"].astype(bool),
        partition=frame["kafka_partition"].astype(int), offset=frame["kafka_offset"].astype(int),
        rule_hits=frame["rule_hits"].map(tuple), reasons=frame["reasons"].map(json.dumps),
    )  # fmt: skip


def _letters(runtime: MemoryRuntime) -> dict[tuple[int, int], str]:
    return {(p, o): letter.reason for (_, p, o), letter in runtime.sink.dead_letters.items()}


def test_any_cuts_aborts_and_rebalances_store_the_same_rows(stream: Stream) -> None:
    baseline = _run(stream, seed=1, batch_sizes=(50, 400), markers={})
    expected = _stored(baseline)

    # The reference: the training features of the whole history (what the model learnt on).
    txs = stream.transactions
    reference = history_features(txs, frauds_for_features(txs, labels_from_history(txs)))
    reference = reference.set_axis(txs["tx_id"].to_numpy()).sort_index()
    assert sorted(expected.index) == sorted([*reference.index, *stream.late])
    pd.testing.assert_frame_equal(
        expected.loc[reference.index, list(FEATURE_NAMES)], reference, check_exact=True,
        check_names=False,
    )  # fmt: skip
    assert (expected["terminal_risk_7d_delayed"] > 0).any()  # labels reached the tables
    assert list(expected.index[expected["late"]]) == stream.late
    assert set(expected["decision"]) >= {"approve", "review"}

    flagged = expected.index[expected["decision"] != "approve"]
    assert sorted(set(baseline.sink.alerts)) == list(flagged)
    letters = _letters(baseline)
    assert set(letters) == set(stream.hostile)
    for where, reason in stream.hostile.items():
        assert reason in letters[where]

    schedules = [
        (2, (1, 40), {n: (ABORT if n % 2 else REBALANCE) for n in range(3, 200, 4)}),
        (3, (1, 9), {n: (REBALANCE if n % 3 else ABORT) for n in range(2, 400, 7)}),
    ]
    for seed, batch_sizes, markers in schedules:
        runtime = _run(stream, seed=seed, batch_sizes=batch_sizes, markers=markers)
        assert runtime.redelivered > 0  # aborts really lost work that was done again
        pd.testing.assert_frame_equal(_stored(runtime), expected, check_exact=True)
        assert _letters(runtime) == letters
        assert set(runtime.sink.alerts) == set(baseline.sink.alerts)
        assert runtime.sink.tables.keys() == baseline.sink.tables.keys()
        for day, table in runtime.sink.tables.items():
            pd.testing.assert_frame_equal(table.frame, baseline.sink.tables[day].frame)


@pytest.mark.parametrize("marker", [ABORT, REBALANCE])
def test_a_restart_keeps_the_watermark_a_late_record_is_judged_by(marker: str) -> None:
    """One record a batch, a snapshot after each: the late record is the first one read after
    the restart, and only the restored watermark can tell it is late."""
    noon = datetime(2026, 3, 10, 12, tzinfo=timezone.utc)
    times = [noon, noon + timedelta(minutes=5), noon - timedelta(hours=3)]
    log = [
        MemoryMessage(encode(transaction(f"t{n}", when, card=f"c{n}")))
        for n, when in enumerate(times)
    ]
    runtime = MemoryRuntime(
        {0: log}, [], scorer=FakeScorer(), rules=default_rules(), now=NOW,  # type: ignore[arg-type]
        batch_sizes=(1, 1), snapshot_every=1,
    )  # fmt: skip
    runtime.run({2: marker})
    stored = runtime.sink.frame()
    assert stored["late"].to_dict() == {"t0": False, "t1": False, "t2": True}
    assert runtime.partitions[0].watermark == int(pd.Timestamp(times[1]).value // 1000)

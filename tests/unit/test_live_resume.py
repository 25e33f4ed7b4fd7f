"""A live simulation stopped and started again continues its stream: no transaction id twice,
time going on, and the labels the first run still owed are sent by the second. Any other run (a
second simulator beside it, ``--from-start``, a history) sends ids of its own."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from datetime import datetime, timezone
from itertools import islice, pairwise
from pathlib import Path

import pandas as pd
import pytest

from fraudstream.clock import ManualClock, SystemClock
from fraudstream.schema import Label, Transaction
from fraudstream.simulator.generator import generate, generate_blocks, preset
from fraudstream.simulator.publish import (
    AcknowledgedPrefix,
    ResumePoint,
    _Buffer,
    simulate_live,
)
from fraudstream.simulator.resume import ResumeFile, start_live

PARAMS = preset("default", n_customers=300, n_terminals=600, seed=5)


class Recorder:
    """Stands in for the Kafka publisher: keeps what would have been sent, and stops the run
    (as SIGTERM would) once it has ``limit`` transactions. Like SIGTERM, the stop takes effect
    after the batch being sent, so a run sends up to a batch more than ``limit``; how much more
    depends on the timing."""

    def __init__(self, limit: int, stop: threading.Event) -> None:
        self.limit, self.stop = limit, stop
        self.transactions: list[Transaction] = []
        self.labels: list[Label] = []

    def send_transaction(self, record: Transaction) -> None:
        self.transactions.append(record)
        if len(self.transactions) >= self.limit:
            self.stop.set()

    def send_label(self, label: Label) -> None:
        self.labels.append(label)

    @property
    def produced(self) -> int:
        return len(self.transactions) + len(self.labels)

    @property
    def acknowledged(self) -> int:
        return self.produced

    def poll(self) -> None: ...

    def flush(self) -> None: ...


def _run(
    limit: int, resume: ResumePoint | None, saved: list[ResumePoint], stream: str | None = None
) -> Recorder:
    """An endless accelerated run (a month of simulated history, then live), stopped early."""
    stop = threading.Event()
    recorder = Recorder(limit, stop)
    simulate_live(
        recorder,  # type: ignore[arg-type]
        PARAMS, rate=100_000, clock=SystemClock(), accelerated=True, stop=stop,
        resume=resume, checkpoint=saved.append, stream=stream,
    )  # fmt: skip
    return recorder


def test_a_resumed_run_continues_the_stream_instead_of_repeating_it(tmp_path: Path) -> None:
    saved: list[ResumePoint] = []
    first = _run(2_500, None, saved)
    assert saved[-1].sent == len(first.transactions) >= 2_500
    stream = saved[-1].stream
    resume_file = ResumeFile(tmp_path, PARAMS, accelerated=True)
    resume_file.save(saved[-1])
    second = _run(3_500, resume_file.load(), saved)
    both = first.transactions + second.transactions
    assert saved[-1].sent == len(both) and saved[-1].stream == stream
    # The same stream as one uninterrupted run. It may send more than len(both) (see Recorder),
    # so it is compared up to the len(both)-th transaction.
    whole = _run(len(both), None, [], stream=stream)
    prefix = whole.transactions[: len(both)]
    # Nothing twice, nothing skipped.
    assert [t.tx_id for t in both] == [t.tx_id for t in prefix]
    assert all(t.tx_id.startswith(f"s5-{stream}-") for t in both)
    assert [(t.card_id, t.amount) for t in both] == [(t.card_id, t.amount) for t in prefix]
    # Simulated time goes on where the first run stopped.
    assert second.transactions[0].event_time >= first.transactions[-1].event_time
    # Labels the first run still owed come from the second; none twice, none missing: exactly
    # the labels the uninterrupted run sent by the time of its len(both)-th transaction.
    labels = [label.tx_id for label in first.labels + second.labels]
    assert len(labels) == len(set(labels)) > 0
    due = {label.tx_id for label in whole.labels if label.reported_at <= prefix[-1].event_time}
    assert set(labels) == due


class SlowBroker(Recorder):
    """Acknowledges what was produced three polls ago, and keeps the order of what was sent
    and the flushes."""

    def __init__(self, limit: int, stop: threading.Event) -> None:
        super().__init__(limit, stop)
        self.sent_kinds: list[str] = []
        self.flushes: list[int] = []  # the count produced at each flush
        self._polled: list[int] = [0, 0, 0]
        self._acknowledged = 0

    def send_transaction(self, record: Transaction) -> None:
        self.sent_kinds.append("transaction")
        super().send_transaction(record)

    def send_label(self, label: Label) -> None:
        self.sent_kinds.append("label")
        super().send_label(label)

    @property
    def acknowledged(self) -> int:
        return self._acknowledged

    def poll(self) -> None:
        self._polled.append(self.produced)
        self._acknowledged = self._polled.pop(0)

    def flush(self) -> None:
        self.flushes.append(self.produced)
        self._acknowledged = self.produced


def test_a_resume_point_waits_for_acknowledgements_without_holding_up_the_stream() -> None:
    """A flush every few seconds stalled the sender until the broker answered (CI saw a live
    rate of 500/s fall 7 % short). Resume points must still only count acknowledged messages."""
    clock = ManualClock(datetime(2026, 11, 1, tzinfo=timezone.utc))
    stop = threading.Event()
    broker = SlowBroker(600, stop)
    saved: list[tuple[ResumePoint, int]] = []  # with the transactions acknowledged by then

    def save(point: ResumePoint) -> None:
        acknowledged = broker.sent_kinds[: broker.acknowledged].count("transaction")
        saved.append((point, acknowledged))

    simulate_live(
        broker,  # type: ignore[arg-type]
        PARAMS, rate=50, clock=clock, count=600, stop=stop, checkpoint=save,
    )  # fmt: skip
    assert broker.flushes == [broker.produced]  # once, at the end: never mid-stream
    assert len(saved) >= 3  # every ~5 s of the 12 s, and the last
    for point, acknowledged in saved:
        assert point.sent <= acknowledged
    assert saved[-1][0].sent == len(broker.transactions) == 600
    # Taken on time: each point at least 5 s of traffic after the one before.
    sent = [point.sent for point, _ in saved]
    assert all(later - earlier >= 250 for earlier, later in pairwise(sent[:-1]))


def test_the_stream_is_the_same_whatever_its_rows_are_converted_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The simulator converts a block's rows for sending a chunk at a time: chunk and block
    boundaries (here 3,802 rows a block) must change nothing that is sent."""

    def sent(chunk_rows: int) -> Recorder:
        monkeypatch.setattr(_Buffer, "_CHUNK_ROWS", chunk_rows)
        clock = ManualClock(datetime(2026, 11, 1, tzinfo=timezone.utc))
        recorder = Recorder(10**9, threading.Event())
        simulate_live(
            recorder,  # type: ignore[arg-type]
            PARAMS, rate=50_000, clock=clock, count=9_000, accelerated=True, stream="r0",
        )  # fmt: skip
        return recorder

    whole, cut = sent(20_000), sent(777)
    assert len(whole.transactions) == 9_000 and len(whole.labels) > 0
    assert whole.transactions == cut.transactions  # every field, event times included
    assert whole.labels == cut.labels
    # Accelerated, simulated time moves onto the wall clock as it was generated.
    generated = pd.concat(islice(generate_blocks(PARAMS.live("r0")), 3)).iloc[:9_000]
    assert [t.tx_id for t in whole.transactions] == generated["tx_id"].tolist()
    sent_times = pd.Series([t.event_time for t in whole.transactions])
    offsets = (generated["event_time"] - generated["event_time"].iat[0]).to_numpy()
    assert ((sent_times - sent_times.iat[0]).to_numpy() == offsets).all()


def test_acknowledgements_in_any_order_give_the_acknowledged_prefix() -> None:
    prefix = AcknowledgedPrefix()
    for serial, expected in [(1, 0), (3, 0), (0, 2), (2, 4), (4, 5), (6, 5), (5, 7)]:
        prefix.add(serial)
        assert prefix.count == expected


def test_resume_files_belong_to_one_stream_definition(tmp_path: Path) -> None:
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    point = ResumePoint(10, start, start, "r0123456789")
    ResumeFile(tmp_path, PARAMS, accelerated=True).save(point)
    assert ResumeFile(tmp_path, PARAMS, accelerated=True).load() == point
    assert ResumeFile(tmp_path, PARAMS, accelerated=False).load() is None
    other = preset("default", n_customers=300, n_terminals=600, seed=6)
    assert ResumeFile(tmp_path, other, accelerated=True).load() is None


def test_a_resume_point_saved_before_streams_goes_on_under_a_new_one(tmp_path: Path) -> None:
    # Such a stream's ids (s5-000000123) were the same in every state directory.
    resume_file = ResumeFile(tmp_path, PARAMS, accelerated=True)
    resume_file.path.parent.mkdir(parents=True)
    start = "2026-11-01T00:00:00+00:00"
    resume_file.path.write_text(json.dumps({"sent": 10, "origin_wall": start, "origin_sim": start}))
    point = resume_file.load()
    assert point is not None and point.sent == 10 and point.stream.startswith("r")


def test_two_runs_never_send_the_same_transaction_id(tmp_path: Path) -> None:
    """The service's simulator, a second one beside it with the same settings and state
    directory, one with other settings (not accelerated), ``--from-start``, the service
    restarted, and a shell's simulator with a state directory of its own."""
    service = start_live(tmp_path, PARAMS, True)
    assert service.resume is None and service.checkpoint is not None
    saved: list[ResumePoint] = []
    sent = {"service": _run(1_000, None, saved, service.stream)}
    service.checkpoint(saved[-1])
    beside = start_live(tmp_path, PARAMS, True)  # the service still runs: its point is not free
    assert beside.checkpoint is None and beside.resume is None
    sent["beside"] = _run(1_000, None, [], beside.stream)
    sent["service, going on"] = _run(1_000, saved[-1], saved)
    service.checkpoint(saved[-1])
    not_accelerated = start_live(tmp_path, PARAMS, False)  # another resume point, free
    assert not_accelerated.checkpoint is not None and not_accelerated.resume is None
    sent["not accelerated"] = _run(1_000, None, [], not_accelerated.stream)
    not_accelerated.release()
    elsewhere = start_live(tmp_path / "elsewhere", PARAMS, True)
    sent["elsewhere"] = _run(1_000, None, [], elsewhere.stream)
    service.release()
    restarted = start_live(tmp_path, PARAMS, True)  # continues the service's stream
    assert restarted.stream == service.stream and restarted.resume == saved[-1]
    sent["restarted"] = _run(1_000, restarted.resume, [])
    restarted.release()
    from_start = start_live(tmp_path, PARAMS, True, from_start=True)
    assert from_start.resume is None and from_start.stream != service.stream
    sent["from start"] = _run(1_000, None, [], from_start.stream)
    for start in (elsewhere, from_start):
        start.release()
    ids = [t.tx_id for run in sent.values() for t in run.transactions]
    # The histories of the same seed: with these settings, and with others.
    for history in (replace(PARAMS, days=3), replace(PARAMS, days=3, n_customers=301)):
        ids += list(generate(history)["tx_id"])
    assert len(ids) == len(set(ids)), "two runs sent the same transaction id"
    # The same traffic, though: a new stream is the simulation from its beginning.
    assert sent["beside"].transactions[0].card_id == sent["service"].transactions[0].card_id

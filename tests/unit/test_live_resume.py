"""A live simulation stopped and started again continues its stream: no transaction id twice,
time going on, and the labels the first run still owed are sent by the second."""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from pathlib import Path

from fraudstream.clock import SystemClock
from fraudstream.schema import Label, Transaction
from fraudstream.simulator.generator import preset
from fraudstream.simulator.publish import ResumePoint, simulate_live
from fraudstream.simulator.resume import ResumeFile

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

    def poll(self) -> None: ...

    def flush(self) -> None: ...


def _run(limit: int, resume: ResumePoint | None, saved: list[ResumePoint]) -> Recorder:
    """An endless accelerated run (a month of simulated history, then live), stopped early."""
    stop = threading.Event()
    recorder = Recorder(limit, stop)
    simulate_live(
        recorder,  # type: ignore[arg-type]
        PARAMS, rate=100_000, clock=SystemClock(), accelerated=True, stop=stop,
        resume=resume, checkpoint=saved.append,
    )  # fmt: skip
    return recorder


def test_a_resumed_run_continues_the_stream_instead_of_repeating_it(tmp_path: Path) -> None:
    saved: list[ResumePoint] = []
    first = _run(2_500, None, saved)
    assert saved[-1].sent == len(first.transactions) >= 2_500
    resume_file = ResumeFile(tmp_path, PARAMS, accelerated=True)
    resume_file.save(saved[-1])
    second = _run(3_500, resume_file.load(), saved)
    both = first.transactions + second.transactions
    assert saved[-1].sent == len(both)
    # The same stream as one uninterrupted run. It may send more than len(both) (see Recorder),
    # so it is compared up to the len(both)-th transaction.
    whole = _run(len(both), None, [])
    prefix = whole.transactions[: len(both)]
    # Nothing twice, nothing skipped.
    assert [t.tx_id for t in both] == [t.tx_id for t in prefix]
    assert [(t.card_id, t.amount) for t in both] == [(t.card_id, t.amount) for t in prefix]
    # Simulated time goes on where the first run stopped.
    assert second.transactions[0].event_time >= first.transactions[-1].event_time
    # Labels the first run still owed come from the second; none twice, none missing: exactly
    # the labels the uninterrupted run sent by the time of its len(both)-th transaction.
    labels = [label.tx_id for label in first.labels + second.labels]
    assert len(labels) == len(set(labels)) > 0
    due = {label.tx_id for label in whole.labels if label.reported_at <= prefix[-1].event_time}
    assert set(labels) == due


def test_resume_files_belong_to_one_stream_definition(tmp_path: Path) -> None:
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    point = ResumePoint(10, start, start)
    ResumeFile(tmp_path, PARAMS, accelerated=True).save(point)
    assert ResumeFile(tmp_path, PARAMS, accelerated=True).load() == point
    assert ResumeFile(tmp_path, PARAMS, accelerated=False).load() is None
    other = preset("default", n_customers=300, n_terminals=600, seed=6)
    assert ResumeFile(tmp_path, other, accelerated=True).load() is None

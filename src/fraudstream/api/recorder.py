"""Degraded answers into ``degraded_decisions``, off the request path.

A degraded answer is given at the end of the budget; writing it to PostgreSQL then would
make the payment wait longer. A thread stores what queued up, in one statement, every
``_EVERY_S``; while the database is away they wait in memory (bounded, oldest dropped with
a log line) and are stored once it is back.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg

from fraudstream.schema import Transaction
from fraudstream.store.db import HeldConnection

if TYPE_CHECKING:
    from fraudstream.api.decisions import DecisionOut

__all__ = ["DegradedRecorder"]

log = logging.getLogger("fraudstream.api")

_EVERY_S = 0.2
_KEPT = 100_000
_INSERT = """
INSERT INTO degraded_decisions
    (tx_id, card_id, amount, decision, rule_hits, reason, stale, missing, rules_version,
     api_key, answered_at, decision_ms)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (tx_id) DO NOTHING
"""


class DegradedRecorder:
    def __init__(self, connect: Callable[[], psycopg.Connection[Any]]) -> None:
        self._connect = connect
        self._queue: deque[tuple[object, ...]] = deque(maxlen=_KEPT)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="degraded", daemon=True)
        self.stored = 0

    def start(self) -> None:
        self._thread.start()

    def record(self, record: Transaction, answer: DecisionOut, key_name: str | None) -> None:
        if len(self._queue) == self._queue.maxlen:
            log.error("degraded answers not stored for long: dropping the oldest")
        self._queue.append(
            (
                record.tx_id, record.card_id, record.amount, answer.decision, answer.rule_hits,
                answer.degraded_reason, answer.stale, answer.missing, answer.rules_version,
                key_name, answer.decided_at, answer.decision_ms,
            )
        )  # fmt: skip

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        connection = HeldConnection(self._connect)
        while True:
            stopping = self._stop.wait(_EVERY_S)
            rows = list(self._queue)
            if rows:
                try:
                    with connection() as conn, conn.cursor() as cursor:
                        cursor.executemany(_INSERT, rows)
                        conn.commit()
                    for _ in rows:
                        self._queue.popleft()
                    self.stored += len(rows)
                except Exception as error:  # the database away, or its settings unreadable
                    log.warning("storing %d degraded answers: %s; retrying", len(rows), error)
                    self._stop.wait(1.0)
            if stopping:
                break
        connection.close()

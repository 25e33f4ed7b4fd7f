"""The I/O ceiling: what this broker and this database move when a consumer does nothing but
decode the messages and COPY them into PostgreSQL.

It reads the engine's backlog in batches as the engine does (same consumer settings, up to
``engine.batch_max_messages`` at a time), decodes and validates each message with the
engine's own decoder, and stores each batch with one binary COPY into a table keyed by
``tx_id`` (the columns of the transaction a prediction keeps, no features, score or
decision), one transaction per batch. No features, no model, no exactly-once bookkeeping: the
engine can only be slower, and engine ÷ ceiling says how much of the box's I/O it uses.
Measured like the engine: rows stored, first to last stored row.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from confluent_kafka import Consumer

from fraudstream.config import Settings
from fraudstream.schema import Invalid, decode_transaction
from fraudstream.store.db import connect

__all__ = ["IOCeiling"]

_TABLE = """
CREATE TABLE IF NOT EXISTS ceiling_transactions (
    tx_id text PRIMARY KEY, event_time timestamptz NOT NULL, card_id text NOT NULL,
    terminal_id text NOT NULL, amount double precision NOT NULL, kafka_partition integer NOT NULL,
    kafka_offset bigint NOT NULL, stored_at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""
_COPY = (
    "COPY ceiling_transactions (tx_id, event_time, card_id, terminal_id, amount, "
    "kafka_partition, kafka_offset) FROM STDIN (FORMAT BINARY)"
)
_TYPES = ["text", "timestamptz", "text", "text", "float8", "int4", "int8"]


class IOCeiling:
    """Decode and COPY, nothing else."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.consumer = Consumer(
            {
                **settings.kafka.client_config(),
                "group.id": settings.engine.group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 10,
                "log_level": 3,
            }
        )
        self.conn = connect(settings)
        self.conn.execute(_TABLE)
        self.conn.commit()
        self.cpu_s = 0.0  # this process's CPU while draining

    def run(self, limit: int, timeout_s: float = 600.0) -> int:
        """Drain until ``limit`` transactions are stored (or ``timeout_s`` passes)."""
        self.consumer.subscribe([self.settings.kafka.topics.transactions])
        stored = 0
        deadline = time.monotonic() + timeout_s
        cpu_started = time.process_time()
        batch = self.settings.engine.batch_max_messages
        try:
            while stored < limit and time.monotonic() < deadline:
                messages = self.consumer.consume(batch, 0.05)
                if not messages:
                    continue
                now = datetime.now(timezone.utc)
                rows = []
                for message in messages:
                    if message.error():
                        continue
                    record = decode_transaction(message.value() or b"", now=now)
                    if isinstance(record, Invalid):
                        continue
                    rows.append(
                        (
                            record.tx_id,
                            record.event_time,
                            record.card_id,
                            record.terminal_id,
                            record.amount,
                            message.partition(),
                            message.offset(),
                        )
                    )
                with self.conn.cursor() as cursor, cursor.copy(_COPY) as copy:
                    copy.set_types(_TYPES)
                    for row in rows:
                        copy.write_row(row)
                self.conn.commit()
                stored += len(rows)
        finally:
            self.cpu_s = time.process_time() - cpu_started
            self.consumer.close()
        return stored

    def close(self) -> None:
        self.conn.close()

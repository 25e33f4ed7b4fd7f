"""An engine's health as the dashboard and ``fraudstream status`` read it: one
``engine_status`` row per engine process, and the same figures in the log."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

import numpy as np
import psycopg

__all__ = ["StatusReporter"]

log = logging.getLogger("fraudstream.engine")


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
                "late_total, duplicates_total, started_at, heartbeat_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now()) "
                "ON CONFLICT (engine_id) DO UPDATE SET model_version = excluded.model_version, "
                "partitions = excluded.partitions, throughput_tps = excluded.throughput_tps, "
                "lag = excluded.lag, batch_ms_p50 = excluded.batch_ms_p50, "
                "batch_ms_p99 = excluded.batch_ms_p99, dlq_total = excluded.dlq_total, "
                "late_total = excluded.late_total, "
                "duplicates_total = excluded.duplicates_total, heartbeat_at = now()",
                (
                    self.engine_id, self.engine, self.group, model_version, partitions,
                    throughput, lag, p50, p99, stats.rejected, stats.late,
                    stats.replays + stats.conflicts, self.started_at,
                ),
            )  # fmt: skip
        log.info(
            "%.0f tx/s, lag %s, batch p50 %s ms; scored %d, stored %d, rejected %d "
            "(duplicates %d), late %d, alerts %d",
            throughput, "?" if lag is None else lag, "-" if p50 is None else f"{p50:.1f}",
            stats.scored, stats.stored, stats.rejected, stats.replays + stats.conflicts,
            stats.late, stats.alerts,
        )  # fmt: skip

"""Records an engine has read but must score later, kept durably beside its predictions
(the Spark engine's checkpoint moves past them; see migration 0006)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg

__all__ = ["DeferredRow", "load_deferred", "replace_deferred"]


@dataclass(frozen=True)
class DeferredRow:
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    kafka_time_ms: int | None
    card_features: np.ndarray


def load_deferred(conn: psycopg.Connection[Any], group: str, topic: str) -> list[DeferredRow]:
    with conn.cursor(binary=True) as cursor:
        rows = cursor.execute(
            'SELECT partition, "offset", key, value, kafka_time_ms, card_features '
            "FROM deferred_rows WHERE consumer_group = %s AND topic = %s ORDER BY 1, 2",
            (group, topic),
        ).fetchall()
    conn.commit()
    return [
        DeferredRow(
            int(p), int(o), None if k is None else bytes(k), bytes(v), t,
            np.array(f, dtype=float),
        )
        for p, o, k, v, t, f in rows
    ]  # fmt: skip


def replace_deferred(
    conn: psycopg.Connection[Any], group: str, topic: str, rows: Sequence[DeferredRow]
) -> None:
    """The group's deferred records become ``rows`` (the others were scored)."""
    with conn.transaction():
        conn.execute(
            "DELETE FROM deferred_rows WHERE consumer_group = %s AND topic = %s", (group, topic)
        )
        if rows:
            conn.cursor().executemany(
                'INSERT INTO deferred_rows (consumer_group, topic, partition, "offset", key, '
                "value, kafka_time_ms, card_features) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (group, topic, r.partition, r.offset, r.key, r.value, r.kafka_time_ms,
                     [float(x) for x in r.card_features])
                    for r in rows
                ],
            )  # fmt: skip

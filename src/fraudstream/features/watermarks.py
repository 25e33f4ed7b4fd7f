"""Event-time progress of the transactions topic, and the rule that makes terminal features a
pure function of the input logs (docs/adr/0004-deterministic-terminal-tables.md).

A partition's *watermark* is the newest event time among its records so far. A record more
than the allowed lateness behind the watermark before it is *late*: it is scored like any
other, but never counted in terminal activity. The table of day D counts transactions of days
up to D − 2; it may be sealed once every partition's watermark has passed
``counting_horizon(D)`` — from then on, no record that is not late can still add to it — or
once a partition has nothing left to read (it is then named in the table as idle).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import numpy as np

__all__ = [
    "NO_WATERMARK",
    "PartitionProgress",
    "counting_horizon",
    "late_rows",
    "sealable",
]

NO_WATERMARK = np.iinfo(np.int64).min
"""The watermark of a partition that has seen nothing (µs since the epoch)."""

_DAY_US = 86_400 * 1_000_000


def counting_horizon(day: np.datetime64, lateness: timedelta) -> int:
    """µs since the epoch: when every partition's watermark is past it, all transactions the
    table of ``day`` counts (event days up to ``day`` − 2) that are not late have been seen."""
    first: int = np.asarray(day).astype("datetime64[D]").astype(np.int64).item()
    return (first - 1) * _DAY_US + int(lateness.total_seconds() * 1_000_000)


@dataclass(frozen=True)
class PartitionProgress:
    """What is durably known of one transactions partition."""

    next_offset: int  # the next offset to process (after the stored rows)
    watermark: int  # µs; NO_WATERMARK before the first record
    end_offset: int  # the log's end when asked (high watermark)


def sealable(
    day: np.datetime64, partitions: Mapping[int, PartitionProgress], lateness: timedelta
) -> tuple[bool, list[int]]:
    """Whether the table of ``day`` may be built now, and which partitions are idle for it
    (nothing left to read, their watermark still short of the horizon)."""
    horizon = counting_horizon(day, lateness)
    idle = []
    for partition, progress in sorted(partitions.items()):
        if progress.watermark >= horizon:
            continue
        if progress.next_offset >= progress.end_offset:
            idle.append(partition)
            continue
        return False, []
    return True, idle


def late_rows(
    partitions: np.ndarray, event_us: np.ndarray, watermarks: dict[int, int], lateness_us: int
) -> np.ndarray:
    """Late flags for a batch (rows in log order per partition), advancing ``watermarks`` (µs
    per partition) past it. A row is late when it is more than ``lateness_us`` older than the
    newest event time of its partition before it."""
    late = np.zeros(len(event_us), dtype=bool)
    for partition in np.unique(partitions):
        rows = np.flatnonzero(partitions == partition)
        times = event_us[rows]
        start = watermarks.get(int(partition), NO_WATERMARK)
        running = np.maximum.accumulate(np.concatenate([[start], times]))
        before = running[:-1]
        late[rows] = (before != NO_WATERMARK) & (times < before - lateness_us)
        watermarks[int(partition)] = int(running[-1])
    return late

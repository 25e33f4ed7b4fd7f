"""History files: simulated transactions with their labels, as one Parquet file.

Each row is a transaction; ``is_fraud``, ``scenario`` and ``label_reported_at`` (null when the
fraud is never reported, or the transaction is legitimate) carry its outcome, so the labels
file and the transactions can never disagree. The simulation parameters travel in the file's
metadata, so a history says how it was made.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fraudstream.simulator.generator import (
    BLOCK_DAYS,
    HISTORY_COLUMNS,
    SimulationParams,
    generate_blocks,
    params_json,
)

__all__ = [
    "HISTORY_SCHEMA",
    "HistorySummary",
    "history_metadata",
    "labels_from_history",
    "simulate_history",
    "write_history",
]

HISTORY_SCHEMA = pa.schema(
    [
        ("tx_id", pa.string()),
        ("event_time", pa.timestamp("us", tz="UTC")),
        ("card_id", pa.string()),
        ("terminal_id", pa.string()),
        ("amount", pa.float64()),
        ("currency", pa.string()),
        ("merchant_category", pa.string()),
        ("channel", pa.string()),
        ("customer_x", pa.float64()),
        ("customer_y", pa.float64()),
        ("terminal_x", pa.float64()),
        ("terminal_y", pa.float64()),
        ("is_fraud", pa.bool_()),
        ("scenario", pa.string()),
        ("label_reported_at", pa.timestamp("us", tz="UTC")),
    ]
)
_META_KEY = b"fraudstream.simulation"
assert tuple(HISTORY_SCHEMA.names) == HISTORY_COLUMNS


def write_history(
    blocks: Iterable[pd.DataFrame],
    path: Path,
    params: SimulationParams,
    on_block: Callable[[pd.DataFrame], None] = lambda _block: None,
) -> int:
    """Stream blocks into one Parquet file (written to a temporary name, then renamed)."""
    schema = HISTORY_SCHEMA.with_metadata({_META_KEY: params_json(params).encode()})
    partial = path.with_name(path.name + ".partial")
    rows = 0
    # Fixed writer options and no wall-clock metadata: the same seed gives identical bytes.
    with pq.ParquetWriter(partial, schema, compression="zstd", write_statistics=True) as writer:
        for block in blocks:
            table = pa.Table.from_pandas(
                block[list(HISTORY_COLUMNS)], schema=schema, preserve_index=False
            )
            writer.write_table(table)
            rows += len(block)
            on_block(block)
    partial.replace(path)
    return rows


@dataclasses.dataclass(frozen=True)
class HistorySummary:
    """What a simulated history holds."""

    rows: int
    frauds: int
    scenarios: dict[str, int]  # fraud scenario → its transactions


def simulate_history(
    params: SimulationParams, path: Path, on_days: Callable[[int], None] = lambda _days: None
) -> HistorySummary:
    """Simulate ``params.days`` days into the history file ``path`` (its folder created if
    needed); ``on_days`` is told how many days each block added."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frauds = days_done = 0
    scenarios: dict[str, int] = {}

    def done(block: pd.DataFrame) -> None:
        nonlocal frauds, days_done
        frauds += int(block["is_fraud"].sum())
        for name, number in block["scenario"].value_counts().items():
            scenarios[str(name)] = scenarios.get(str(name), 0) + int(number)
        days = min(BLOCK_DAYS, params.days - days_done)
        days_done += days
        on_days(days)

    rows = write_history(generate_blocks(params), path, params, on_block=done)
    return HistorySummary(rows=rows, frauds=frauds, scenarios=scenarios)


def history_metadata(path: Path) -> dict[str, Any] | None:
    """The simulation parameters stored in a history file, or None for other Parquet files."""
    metadata = pq.read_schema(path).metadata or {}
    raw = metadata.get(_META_KEY)
    return json.loads(raw) if raw else None


def labels_from_history(frame: pd.DataFrame) -> pd.DataFrame:
    """Label events (reported frauds) in the canonical label columns."""
    reported = frame[frame["is_fraud"] & frame["label_reported_at"].notna()]
    return pd.DataFrame(
        {
            "tx_id": reported["tx_id"].to_numpy(),
            "is_fraud": True,
            "reported_at": reported["label_reported_at"].to_numpy(),
            "source": "simulator",
            "card_id": reported["card_id"].to_numpy(),
            "scenario": reported["scenario"].to_numpy(),
        }
    )

"""Terminal risk from labels as they were known at the time: a lookup table per day.

Labels arrive days late, so the table for day D uses only labels reported by D 00:00 UTC. Its
"delayed" columns look at transactions from [D − delay − w, D − delay) (the Handbook's rule),
its "known" columns at the 7 days before yesterday, [D − 8, D − 1), with whatever has been
reported so far. Only transactions at least a day old are counted, so engines that lag each
other by less than a day build identical tables. The table
changes once a day; every engine instance and the offline trainer use the table of the
transaction's event day, so no transaction ever sees a label reported after it happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fraudstream.features.definitions import (
    KNOWN_FRAUD_WINDOW,
    TERMINAL_DELAY,
    TERMINAL_WINDOWS,
    window_name,
)

__all__ = ["TerminalActivity", "TerminalTable", "count_buckets", "terminal_columns"]

_DELAY_DAYS = TERMINAL_DELAY.days
_KNOWN_DAYS = KNOWN_FRAUD_WINDOW.days
_SETTLED_DAYS = 1


def count_buckets(day: np.datetime64) -> np.ndarray:
    """Day boundaries such that every count window of ``day``'s table is a union of whole
    buckets: transaction counts summed per bucket (dated by its first day) give the same table
    as daily counts, in a few rows per terminal instead of one per day."""
    first_of: Any = np.asarray(day).astype("datetime64[D]")[()]
    delayed = first_of - _DELAY_DAYS
    known_end = first_of - _SETTLED_DAYS
    edges = {delayed, known_end, known_end - _KNOWN_DAYS}
    edges |= {delayed - w.days for w in TERMINAL_WINDOWS}
    return np.array(sorted(edges), dtype="datetime64[D]")


def terminal_columns() -> list[str]:
    columns = []
    for window in TERMINAL_WINDOWS:
        name = window_name(window)
        columns += [f"terminal_tx_count_{name}_delayed", f"terminal_risk_{name}_delayed"]
    known = window_name(KNOWN_FRAUD_WINDOW)
    return [*columns, f"terminal_known_frauds_{known}", f"terminal_known_fraud_rate_{known}"]


@dataclass(frozen=True)
class TerminalTable:
    """Terminal features valid for one UTC day; terminals absent from it get zeros."""

    day: np.datetime64  # datetime64[D]
    frame: pd.DataFrame  # index terminal_id, columns terminal_columns()

    def lookup(self, terminal_ids: pd.Series | np.ndarray) -> dict[str, np.ndarray]:
        found = self.frame.reindex(pd.Index(terminal_ids)).fillna(0.0)
        return {column: found[column].to_numpy(dtype=float) for column in self.frame.columns}


class TerminalActivity:
    """Daily transaction counts per terminal and fraud outcomes with their report times.

    Engines feed it from the database (or as they go); the trainer feeds it a whole history.
    Both then ask for ``table(day)``, which is a pure function of what was fed.
    """

    def __init__(self) -> None:
        self._counts = pd.Series(dtype="int64")  # index (terminal_id, day)
        self._frauds = pd.DataFrame({"terminal_id": [], "tx_day": [], "reported_at": []})

    def add_transactions(self, terminal_ids: pd.Series, event_times: pd.Series) -> None:
        days = (
            pd.to_datetime(event_times, utc=True)
            .dt.tz_localize(None)
            .to_numpy()
            .astype("datetime64[D]")
        )
        counts = (
            pd.Series(1, index=pd.MultiIndex.from_arrays([np.asarray(terminal_ids), days]))
            .groupby(level=[0, 1])
            .sum()
        )
        self._counts = (
            self._counts.add(counts, fill_value=0).astype("int64") if len(self._counts) else counts
        )

    def add_daily_counts(
        self, terminal_ids: np.ndarray, days: np.ndarray, counts: np.ndarray
    ) -> None:
        """Pre-aggregated counts (terminal, UTC day, transactions), e.g. from the database."""
        index = pd.MultiIndex.from_arrays(
            [np.asarray(terminal_ids, dtype=object), np.asarray(days).astype("datetime64[D]")]
        )
        series = pd.Series(np.asarray(counts, dtype="int64"), index=index)
        series = series.groupby(level=[0, 1]).sum()
        self._counts = (
            self._counts.add(series, fill_value=0).astype("int64") if len(self._counts) else series
        )

    def add_frauds(
        self, terminal_ids: pd.Series, event_times: pd.Series, reported_at: pd.Series
    ) -> None:
        """Fraud outcomes (terminal, the transaction's time, when the fraud was reported)."""
        frame = pd.DataFrame(
            {
                "terminal_id": np.asarray(terminal_ids),
                "tx_day": pd.to_datetime(event_times, utc=True)
                .dt.tz_localize(None)
                .to_numpy()
                .astype("datetime64[D]"),
                "reported_at": pd.to_datetime(reported_at, utc=True)
                .dt.tz_localize(None)
                .to_numpy()
                .astype("datetime64[us]"),
            }
        )
        self._frauds = (
            pd.concat([self._frauds, frame], ignore_index=True) if len(self._frauds) else frame
        )

    def table(self, when: np.datetime64) -> TerminalTable:
        day: Any = np.asarray(when).astype("datetime64[D]")[()]
        as_of = day.astype("datetime64[us]")
        counts = self._counts
        columns: dict[str, pd.Series] = {}
        tx_days = (
            counts.index.get_level_values(1).to_numpy().astype("datetime64[D]")
            if len(counts)
            else np.array([], "datetime64[D]")
        )
        frauds = self._frauds
        known = (
            frauds[frauds["reported_at"].to_numpy().astype("datetime64[us]") <= as_of]
            if len(frauds)
            else frauds
        )
        known_days = (
            known["tx_day"].to_numpy().astype("datetime64[D]")
            if len(known)
            else np.array([], "datetime64[D]")
        )
        for window in TERMINAL_WINDOWS:
            first = day - _DELAY_DAYS - window.days
            last = day - _DELAY_DAYS  # exclusive
            n_tx = _sum_by_terminal(counts, (tx_days >= first) & (tx_days < last))
            n_fraud = _count_by_terminal(known, (known_days >= first) & (known_days < last))
            name = window_name(window)
            columns[f"terminal_tx_count_{name}_delayed"] = n_tx
            columns[f"terminal_risk_{name}_delayed"] = (
                n_fraud.reindex(n_tx.index).fillna(0) / n_tx
            ).where(n_tx > 0, 0.0)
        # The known window ends a day before D: every engine has stored those transactions
        # when D starts, so every engine builds the same table.
        end = day - _SETTLED_DAYS
        recent_tx = _sum_by_terminal(counts, (tx_days >= end - _KNOWN_DAYS) & (tx_days < end))
        recent_fraud = _count_by_terminal(
            known, (known_days >= end - _KNOWN_DAYS) & (known_days < end)
        )
        name = window_name(KNOWN_FRAUD_WINDOW)
        columns[f"terminal_known_frauds_{name}"] = recent_fraud
        columns[f"terminal_known_fraud_rate_{name}"] = (
            recent_fraud.reindex(recent_tx.index).fillna(0) / recent_tx
        ).where(recent_tx > 0, 0.0)
        frame = pd.DataFrame(columns).fillna(0.0).astype(float)
        frame = frame.reindex(columns=terminal_columns()).fillna(0.0).sort_index()
        return TerminalTable(day=day, frame=frame)

    def forget_before(self, day: np.datetime64) -> None:
        """Drop activity no table from ``day`` on can use (bounded memory for engines)."""
        oldest = (
            np.asarray(day).astype("datetime64[D]")[()]
            - _DELAY_DAYS
            - max(w.days for w in TERMINAL_WINDOWS)
        )
        if len(self._counts):
            keep = (
                self._counts.index.get_level_values(1).to_numpy().astype("datetime64[D]") >= oldest
            )
            self._counts = self._counts[keep]
        if len(self._frauds):
            self._frauds = self._frauds[
                self._frauds["tx_day"].to_numpy().astype("datetime64[D]") >= oldest
            ]


def _sum_by_terminal(counts: pd.Series, mask: np.ndarray) -> pd.Series:
    if not len(counts) or not mask.any():
        return pd.Series(dtype=float)
    selected = counts[mask]
    return selected.groupby(level=0).sum().astype(float)


def _count_by_terminal(frauds: pd.DataFrame, mask: np.ndarray) -> pd.Series:
    if not len(frauds) or not mask.any():
        return pd.Series(dtype=float)
    return frauds.loc[mask, "terminal_id"].value_counts().astype(float)

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

import functools
from collections.abc import Sequence
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
        # Positions and a float matrix, not ``reindex``: a lookup is on every batch's path,
        # and a reindexed frame costs milliseconds whatever the batch's size. Positions from a
        # dict, not ``Index.get_indexer``: an index of Arrow strings made 5 ids cost 84 µs
        # and 5,000 cost 2.7 ms, against 2 µs and 0.55 ms.
        rows = self._rows
        positions = np.fromiter(
            (rows.get(terminal, -1) for terminal in terminal_ids), np.int64, len(terminal_ids)
        )
        values = self._values[positions]  # a missing terminal (-1) reads the row of zeros
        return {column: values[:, i] for i, column in enumerate(self.frame.columns)}

    @functools.cached_property
    def _rows(self) -> dict[str, int]:
        """Each listed terminal's row."""
        return {terminal: row for row, terminal in enumerate(self.frame.index.tolist())}

    @functools.cached_property
    def _values(self) -> np.ndarray:
        """The table as floats, with a last row of zeros for terminals it does not list."""
        values = self.frame.fillna(0.0).to_numpy(dtype=float)
        return np.vstack([values, np.zeros((1, values.shape[1]))])


class TerminalActivity:
    """Daily transaction counts per terminal and fraud outcomes with their report times.

    Engines feed it from the database (or as they go); the trainer feeds it a whole history.
    Both then ask for ``table(day)``, which is a pure function of what was fed. Terminals are
    kept as integer codes, so a table is a few ``bincount``s over arrays whatever the number
    of terminals and days (an engine seals one a simulated day; it must not stall scoring).
    """

    def __init__(self) -> None:
        self._terminals = pd.Index([], dtype=object)  # a terminal's code is its position
        self._codes: dict[str, int] = {}  # the same, looked up by terminal_id
        self._rank: np.ndarray | None = None  # each code's place in terminal_id order
        # Per day (since the epoch): (code, transactions) chunks, a code possibly repeated
        self._counts: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        # (code, the transaction's day, reported at in µs since the epoch)
        self._frauds: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add_transactions(self, terminal_ids: pd.Series, event_times: pd.Series) -> None:
        days = _epoch_days(pd.to_datetime(event_times, utc=True).dt.tz_localize(None).to_numpy())
        self._add_counts(self._encode(terminal_ids), days, np.ones(len(days), np.int64))

    def add_daily_counts(
        self, terminal_ids: np.ndarray, days: np.ndarray, counts: np.ndarray
    ) -> None:
        """Pre-aggregated counts (terminal, UTC day, transactions), e.g. from the database."""
        self._add_counts(
            self._encode(terminal_ids), _epoch_days(np.asarray(days)), np.asarray(counts, np.int64)
        )

    def add_frauds(
        self, terminal_ids: pd.Series, event_times: pd.Series, reported_at: pd.Series
    ) -> None:
        """Fraud outcomes (terminal, the transaction's time, when the fraud was reported)."""
        days = _epoch_days(pd.to_datetime(event_times, utc=True).dt.tz_localize(None).to_numpy())
        reported = (
            pd.to_datetime(reported_at, utc=True)
            .dt.tz_localize(None)
            .to_numpy()
            .astype("datetime64[us]")
            .astype(np.int64)
        )
        self._frauds.append((self._encode(terminal_ids), days, reported))

    def replace_frauds(
        self, terminal_ids: pd.Series, event_times: pd.Series, reported_at: pd.Series
    ) -> None:
        """The fraud outcomes known now, instead of those added before (labels keep
        arriving; counts of past days do not change)."""
        self._frauds = []
        self.add_frauds(terminal_ids, event_times, reported_at)

    def table(self, when: np.datetime64) -> TerminalTable:
        day: Any = np.asarray(when).astype("datetime64[D]")[()]
        today = int(day.astype(np.int64))
        as_of = int(day.astype("datetime64[us]").astype(np.int64))
        fraud_codes, fraud_days, reported = _joined(self._frauds)
        known = reported <= as_of
        fraud_codes, fraud_days = fraud_codes[known], fraud_days[known]
        n = len(self._terminals)
        listed = np.zeros(n, dtype=bool)  # the terminals the table lists (others read zeros)

        def transactions(first: int, last: int) -> np.ndarray:
            chunks = [chunk for day in range(first, last) for chunk in self._counts.get(day, ())]
            codes, counts = _joined(chunks, width=2)
            listed[codes] = True
            return np.bincount(codes, weights=counts, minlength=n).astype(float)

        def frauds(first: int, last: int) -> np.ndarray:
            inside = (fraud_days >= first) & (fraud_days < last)
            return np.bincount(fraud_codes[inside], minlength=n).astype(float)

        columns: dict[str, np.ndarray] = {}
        for window in TERMINAL_WINDOWS:
            first, last = today - _DELAY_DAYS - window.days, today - _DELAY_DAYS  # [first, last)
            n_tx, n_fraud = transactions(first, last), frauds(first, last)
            name = window_name(window)
            columns[f"terminal_tx_count_{name}_delayed"] = n_tx
            columns[f"terminal_risk_{name}_delayed"] = _rate(n_fraud, n_tx)
        # The known window ends a day before D: every engine has stored those transactions
        # when D starts, so every engine builds the same table.
        end = today - _SETTLED_DAYS
        recent_tx = transactions(end - _KNOWN_DAYS, end)
        recent_fraud = frauds(end - _KNOWN_DAYS, end)
        listed |= recent_fraud > 0
        name = window_name(KNOWN_FRAUD_WINDOW)
        columns[f"terminal_known_frauds_{name}"] = recent_fraud
        columns[f"terminal_known_fraud_rate_{name}"] = _rate(recent_fraud, recent_tx)
        rows = np.flatnonzero(listed)
        if self._rank is None:
            self._rank = np.argsort(np.argsort(self._terminals.to_numpy()))
        rows = rows[np.argsort(self._rank[rows])]  # by terminal_id
        frame = pd.DataFrame(
            {column: columns[column][rows] for column in terminal_columns()},
            index=pd.Index(self._terminals[rows], dtype="str"),
        )
        return TerminalTable(day=day, frame=frame)

    def forget_before(self, day: np.datetime64) -> None:
        """Drop activity no table from ``day`` on can use (bounded memory for engines)."""
        oldest = int(
            np.asarray(day).astype("datetime64[D]").astype(np.int64)
            - _DELAY_DAYS
            - max(w.days for w in TERMINAL_WINDOWS)
        )
        self._counts = {day: chunks for day, chunks in self._counts.items() if day >= oldest}
        fraud_codes, fraud_days, reported = _joined(self._frauds)
        keep = fraud_days >= oldest
        self._frauds = [(fraud_codes[keep], fraud_days[keep], reported[keep])]

    def _encode(self, terminal_ids: pd.Series | np.ndarray) -> np.ndarray:
        """Each terminal's code, new terminals numbered in order of first appearance. Each
        distinct id is looked up once (``pd.factorize`` finds them in C): a seal after a
        restart reads forty days of a hundred thousand terminals, 3.6 M ids; looked up one
        by one in a dict they took 3.5 s, factorised then looked up 1.3 s (``Index.get_indexer``
        took longer still)."""
        positions, distinct = pd.factorize(
            np.asarray(terminal_ids, dtype=object), use_na_sentinel=False
        )
        names = distinct.tolist()
        codes_of = self._codes
        codes = np.fromiter((codes_of.get(name, -1) for name in names), np.int64, len(names))
        added = [name for name, code in zip(names, codes.tolist(), strict=True) if code < 0]
        if added:
            first = len(self._terminals)
            codes_of.update((name, first + i) for i, name in enumerate(added))
            self._terminals = self._terminals.append(pd.Index(added, dtype=object))
            self._rank = None
            codes[codes < 0] = np.arange(first, first + len(added))
        coded: np.ndarray = codes[positions]
        return coded

    def _add_counts(self, codes: np.ndarray, days: np.ndarray, counts: np.ndarray) -> None:
        """Counts filed by day (a table sums only the days of its windows)."""
        if not len(days):
            return
        if (days == days[0]).all():  # the usual case: one day
            self._counts.setdefault(int(days[0]), []).append((codes, counts))
            return
        if (days[1:] < days[:-1]).any():  # not already a day after another, as read
            order = np.argsort(days, kind="stable")
            days, codes, counts = days[order], codes[order], counts[order]
        starts = np.flatnonzero(np.r_[True, days[1:] != days[:-1]])
        for start, end in zip(starts, np.r_[starts[1:], len(days)], strict=True):
            self._counts.setdefault(int(days[start]), []).append(
                (codes[start:end], counts[start:end])
            )


def _epoch_days(values: np.ndarray) -> np.ndarray:
    return np.asarray(values).astype("datetime64[D]").astype(np.int64)


def _joined(chunks: Sequence[tuple[np.ndarray, ...]], width: int = 3) -> tuple[np.ndarray, ...]:
    """Chunks of parallel arrays as one set of arrays."""
    if not chunks:
        return (np.empty(0, np.int64),) * width
    if len(chunks) == 1:
        return chunks[0]
    return tuple(np.concatenate(parts) for parts in zip(*chunks, strict=True))


def _rate(frauds: np.ndarray, transactions: np.ndarray) -> np.ndarray:
    """Frauds per transaction; 0 where there were none."""
    rate: np.ndarray = np.divide(
        frauds, transactions, out=np.zeros(len(transactions)), where=transactions > 0
    )
    return rate

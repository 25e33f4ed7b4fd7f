"""The whole feature vector for a batch: card windows, terminal risk, calendar.

``FeatureComputer`` is what engines call per micro-batch and what offline training replays
history through, so the model is trained on exactly the numbers it will see when serving.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np
import pandas as pd

from fraudstream.features.card import CardState, card_features
from fraudstream.features.definitions import FEATURE_NAMES, NIGHT_HOURS
from fraudstream.features.terminal import TerminalActivity, TerminalTable

__all__ = ["FeatureComputer", "calendar_features", "history_features"]


def calendar_features(event_us: np.ndarray) -> dict[str, np.ndarray]:
    """Calendar features from microseconds since the epoch (UTC): the ``.dt`` accessors
    cost a millisecond a batch."""
    days, in_day = np.divmod(event_us, _DAY_US)
    hour = in_day // _HOUR_US
    return {
        "hour": hour.astype(float),
        "is_night": (hour < NIGHT_HOURS).astype(float),
        "is_weekend": ((days + 3) % 7 >= 5).astype(float),  # 1970-01-01 was a Thursday (3)
    }


_HOUR_US = 3_600_000_000
_DAY_US = 24 * _HOUR_US


class FeatureComputer:
    """Card state + terminal tables; ``compute`` maps a batch to ``FEATURE_NAMES`` columns."""

    def __init__(
        self,
        state: CardState | None = None,
        activity: TerminalActivity | None = None,
        tables: Callable[[np.datetime64], TerminalTable] | None = None,
    ) -> None:
        # "is None", not "or": an empty CardState is falsy, and it must still be the one kept.
        self.state = state if state is not None else CardState()
        self.activity = activity if activity is not None else TerminalActivity()
        self._table_source = tables or self.activity.table
        self._tables: dict[np.datetime64, TerminalTable] = {}

    def table(self, day: np.datetime64) -> TerminalTable:
        """The terminal table of ``day``, computed once and then fixed."""
        if day not in self._tables:
            self._tables[day] = self._table_source(day)
            for old in [d for d in self._tables if d < day - np.timedelta64(2, "D")]:
                del self._tables[old]
        return self._tables[day]

    def compute(self, batch: pd.DataFrame) -> pd.DataFrame:
        """Features of ``batch`` (canonical transaction columns, arrival order)."""
        return self.complete(batch, card_features(self.state, batch))

    def compute_partitioned(
        self, batch: pd.DataFrame, partitions: np.ndarray, states: Mapping[int, CardState]
    ) -> pd.DataFrame:
        """``compute`` for a batch whose card histories live in one state per partition (an
        engine owns card state per Kafka partition; a card's messages all share one). The
        same numbers as ``compute`` per partition, with the per-call overhead paid once."""
        n = len(batch)
        card: dict[str, np.ndarray] = {}
        for partition in np.unique(partitions):
            rows = np.flatnonzero(partitions == partition)
            part = batch if len(rows) == n else batch.iloc[rows]
            for name, values in card_features(states[int(partition)], part).items():
                card.setdefault(name, np.empty(n, dtype=float))[rows] = values
        return self.complete(batch, card)

    def complete(self, batch: pd.DataFrame, card: Mapping[str, np.ndarray]) -> pd.DataFrame:
        """The feature vector of ``batch`` given its card features (computed by
        ``card_features``, here or elsewhere: the Spark engine computes them in its state
        operator): amount, calendar and terminal features added."""
        matrix = self.vectors(
            amounts=batch["amount"].to_numpy(dtype=float),
            event_us=batch["event_time"].to_numpy(dtype="datetime64[us]").view(np.int64),
            terminal_ids=batch["terminal_id"].to_numpy(),
            card=card,
        )
        return pd.DataFrame(matrix, columns=list(FEATURE_NAMES), index=batch.index)

    def vectors(
        self,
        *,
        amounts: np.ndarray,
        event_us: np.ndarray,
        terminal_ids: np.ndarray,
        card: Mapping[str, np.ndarray],
    ) -> np.ndarray:
        """``complete`` on arrays: one row per transaction, ``FEATURE_NAMES`` columns."""
        columns: dict[str, np.ndarray] = {"amount": amounts}
        columns.update(calendar_features(event_us))
        columns.update(card)
        columns.update(self._terminal(event_us, terminal_ids))
        # One float block, not a frame of columns: built on every batch, at any size.
        matrix = np.empty((len(amounts), len(FEATURE_NAMES)))
        for i, name in enumerate(FEATURE_NAMES):
            matrix[:, i] = columns[name]
        return matrix

    def _terminal(self, event_us: np.ndarray, terminal_ids: np.ndarray) -> dict[str, np.ndarray]:
        days = event_us.view("datetime64[us]").astype("datetime64[D]")
        unique_days = np.unique(days)
        if len(unique_days) == 1:
            return self.table(unique_days[0]).lookup(terminal_ids)
        out: dict[str, np.ndarray] = {}
        for day in unique_days:
            mask = days == day
            part = self.table(day).lookup(terminal_ids[mask])
            for name, values in part.items():
                out.setdefault(name, np.zeros(len(terminal_ids)))[mask] = values
        return out


def history_features(
    transactions: pd.DataFrame,
    frauds: pd.DataFrame,
    *,
    counted: np.ndarray | None = None,
    batch_rows: int = 20_000,
    progress: Callable[[int], None] = lambda _rows: None,
) -> pd.DataFrame:
    """Replay a history through the streaming feature code (offline training).

    ``frauds`` has ``terminal_id``, ``event_time`` and ``reported_at`` of reported frauds; the
    terminal tables only use those reported by the start of each transaction's day.
    ``counted`` masks the transactions terminal activity counts (the engines do not count late
    ones: docs/adr/0004); all are counted by default.
    """
    activity = TerminalActivity()
    kept = transactions if counted is None else transactions[counted]
    activity.add_transactions(kept["terminal_id"], kept["event_time"])
    activity.add_frauds(frauds["terminal_id"], frauds["event_time"], frauds["reported_at"])
    computer = FeatureComputer(activity=activity)
    parts = []
    for batch in _batches(transactions, batch_rows):
        parts.append(computer.compute(batch))
        progress(len(batch))
    return pd.concat(parts) if parts else pd.DataFrame(columns=list(FEATURE_NAMES))


def _batches(frame: pd.DataFrame, size: int) -> Iterator[pd.DataFrame]:
    for start in range(0, len(frame), size):
        yield frame.iloc[start : start + size]

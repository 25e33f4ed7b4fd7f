"""Time-ordered evaluation: train period → delay gap → test period, never a random split.

The Fraud Detection Handbook's chapter 5 protocol: blocks of 7 days train, 7 days delay, 7 days
test; 4 folds shifted back by a block each; hyper-parameters chosen on validation folds (which
end where the test folds' training begins); figures reported as the mean over test folds.
Test days exclude cards already known to be defrauded, as the Handbook does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pandas as pd

__all__ = ["Fold", "Protocol", "split"]


@dataclass(frozen=True)
class Fold:
    train_start: pd.Timestamp
    train_days: int
    delay_days: int
    test_days: int

    @property
    def test_start(self) -> pd.Timestamp:
        return self.train_start + timedelta(days=self.train_days + self.delay_days)

    def describe(self) -> str:
        end = self.test_start + timedelta(days=self.test_days)
        return (
            f"train {self.train_start:%Y-%m-%d}+{self.train_days}d, delay {self.delay_days}d, "
            f"test {self.test_start:%Y-%m-%d}..{end - timedelta(days=1):%Y-%m-%d}"
        )


@dataclass(frozen=True)
class Protocol:
    """The Handbook's protocol; ``start`` is the first test fold's training day (2018-07-25 in
    the Handbook, i.e. 115 days into its 183-day history)."""

    start: pd.Timestamp
    train_days: int = 7
    delay_days: int = 7
    test_days: int = 7
    folds: int = 4

    @classmethod
    def for_history(cls, first_day: pd.Timestamp, **changes: int) -> Protocol:
        return cls(start=first_day.normalize() + timedelta(days=115), **changes)

    @classmethod
    def ending(cls, last_day: pd.Timestamp, **changes: int) -> Protocol:
        """The protocol whose latest test fold ends on ``last_day`` (retraining on what has
        matured by now)."""
        shape = cls(start=last_day, **changes)
        span = shape.train_days + shape.delay_days + shape.test_days
        start = last_day.normalize() + timedelta(
            days=1 - span - (shape.folds - 1) * shape.test_days
        )
        return cls(start=start, **changes)

    def first_day(self) -> pd.Timestamp:
        """The first day the protocol trains on (the earliest validation fold's)."""
        return min(fold.train_start for fold in self.validation_folds())

    def test_folds(self) -> list[Fold]:
        """Latest first: the first starts at ``start + (folds − 1) blocks``."""
        last = self.start + timedelta(days=(self.folds - 1) * self.test_days)
        return [self._fold(last - timedelta(days=i * self.test_days)) for i in range(self.folds)]

    def validation_folds(self) -> list[Fold]:
        """As the test folds, but ending where the earliest test fold's training begins."""
        first = self.start - timedelta(days=self.delay_days + self.test_days)
        return [self._fold(first - timedelta(days=i * self.test_days)) for i in range(self.folds)]

    def _fold(self, train_start: pd.Timestamp) -> Fold:
        return Fold(train_start, self.train_days, self.delay_days, self.test_days)


def split(frame: pd.DataFrame, fold: Fold) -> tuple[np.ndarray, np.ndarray]:
    """Row masks (train, test) for ``frame`` with ``event_time``, ``card_id``, ``is_fraud``.

    As in the Handbook, a test day drops the cards known to be defrauded by then: frauds in the
    training period, and in the delay period up to the day before the matching delay day.
    """
    times = frame["event_time"]
    start = fold.train_start
    day = ((times - start) // timedelta(days=1)).to_numpy()
    train = (day >= 0) & (day < fold.train_days)
    fraud = frame["is_fraud"].to_numpy(dtype=bool)
    cards = frame["card_id"].to_numpy()
    known = set(cards[train & fraud])
    test = np.zeros(len(frame), dtype=bool)
    for offset in range(fold.test_days):
        delay_day = fold.train_days + offset - 1
        known.update(cards[(day == delay_day) & fraud])
        today = day == fold.train_days + fold.delay_days + offset
        test |= today & ~pd.Series(cards).isin(known).to_numpy()
    return train, test


def days_of(frame: pd.DataFrame, mask: np.ndarray) -> Iterator[pd.Timestamp]:
    yield from sorted(frame.loc[mask, "event_time"].dt.floor("D").unique())

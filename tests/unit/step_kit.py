"""Test doubles for the engine's pure step: a scorer that is a fixed function of every
feature (so equal scores mean equal features) and can be told to fail on one amount, and
decoded messages built from canonical records."""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
import pandas as pd

from fraudstream.engines.step import Decoded
from fraudstream.features import FEATURE_NAMES, TerminalActivity, TerminalTable
from fraudstream.model.explain import Reason
from fraudstream.schema import Invalid, Transaction, encode

TOPIC = "transactions"


class FakeScorer:
    """What ``step`` uses of a ``Scorer``: ``score``, ``explain``, ``thresholds``, ``version``,
    ``profile`` and ``names``. ``fail_score``/``fail_explain``: an amount whose rows make that
    call raise (on any batch holding one, as a model library would)."""

    version = "fake-1"
    profile = None

    def __init__(
        self, *, fail_score: float | None = None, fail_explain: float | None = None
    ) -> None:
        self.names = list(FEATURE_NAMES)
        self.thresholds = {"review": 0.7, "decline": 0.95}
        self.fail_score, self.fail_explain = fail_score, fail_explain
        self.weights = np.linspace(0.05, 0.5, len(self.names))

    def _matrix(self, features: pd.DataFrame, fail: float | None, what: str) -> np.ndarray:
        if fail is not None and (features["amount"].to_numpy(dtype=float) == fail).any():
            raise ValueError(f"cannot {what} an amount of {fail}")
        matrix: np.ndarray = np.nan_to_num(features[self.names].to_numpy(dtype=float), nan=-1.0)
        squashed: np.ndarray = np.sign(matrix) * np.log1p(np.abs(matrix))
        return squashed

    def score(self, features: pd.DataFrame) -> np.ndarray:
        matrix = self._matrix(features, self.fail_score, "score")
        # Row by row and exactly rounded: a row's score never depends on the batch around it.
        z = np.array([math.fsum(row) for row in matrix * self.weights])
        scores: np.ndarray = 1 / (1 + np.exp(-(z - 10.0)))
        return scores

    def explain(self, features: pd.DataFrame, top: int = 3) -> list[list[Reason]]:
        matrix = self._matrix(features, self.fail_explain, "explain")
        return [
            [Reason(name, float(value), float(value) * w, name)
             for name, value, w in zip(self.names[:top], row[:top], self.weights, strict=False)]
            for row in matrix
        ]  # fmt: skip


def transaction(
    tx_id: str, when: datetime, *, card: str = "c1", terminal: str = "T1", amount: float = 10.0
) -> Transaction:
    return Transaction(
        tx_id=tx_id, event_time=when, card_id=card, terminal_id=terminal, amount=amount,
        terminal_x=1.0, terminal_y=2.0, customer_x=1.5, customer_y=2.5,
    )  # fmt: skip


def decoded(partition: int, offset: int, record: Transaction | Invalid) -> Decoded:
    value = encode(record) if isinstance(record, Transaction) else b"{not json"
    return Decoded(TOPIC, partition, offset, None, value, None, record)


def tables(*days: np.datetime64) -> dict[np.datetime64, TerminalTable]:
    """Terminal tables of an empty history (every terminal feature zero)."""
    activity = TerminalActivity()
    return {day: activity.table(day) for day in days}

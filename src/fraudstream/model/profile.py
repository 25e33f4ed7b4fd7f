"""What the training window looked like, so drift can be measured against it.

A model's profile holds, for a few key features, cut points at the training window's deciles
and the share of training rows in each bin (a last bin for missing values), plus the share of
its training scores per score bin. Engines count each batch's features into the same bins
(``counts``) and the sink adds them to per-minute histograms; the Drift page compares the two
with the population stability index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["PROFILED_FEATURES", "SCORE_BINS", "FeatureProfile", "score_bins"]

PROFILED_FEATURES = (
    "amount",
    "card_tx_count_1d",
    "card_amount_mean_7d",
    "card_amount_ratio_30d",
    "card_seconds_since_prev",
    "card_distinct_terminals_1d",
    "terminal_risk_7d_delayed",
    "terminal_known_fraud_rate_7d",
)
"""The features whose drift the dashboard shows: amount, card velocity and habits, terminal
risk — the ones a fraud team watches when the traffic changes."""

SCORE_BINS = 20
"""Score histograms: bin i (0-based) counts scores in [i/20, (i+1)/20), the last one including 1."""


def score_bins(scores: np.ndarray) -> np.ndarray:
    """Each score's bin (0 … SCORE_BINS - 1)."""
    bins = (np.asarray(scores, dtype=float) * SCORE_BINS).astype(np.int64)
    return np.clip(bins, 0, SCORE_BINS - 1)


@dataclass(frozen=True)
class FeatureProfile:
    """Per profiled feature: inner cut points and training shares (len(cuts) + 2 bins: the
    values ≤ each cut, above the last, then missing); training score shares per score bin."""

    cuts: dict[str, list[float]]
    shares: dict[str, list[float]]
    score_shares: list[float]
    rows: int

    @classmethod
    def of_training(cls, features: pd.DataFrame, scores: np.ndarray) -> FeatureProfile:
        """The profile of a training window: its features and the model's scores on them."""
        cuts, shares = {}, {}
        for name in PROFILED_FEATURES:
            values = features[name].to_numpy(dtype=float)
            present = values[~np.isnan(values)]
            cut = _deciles(present)
            cuts[name] = [float(c) for c in cut]
            counts = _bin_counts(values, cut)
            shares[name] = (counts / max(len(values), 1)).tolist()
        scored = np.bincount(score_bins(scores), minlength=SCORE_BINS)
        return cls(cuts, shares, (scored / max(len(scores), 1)).tolist(), len(features))

    def counts(self, features: pd.DataFrame) -> dict[str, np.ndarray]:
        """How many of ``features``' rows fall in each bin, per profiled feature."""
        matrix = features.to_numpy(dtype=float)  # once: a column at a time costs more
        position = {name: i for i, name in enumerate(features.columns)}
        return {
            name: _bin_counts(matrix[:, position[name]], np.asarray(cut))
            for name, cut in self.cuts.items()
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "cuts": self.cuts,
            "shares": self.shares,
            "score_shares": self.score_shares,
            "rows": self.rows,
        }

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> FeatureProfile | None:
        """The profile a model was saved with (None for models trained before profiles)."""
        stored = metadata.get("profile")
        if stored is None:
            return None
        return cls(stored["cuts"], stored["shares"], stored["score_shares"], stored["rows"])


def _deciles(values: np.ndarray) -> np.ndarray:
    """The distinct values at or below which a tenth, two tenths … nine tenths of ``values``
    lie (positions in integers, so that 30 % of 100 values is the 30th)."""
    if not len(values):
        return np.array([])
    ordered = np.sort(values)
    n = len(ordered)
    return np.unique(ordered[[-(-tenth * n // 10) - 1 for tenth in range(1, 10)]])


def _bin_counts(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    missing = np.isnan(values)
    bins = np.searchsorted(cuts, values[~missing], side="left")
    counts = np.bincount(bins, minlength=len(cuts) + 2)
    counts[len(cuts) + 1] = int(missing.sum())
    return counts.astype(np.int64)

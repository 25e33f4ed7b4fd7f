"""Model-quality arithmetic for the dashboard, from the per-day measures and score
histograms that ``store.quality`` keeps: precision–recall, the alert budget of a threshold,
and the population stability index."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["budget", "pr_curve", "psi"]


def pr_curve(histogram: pd.DataFrame) -> pd.DataFrame:
    """Precision and recall when flagging every score at or above each bin's lower edge
    (``histogram``: ``bin``, ``legitimate``, ``fraud`` over equal bins of [0, 1])."""
    bins = len(histogram)
    top_down = histogram.sort_values("bin", ascending=False)
    frauds = np.cumsum(top_down["fraud"].to_numpy(float))
    flagged = frauds + np.cumsum(top_down["legitimate"].to_numpy(float))
    if bins == 0 or frauds[-1] == 0:
        return pd.DataFrame({"recall": [], "precision": [], "threshold": []})
    keep = flagged > 0
    return pd.DataFrame(
        {
            "recall": frauds[keep] / frauds[-1],
            "precision": frauds[keep] / flagged[keep],
            "threshold": top_down["bin"].to_numpy()[keep] / bins,
        }
    )


def budget(histogram: pd.DataFrame, threshold: float, days: int) -> dict[str, float]:
    """What flagging every score ≥ ``threshold`` would have cost and caught, per day (at the
    histogram's resolution: thresholds fall on bin edges)."""
    bins = len(histogram)
    chosen = histogram[histogram["bin"] >= round(threshold * bins)]
    frauds, flagged_frauds = histogram["fraud"].sum(), chosen["fraud"].sum()
    flagged = flagged_frauds + chosen["legitimate"].sum()
    days = max(days, 1)
    return {
        "reviews_per_day": flagged / days,
        "frauds_caught_per_day": flagged_frauds / days,
        "recall": flagged_frauds / frauds if frauds else float("nan"),
        "precision": flagged_frauds / flagged if flagged else float("nan"),
    }


def psi(reference: np.ndarray, current: np.ndarray, floor: float = 1e-4) -> float:
    """Population stability index of two histograms over the same bins (empty bins count as
    ``floor`` so that the logarithm stays finite). Rule of thumb: < 0.1 stable, 0.1–0.25
    moderate shift, > 0.25 a large shift."""
    expected = np.maximum(reference / max(reference.sum(), 1), floor)
    actual = np.maximum(current / max(current.sum(), 1), floor)
    return float(np.sum((actual - expected) * np.log(actual / expected)))

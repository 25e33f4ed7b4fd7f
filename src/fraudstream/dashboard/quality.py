"""Model-quality arithmetic for the dashboard: per-day measures, the precision–recall curve,
the alert budget of a threshold, and the population stability index."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fraudstream.model.metrics import auc_roc, average_precision, card_precision_at_k

__all__ = ["budget", "daily_quality", "pr_curve", "psi"]


def daily_quality(frame: pd.DataFrame, k: int = 100) -> pd.DataFrame:
    """Per day: volume, frauds, AP, AUC-ROC, CP@k and the stored decisions' precision and
    recall (flagged = review or decline)."""
    rows = []
    for day, part in frame.groupby("day", sort=True):
        labels = part["is_fraud"].to_numpy(bool)
        flagged = (part["decision"] != "approve").to_numpy()
        caught = int((flagged & labels).sum())
        rows.append(
            {
                "day": day,
                "transactions": len(part),
                "frauds": int(labels.sum()),
                "AP": average_precision(labels, part["score"].to_numpy()),
                "AUC-ROC": auc_roc(labels, part["score"].to_numpy()),
                f"CP@{k}": card_precision_at_k(part, k, remove_detected=False),
                "precision": caught / flagged.sum() if flagged.any() else np.nan,
                "recall": caught / labels.sum() if labels.any() else np.nan,
            }
        )
    return pd.DataFrame(rows)


def pr_curve(labels: np.ndarray, scores: np.ndarray, points: int = 200) -> pd.DataFrame:
    """Precision and recall at up to ``points`` thresholds, highest score first."""
    order = np.argsort(-scores, kind="mergesort")
    hits = np.cumsum(np.asarray(labels, bool)[order])
    positives = hits[-1] if len(hits) else 0
    if positives == 0:
        return pd.DataFrame({"recall": [], "precision": [], "threshold": []})
    take = np.unique(np.linspace(0, len(order) - 1, min(points, len(order))).astype(int))
    return pd.DataFrame(
        {
            "recall": hits[take] / positives,
            "precision": hits[take] / (take + 1),
            "threshold": scores[order][take],
        }
    )


def budget(frame: pd.DataFrame, threshold: float) -> dict[str, float]:
    """What flagging every transaction scored ≥ ``threshold`` would have cost and caught."""
    days = max(frame["day"].nunique(), 1)
    flagged = frame["score"].to_numpy() >= threshold
    labels = frame["is_fraud"].to_numpy(bool)
    return {
        "reviews_per_day": flagged.sum() / days,
        "frauds_caught_per_day": (flagged & labels).sum() / days,
        "recall": (flagged & labels).sum() / labels.sum() if labels.any() else float("nan"),
        "precision": (flagged & labels).sum() / flagged.sum() if flagged.any() else float("nan"),
    }


def psi(reference: np.ndarray, current: np.ndarray, floor: float = 1e-4) -> float:
    """Population stability index of two histograms over the same bins (empty bins count as
    ``floor`` so that the logarithm stays finite). Rule of thumb: < 0.1 stable, 0.1–0.25
    moderate shift, > 0.25 a large shift."""
    expected = np.maximum(reference / max(reference.sum(), 1), floor)
    actual = np.maximum(current / max(current.sum(), 1), floor)
    return float(np.sum((actual - expected) * np.log(actual / expected)))

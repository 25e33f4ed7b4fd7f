"""Quality measures with the Fraud Detection Handbook's definitions (AUC-ROC, AP, CP@k).

Implemented here (and checked against scikit-learn in the tests) so that the engine and the
dashboard need no training stack to score model quality.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = [
    "auc_roc",
    "average_precision",
    "card_precision_at_k",
    "money_recall_at_k",
    "wilson_interval",
]


def auc_roc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted as one half)."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    rank_sum = ranks[labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Σ (Rₙ − Rₙ₋₁) Pₙ over distinct score thresholds, highest first (as scikit-learn)."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    positives = int(labels.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]
    true_positives = np.cumsum(sorted_labels)[last_of_tie]
    predicted = last_of_tie + 1
    precision = true_positives / predicted
    recall = true_positives / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def card_precision_at_k(
    frame: pd.DataFrame,
    k: int = 100,
    *,
    day: str = "day",
    card: str = "card_id",
    label: str = "is_fraud",
    score: str = "score",
    remove_detected: bool = True,
) -> float:
    """Mean over days of the share of fraudulent cards among the k highest-scored cards.

    A card's score on a day is its highest transaction score; a card is fraudulent that day
    if any of its transactions is. Cards caught in the top k on earlier days are removed from
    later days (they are blocked), as in the Handbook. The denominator is always k.
    """
    detected: set[object] = set()
    precisions = []
    for _day, rows in frame.groupby(day, sort=True):
        if remove_detected and detected:
            rows = rows[~rows[card].isin(detected)]
        per_card = rows.groupby(card).agg(score=(score, "max"), fraud=(label, "max"))
        top = per_card.sort_values("score", ascending=False, kind="mergesort").head(k)
        caught = top.index[top["fraud"].astype(bool)]
        precisions.append(len(caught) / k)
        detected.update(caught)
    return float(np.mean(precisions)) if precisions else float("nan")


def money_recall_at_k(frame: pd.DataFrame, k: int = 100) -> float:
    """The share of fraud money on the k highest-scored cards of each day: what analysts who
    review k cards a day would have stopped, in amount (``day``, ``card_id``, ``score``,
    ``is_fraud``, ``amount``). NaN when there was no fraud."""
    fraud_money = frame.loc[frame["is_fraud"].astype(bool), "amount"].astype(float).sum()
    if fraud_money <= 0:
        return float("nan")
    caught = 0.0
    for _day, rows in frame.groupby("day", sort=True):
        per_card = rows.groupby("card_id")["score"].max()
        top = set(per_card.sort_values(ascending=False, kind="mergesort").head(k).index)
        hit = rows["card_id"].isin(top).to_numpy() & rows["is_fraud"].to_numpy(dtype=bool)
        caught += float(rows.loc[hit, "amount"].astype(float).sum())
    return caught / float(fraud_money)


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95 % by default): sound for small samples
    and for proportions near 0 or 1, where the normal approximation is not."""
    if trials == 0:
        return float("nan"), float("nan")
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from fraudstream.model.metrics import auc_roc, average_precision, card_precision_at_k


@pytest.mark.parametrize("seed", range(5))
def test_auc_and_ap_match_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(2_000) < 0.05
    scores = np.round(rng.random(2_000) + labels * rng.random(2_000), 2)  # with ties
    assert auc_roc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(labels, scores) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12
    )


def test_metrics_without_positives_are_undefined() -> None:
    assert np.isnan(auc_roc(np.zeros(3, bool), np.ones(3)))
    assert np.isnan(average_precision(np.zeros(3, bool), np.ones(3)))


def test_card_precision_at_k_by_hand() -> None:
    # Day 1: cards by max score A .9 (fraud), B .8, C .7 (fraud) -> top-2 {A, B}: 1/2.
    # Day 2: A (caught on day 1) is removed; top-2 of B .6, C .95 (fraud), D .1 -> {C, B}: 1/2.
    # Day 3: A and C are removed; B .3 (fraud), D .2 -> top-2 {B, D}: 1/2 ... B is fraud: 1/2.
    frame = pd.DataFrame(
        {
            "day": [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3],
            "card_id": ["A", "A", "B", "C", "A", "B", "C", "D", "A", "B", "D"],
            "score": [0.9, 0.1, 0.8, 0.7, 0.99, 0.6, 0.95, 0.1, 0.99, 0.3, 0.2],
            "is_fraud": [0, 1, 0, 1, 1, 0, 1, 0, 1, 1, 0],
        }
    )
    assert card_precision_at_k(frame, k=2) == pytest.approx((1 / 2 + 1 / 2 + 1 / 2) / 3)
    # Without removal, A stays on top every day: day 2 {A, C} both fraud -> 1; day 3 {A, B} -> 1.
    assert card_precision_at_k(frame, k=2, remove_detected=False) == pytest.approx(
        (0.5 + 1 + 1) / 3
    )
    # The denominator is k even when fewer cards exist.
    assert card_precision_at_k(frame[frame["day"] == 3], k=4) == pytest.approx(2 / 4)

"""The dashboard's arithmetic: latency percentiles from histograms, PSI, PR curve, budget."""

import numpy as np
import pandas as pd
import pytest

from fraudstream.dashboard.format import reasons_text
from fraudstream.dashboard.quality import budget, pr_curve, psi
from fraudstream.dashboard.queries import percentile_ms
from fraudstream.store.projections import LATENCY_BUCKETS_MS


def test_percentiles_interpolate_inside_the_bucket() -> None:
    histogram = np.zeros(len(LATENCY_BUCKETS_MS) + 1)
    histogram[LATENCY_BUCKETS_MS.index(20)] = 100  # everything in [10, 20) ms
    assert percentile_ms(histogram, 0.5) == pytest.approx(15.0)
    assert percentile_ms(histogram, 0.99) == pytest.approx(19.9)
    assert percentile_ms([], 0.5) is None and percentile_ms([0, 0], 0.5) is None


def test_the_open_last_bucket_reports_its_lower_bound() -> None:
    histogram = [0] * len(LATENCY_BUCKETS_MS) + [5]
    assert percentile_ms(histogram, 0.99) == LATENCY_BUCKETS_MS[-1]


def test_psi_is_zero_for_the_same_distribution_and_grows_with_the_shift() -> None:
    reference = np.array([50, 30, 15, 5], float)
    assert psi(reference, reference * 3) == pytest.approx(0.0)
    small, large = (
        psi(reference, np.array([45, 32, 17, 6.0])),
        psi(reference, np.array([5, 15, 30, 50.0])),
    )
    assert 0 < small < 0.1 < 0.25 < large


def test_pr_curve_and_budget_from_a_score_histogram() -> None:
    # 4 bins of [0, 1]: frauds score high, legitimate transactions low.
    histogram = pd.DataFrame(
        {"bin": [0, 1, 2, 3], "legitimate": [90, 6, 3, 1], "fraud": [0, 2, 3, 5]}
    )
    curve = pr_curve(histogram)
    assert curve["threshold"].tolist() == [0.75, 0.5, 0.25, 0.0]
    assert curve["recall"].tolist() == [0.5, 0.8, 1.0, 1.0]
    assert curve["precision"].tolist() == [5 / 6, 8 / 12, 10 / 20, 10 / 110]
    cost = budget(histogram, 0.5, days=2)
    assert cost == {"reviews_per_day": 6.0, "frauds_caught_per_day": 4.0, "recall": 0.8,
                    "precision": 8 / 12}  # fmt: skip


def test_reasons_in_words_rules_first() -> None:
    reasons = [{"feature": "amount", "text": "amount far above the card's mean"}]
    assert reasons_text(reasons, ["card_velocity_1h"]) == (
        "rule: card_velocity_1h; amount far above the card's mean"
    )
    assert reasons_text([], []) == "—"

"""The training profile drift is measured against: decile bins, missing values, score bins."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fraudstream.model.profile import (
    PROFILED_FEATURES,
    SCORE_BINS,
    FeatureProfile,
    score_bins,
)


def _features(values: list[float]) -> pd.DataFrame:
    return pd.DataFrame({name: values for name in PROFILED_FEATURES})


def test_bins_are_the_training_deciles_with_a_bin_for_missing_values() -> None:
    training = _features([float(v) for v in range(1, 101)])
    profile = FeatureProfile.of_training(training, np.full(100, 0.5))
    cuts = profile.cuts["amount"]
    assert cuts == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0]
    assert profile.shares["amount"] == [0.1] * 10 + [0.0]  # ten equal bins, nothing missing
    counts = profile.counts(_features([0.0, cuts[0], cuts[0] + 0.01, 1e9, float("nan")]))
    assert counts["amount"].tolist() == [2, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1]


def test_a_feature_with_few_values_keeps_distinct_cuts() -> None:
    profile = FeatureProfile.of_training(_features([0.0] * 90 + [1.0] * 10), np.zeros(100))
    assert profile.cuts["card_tx_count_1d"] == [0.0]  # cut points are values seen in training
    assert profile.shares["card_tx_count_1d"] == [0.9, 0.1, 0.0]


def test_score_shares_use_the_dashboard_score_bins() -> None:
    scores = np.array([0.0, 0.049, 0.05, 0.999, 1.0])
    assert score_bins(scores).tolist() == [0, 0, 1, SCORE_BINS - 1, SCORE_BINS - 1]
    profile = FeatureProfile.of_training(_features([1.0] * 5), scores)
    assert sum(profile.score_shares) == 1.0 and profile.score_shares[0] == 0.4


def test_the_profile_survives_the_model_metadata() -> None:
    profile = FeatureProfile.of_training(_features([1.0, 2.0, float("nan")]), np.zeros(3))
    assert FeatureProfile.from_metadata({"profile": profile.as_dict()}) == profile
    assert FeatureProfile.from_metadata({}) is None

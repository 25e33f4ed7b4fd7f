"""Training on time-ordered folds, the registry, thresholds and explanations, end to end."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fraudstream.features import FEATURE_NAMES, history_features
from fraudstream.model.backends import backend
from fraudstream.model.data import from_dataset
from fraudstream.model.profile import PROFILED_FEATURES, FeatureProfile
from fraudstream.model.protocol import Protocol, split
from fraudstream.model.registry import Registry, RegistryError
from fraudstream.model.scoring import Scorer
from fraudstream.model.train import as_first_of_card, choose_thresholds, train, with_newcomers
from fraudstream.simulator.adapters import load_dataset
from fraudstream.simulator.generator import generate_blocks, preset
from fraudstream.simulator.history import write_history

from ..conftest import overrides_env, run_cli

NOW = datetime(2026, 11, 28, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def small_history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    params = preset("handbook", n_customers=600, n_terminals=1_200, days=160, seed=4)
    path = tmp_path_factory.mktemp("history") / "small.parquet"
    write_history(generate_blocks(params), path, params)
    return path


@pytest.fixture(scope="module")
def trained(small_history: Path) -> tuple[pd.DataFrame, pd.DataFrame, object]:
    frame, frauds = from_dataset(load_dataset(small_history, tokenizer=None))
    features = history_features(frame, frauds)
    result = train(
        frame, features, backend_name="xgboost",
        grid=[{"n_estimators": 60, "max_depth": 4}, {"n_estimators": 60, "max_depth": 2}],
        created_at=NOW, source="small.parquet",
    )  # fmt: skip
    return frame, features, result


def test_protocol_matches_the_handbook_dates() -> None:
    protocol = Protocol.for_history(pd.Timestamp("2018-04-01", tz="UTC"))
    starts = [f.train_start.strftime("%m-%d") for f in protocol.test_folds()]
    assert starts == ["08-15", "08-08", "08-01", "07-25"]
    assert [f.train_start.strftime("%m-%d") for f in protocol.validation_folds()] == [
        "07-11", "07-04", "06-27", "06-20",
    ]  # fmt: skip


def test_split_is_time_ordered_with_a_gap_and_drops_known_cards(trained: tuple) -> None:
    frame, _features, _result = trained
    fold = Protocol.for_history(frame["event_time"].min()).test_folds()[0]
    train_mask, test_mask = split(frame, fold)
    assert frame.loc[train_mask, "event_time"].max() < fold.train_start + pd.Timedelta(days=7)
    assert frame.loc[test_mask, "event_time"].min() >= fold.test_start  # the delay gap
    known = set(frame.loc[train_mask & frame["is_fraud"].to_numpy(), "card_id"])
    assert not known & set(frame.loc[test_mask, "card_id"])


def test_training_result_carries_metrics_thresholds_and_windows(trained: tuple) -> None:
    _frame, _features, result = trained
    meta = result.metadata
    assert meta["features"] == list(FEATURE_NAMES) and meta["backend"] == "xgboost"
    assert set(meta["metrics"]["test"]) == {"auc_roc", "average_precision", "card_precision_at_k"}
    assert (
        result.test.auc_roc > 0.8 and result.test.average_precision > 0.4
    )  # learns, even when small
    assert 0 < meta["thresholds"]["review"] <= meta["thresholds"]["decline"] <= 1
    assert len(result.validation) == 2
    assert meta["training_window"]["days"] == 7 and meta["training_window"]["delay_days"] == 7
    # The drift reference: the training window's rows, every one in a bin of every feature.
    profile = FeatureProfile.from_metadata(meta)
    assert profile is not None and set(profile.cuts) == set(PROFILED_FEATURES)
    window, _ = split(_frame, Protocol.for_history(_frame["event_time"].min()).test_folds()[0])
    assert profile.rows == window.sum()
    assert all(abs(sum(shares) - 1) < 1e-9 for shares in profile.shares.values())
    assert abs(sum(profile.score_shares) - 1) < 1e-9


def test_training_is_deterministic(trained: tuple, tmp_path: Path) -> None:
    frame, features, result = trained
    again = train(
        frame, features, backend_name="xgboost",
        grid=[{"n_estimators": 60, "max_depth": 4}, {"n_estimators": 60, "max_depth": 2}],
        created_at=NOW, source="small.parquet",
    )  # fmt: skip
    first = Registry(tmp_path / "a").save(result.model, result.metadata)
    second = Registry(tmp_path / "b").save(again.model, again.metadata)
    assert first == second  # same content hash, same version


def test_a_cards_first_transaction_is_what_as_first_of_card_makes_of_a_later_one(
    trained: tuple, small_history: Path
) -> None:
    """The newcomer rows training shows are what the feature code computes: later
    transactions of cards with a past, each moved to a card of its own, get exactly the
    columns ``as_first_of_card`` makes of their features."""
    frame, features, _result = trained
    later = np.flatnonzero(frame["card_id"].duplicated().to_numpy())[::499][:40]
    renamed = frame.copy()
    card_ids = renamed["card_id"].to_numpy(dtype=object)
    card_ids[later] = [f"first-{i}" for i in range(len(later))]
    renamed["card_id"] = pd.array(card_ids, dtype=frame["card_id"].dtype)
    _frame, frauds = from_dataset(load_dataset(small_history, tokenizer=None))
    moved = history_features(renamed, frauds)
    columns = list(FEATURE_NAMES)
    assert len(later) == 40
    np.testing.assert_array_equal(
        as_first_of_card(features[columns].to_numpy(dtype=float)[later]),
        moved[columns].to_numpy(dtype=float)[later],
    )


def test_newcomer_rows_are_added_to_training_only_and_keep_their_labels() -> None:
    features = np.arange(40 * len(FEATURE_NAMES), dtype=float).reshape(40, -1)
    labels = (np.arange(40) % 4 == 0).astype(float)
    x, y, w = with_newcomers(features, labels, np.full(40, 2.0), 0.25, seed=3)
    assert (x.shape, y.shape, w.shape) == ((50, len(FEATURE_NAMES)), (50,), (50,))
    np.testing.assert_array_equal(x[:40], features)  # the rows themselves, unchanged
    amount = FEATURE_NAMES.index("amount")  # each row's own, so it says which was copied
    drawn = np.searchsorted(features[:, amount], x[40:, amount])
    assert len(set(drawn.tolist())) == 10 and (features[drawn, amount] == x[40:, amount]).all()
    np.testing.assert_array_equal(y[40:], labels[drawn])
    np.testing.assert_array_equal(x[40:45], as_first_of_card(features[drawn[:5]]))
    terminal = [FEATURE_NAMES.index(n) for n in FEATURE_NAMES if n.startswith("terminal_")]
    assert (x[45:, terminal] == 0).all() and (x[40:45, terminal] != 0).all()
    assert np.isnan(x[40:, FEATURE_NAMES.index("card_seconds_since_prev")]).all()
    again = with_newcomers(features, labels, None, 0.25, seed=3)
    np.testing.assert_array_equal(again[0], x)  # the same draw for the same seed
    assert again[2] is None and with_newcomers(features, labels, None, 0.0, 3)[0] is features


def test_a_model_trained_with_newcomers_does_not_review_every_new_card(trained: tuple) -> None:
    """Without newcomer rows, a model has never seen a card without a past, and sends
    nearly every new card's first transaction to review; with them, about as many as of all
    transactions. (12 cards a day of 600 card holders: the budget of 100 of 5,000.)"""
    frame, features, _result = trained
    test_fold = Protocol.for_history(frame["event_time"].min()).test_folds()[0]
    _train, test = split(frame, test_fold)
    rows = features[list(FEATURE_NAMES)].to_numpy(dtype=float)[test]
    flagged = {}
    for share in (0.0, 0.05):
        result = train(
            frame, features, backend_name="xgboost", grid=[{"n_estimators": 60, "max_depth": 4}],
            cards_per_day=12, created_at=NOW, source="small.parquet", newcomers=share,
        )  # fmt: skip
        review = result.metadata["thresholds"]["review"]
        assert result.metadata["newcomers"] == share
        flagged[share] = [
            float((backend("xgboost").predict(result.model, x) >= review).mean())
            for x in (rows, as_first_of_card(rows))
        ]
    all_rows, new_cards = flagged[0.0]
    assert all_rows < 0.05 and new_cards > 0.5  # the gap, as it was
    all_rows, new_cards = flagged[0.05]
    assert all_rows < 0.05 and new_cards < 2 * all_rows + 0.01


def test_registry_round_trip_promotion_and_tampering(trained: tuple, tmp_path: Path) -> None:
    _frame, features, result = trained
    registry = Registry(tmp_path / "models")
    with pytest.raises(RegistryError, match="run `fraudstream train` first"):
        registry.load()
    version = registry.save(result.model, result.metadata)
    registry.promote(version)
    assert registry.current() == version and [m["version"] for m in registry.versions()] == [
        version
    ]
    scorer = Scorer(registry.load())
    rows = features.iloc[-500:]
    scores = scorer.score(rows)
    np.testing.assert_array_equal(scores, Scorer(registry.load(version)).score(rows))
    assert ((scores >= 0) & (scores <= 1)).all()
    with pytest.raises(RegistryError, match="no model 'm-nope'"):
        registry.promote("m-nope")
    model_file = next((tmp_path / "models" / version).glob("model.*"))
    model_file.write_bytes(model_file.read_bytes() + b" ")
    with pytest.raises(RegistryError, match="altered"):
        registry.load(version)


def test_a_model_for_other_features_is_refused(trained: tuple, tmp_path: Path) -> None:
    _frame, _features, result = trained
    registry = Registry(tmp_path)
    version = registry.save(result.model, {**result.metadata, "features_version": "0"})
    with pytest.raises(RegistryError, match="built for features v0"):
        Scorer(registry.load(version))


def test_reasons_are_the_largest_contributions_in_words(trained: tuple, tmp_path: Path) -> None:
    _frame, features, result = trained
    registry = Registry(tmp_path)
    scorer = Scorer(registry.load(registry.save(result.model, result.metadata)))
    rows = features.iloc[-2_000:]
    scores = scorer.score(rows)
    risky = rows.iloc[np.argsort(-scores)[:5]]
    reasons = scorer.explain(risky)
    contributions = scorer._backend.contributions(scorer.artifact.model, scorer.matrix(risky))
    logits = np.log(scorer.score(risky) / (1 - scorer.score(risky)))
    np.testing.assert_allclose(
        contributions.sum(axis=1), logits, rtol=1e-4, atol=1e-4
    )  # contributions add up to the log-odds
    for row_reasons, row_contrib in zip(reasons, contributions, strict=True):
        assert len(row_reasons) == 3
        magnitudes = [abs(r.contribution) for r in row_reasons]
        assert magnitudes == sorted(magnitudes, reverse=True)
        assert magnitudes[0] == pytest.approx(np.abs(row_contrib[:-1]).max())
        assert all(r.text and r.feature in FEATURE_NAMES for r in row_reasons)


def test_thresholds_follow_the_alert_budget() -> None:
    rng = np.random.default_rng(0)
    rows = pd.DataFrame(
        {
            "day": np.repeat(np.arange(5), 1_000),
            "card_id": rng.integers(0, 800, 5_000),
            "score": rng.random(5_000),
            "is_fraud": rng.random(5_000) < 0.02,
        }
    )
    rows.loc[rows["score"] > 0.995, "is_fraud"] = True
    thresholds = choose_thresholds(rows, cards_per_day=50, decline_precision=0.9)
    per_day = rows[rows["score"] >= thresholds["review"]].groupby("day")["card_id"].nunique()
    assert 40 <= per_day.median() <= 60
    declined = rows[rows["score"] >= thresholds["decline"]]
    assert declined["is_fraud"].mean() >= 0.9


def test_cli_train_evaluate_and_models(small_history: Path, tmp_path: Path) -> None:
    env = overrides_env({"state_dir": str(tmp_path / "state")})
    trained = run_cli("train", "--history", str(small_history), env=env, timeout=600)
    assert trained.returncode == 0, trained.stderr
    assert "XGBoost (Handbook)" in trained.stdout and "(current)" in trained.stdout
    listed = run_cli("models", "list", env=env)
    version = listed.stdout.split("*")[1].split()[0]
    shown = json.loads(run_cli("models", "show", env=env).stdout)
    assert shown["version"] == version and shown["thresholds"]["review"] > 0
    assert run_cli("models", "promote", version, env=env).returncode == 0
    assert "no model 'm-x'" in run_cli("models", "promote", "m-x", env=env).stderr
    evaluated = run_cli("evaluate", "--history", str(small_history), env=env, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "mean of 4 test folds" in evaluated.stdout

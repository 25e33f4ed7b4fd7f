"""Champion and challenger, pure parts: the gate's verdicts, the retraining protocol's dates,
money recall, the registry's pointers and the engine's model holder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fraudstream.engines.base import ModelHolder
from fraudstream.model.gate import compare, daily_pairs
from fraudstream.model.metrics import money_recall_at_k
from fraudstream.model.protocol import Protocol
from fraudstream.model.registry import Registry, RegistryError

from .test_model import (  # module fixtures: one small trained model
    small_history,  # noqa: F401
    trained,  # noqa: F401
)


def _pairs(champion: list[float], challenger: list[float], money=(0.5, 0.5)) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "day": pd.date_range("2026-01-01", periods=len(champion)),
            "champion_cp": champion,
            "challenger_cp": challenger,
            "champion_money": money[0],
            "challenger_money": money[1],
        }
    )


def test_the_gate_waits_for_enough_matured_days() -> None:
    result = compare(_pairs([0.2] * 3, [0.3] * 3), min_days=7)
    assert result.verdict == "wait" and "3 matured day(s)" in result.why


def test_the_gate_promotes_a_consistently_better_challenger() -> None:
    rng = np.random.default_rng(1)
    champion = list(0.25 + rng.normal(0, 0.01, 10))
    challenger = [c + 0.03 for c in champion]
    result = compare(_pairs(champion, challenger, money=(0.4, 0.45)), min_days=7)
    assert result.verdict == "promote" and result.p_value < 0.05
    assert result.challenger_cp > result.champion_cp


def test_the_gate_keeps_the_champion_on_noise_or_lost_money() -> None:
    noisy = compare(_pairs([0.2, 0.3] * 4, [0.3, 0.2] * 4), min_days=7)
    assert noisy.verdict == "keep"
    slightly = compare(_pairs([0.2, 0.3] * 4, [0.31, 0.2] * 4), min_days=7)
    assert slightly.verdict == "keep" and "not significantly" in slightly.why
    poorer = compare(_pairs([0.2] * 8, [0.3] * 8, money=(0.6, 0.5)), min_days=7)
    assert poorer.verdict == "keep" and "money recall lower" in poorer.why
    worse = compare(_pairs([0.3] * 8, [0.2] * 8), min_days=7)
    assert worse.verdict == "keep" and "not above" in worse.why


def test_daily_pairs_score_both_models_on_the_same_rows() -> None:
    rows = pd.DataFrame(
        {
            "day": ["d1"] * 4 + ["d2"] * 4,
            "card_id": ["a", "b", "c", "d"] * 2,
            "amount": [100.0, 10.0, 5.0, 1.0] * 2,
            "is_fraud": [True, False, True, False] * 2,
            "champion": [0.9, 0.8, 0.1, 0.2] * 2,  # top 1: card a (fraud, 100)
            "challenger": [0.1, 0.2, 0.9, 0.3] * 2,  # top 1: card c (fraud, 5)
        }
    )
    pairs = daily_pairs(rows, k=1)
    assert list(pairs["champion_cp"]) == [1.0, 1.0] and list(pairs["challenger_cp"]) == [1.0, 1.0]
    np.testing.assert_allclose(pairs["champion_money"], 100 / 105)
    np.testing.assert_allclose(pairs["challenger_money"], 5 / 105)


def test_money_recall_counts_fraud_amounts_on_the_top_cards() -> None:
    rows = pd.DataFrame(
        {
            "day": ["d"] * 3, "card_id": ["a", "b", "c"], "amount": [30.0, 70.0, 1.0],
            "is_fraud": [True, True, False], "score": [0.9, 0.1, 0.5],
        }
    )  # fmt: skip
    assert money_recall_at_k(rows, k=1) == pytest.approx(0.3)
    assert money_recall_at_k(rows, k=3) == pytest.approx(1.0)
    assert np.isnan(money_recall_at_k(rows.assign(is_fraud=False), k=1))


def test_the_retraining_protocol_ends_on_the_last_matured_day() -> None:
    last = pd.Timestamp("2026-06-30")
    protocol = Protocol.ending(last)
    latest = protocol.test_folds()[0]
    assert latest.test_start + pd.Timedelta(days=latest.test_days - 1) == last
    # as in the Handbook, validation weeks end before any test week begins
    earliest_test = min(f.test_start for f in protocol.test_folds())
    for fold in protocol.validation_folds():
        assert fold.test_start + pd.Timedelta(days=fold.test_days) <= earliest_test
    assert protocol.first_day() == min(f.train_start for f in protocol.validation_folds())


def test_registry_pointers_and_the_engine_follows_them(trained: tuple, tmp_path: Path) -> None:  # noqa: F811
    _frame, _features, result = trained
    registry = Registry(tmp_path / "models")
    champion = registry.add(result.model, result.metadata)
    other = registry.save(result.model, {**result.metadata, "seed": 7})
    assert champion != other and registry.current() == champion
    with pytest.raises(RegistryError, match="champion"):
        registry.set_challenger(champion)
    holder = ModelHolder(registry)
    assert holder.challenger is None
    registry.set_challenger(other)
    holder.refresh()
    assert holder.challenger is not None and holder.challenger.version == other
    registry.promote(other)  # the challenger becomes champion: no challenger left
    assert registry.challenger() is None and registry.previous_champion() == champion
    assert holder.refresh() and holder.scorer.version == other and holder.challenger is None
    registry.promote(champion)  # rolled back
    assert registry.champions() == [champion, other, champion]
    assert registry.previous_champion() == other


def test_selective_label_weights_stand_explored_declines_for_all_declines() -> None:
    from fraudstream.model.data import selective_label_weights

    frame = pd.DataFrame(
        {
            "decision": ["approve", "decline", "review", "review", "decline"],
            "explored": [False, False, True, False, False],
        }
    )
    weights = selective_label_weights(frame, 0.05)
    assert weights is not None and list(weights) == [1.0, 0.0, 20.0, 1.0, 0.0]
    assert selective_label_weights(frame, 0.0) is None  # exploration off
    assert selective_label_weights(frame.assign(explored=False), 0.05) is None


def test_weights_reach_the_booster(trained: tuple) -> None:  # noqa: F811
    """A row with weight 0 is not learned from: the same model as without that row."""
    from fraudstream.model.backends import backend

    frame, features, _result = trained
    x = features.to_numpy(dtype=float)[:3000]
    y = frame["is_fraud"].to_numpy(dtype=float)[:3000]
    engine = backend("xgboost")
    params = {"n_estimators": 10, "max_depth": 2}
    weight = np.ones(len(y))
    weight[::2] = 0.0
    weighted = engine.predict(engine.fit(x, y, params, 0, weight), x)
    dropped = engine.predict(engine.fit(x[1::2], y[1::2], params, 0), x)
    np.testing.assert_allclose(weighted, dropped, rtol=1e-6)


def test_the_gate_waits_when_no_shadow_score_exists_yet() -> None:
    empty = pd.DataFrame(columns=["day", "card_id", "amount", "is_fraud", "champion", "challenger"])
    result = compare(daily_pairs(empty, k=100), min_days=7)
    assert result.verdict == "wait" and result.days == 0

"""Statistical and structural checks of the simulator (the Handbook preset is generated once)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fraudstream.simulator.generator import SCENARIOS, generate, generate_blocks, preset
from fraudstream.simulator.history import history_metadata, write_history
from fraudstream.simulator.population import _terminals_within

HANDBOOK_DIRECT = {None, "amount_threshold", "compromised_terminal", "compromised_card"}


@pytest.fixture(scope="module")
def handbook() -> pd.DataFrame:
    return generate(preset("handbook"))


@pytest.fixture(scope="module")
def default() -> pd.DataFrame:
    return generate(preset("default", days=91))


def _distance(frame: pd.DataFrame) -> np.ndarray:
    dx = frame["customer_x"] - frame["terminal_x"]
    dy = frame["customer_y"] - frame["terminal_y"]
    return np.hypot(dx, dy).to_numpy()


def test_handbook_preset_reproduces_the_handbook_dataset(handbook: pd.DataFrame) -> None:
    # The Handbook's generated data: 1,754,155 transactions, 0.84 % fraudulent.
    assert 1_700_000 < len(handbook) < 1_810_000
    assert 0.0075 < handbook["is_fraud"].mean() < 0.0095
    assert set(handbook["scenario"].dropna()) == {
        "amount_threshold",
        "compromised_terminal",
        "compromised_card",
    }
    share = handbook["scenario"].value_counts(normalize=True)
    assert 0.55 < share["compromised_terminal"] < 0.70
    assert 0.25 < share["compromised_card"] < 0.38
    assert 0.04 < share["amount_threshold"] < 0.10
    assert handbook["card_id"].nunique() <= 5_000 and handbook["terminal_id"].nunique() <= 10_000
    span = handbook["event_time"].max() - handbook["event_time"].min()
    assert pd.Timedelta(days=182) < span <= pd.Timedelta(days=183)


def test_legitimate_amounts_and_the_threshold_rule(handbook: pd.DataFrame) -> None:
    legit = handbook[~handbook["is_fraud"]]
    assert (legit["amount"] >= 0).all() and (legit["amount"] <= 220).all()
    assert 45 < legit["amount"].mean() < 60  # mean amounts ~ U(5, 100), spread mean/2
    assert handbook.loc[handbook["amount"] > 220, "is_fraud"].all()


def test_card_holders_only_use_terminals_within_the_radius(handbook: pd.DataFrame) -> None:
    assert (_distance(handbook) < 5.0).all()  # Handbook scenarios never move a card


def test_compromised_cards_spend_five_times_more(handbook: pd.DataFrame) -> None:
    per_card = handbook.groupby("card_id")["amount"].median()
    stolen = handbook[handbook["scenario"] == "compromised_card"]
    ratio = (stolen["amount"] / stolen["card_id"].map(per_card)).median()
    assert 3.5 < ratio < 7


def test_compromised_terminals_are_all_fraud_for_28_days(handbook: pd.DataFrame) -> None:
    hits = handbook[handbook["scenario"] == "compromised_terminal"]
    terminal = hits["terminal_id"].iloc[len(hits) // 2]
    on_terminal = handbook[handbook["terminal_id"] == terminal].set_index("event_time")
    times = hits.loc[hits["terminal_id"] == terminal, "event_time"]
    episode = times[times < times.min() + pd.Timedelta(days=28)]
    window = on_terminal.loc[episode.min() : episode.max()]
    assert len(window) >= 5 and window["is_fraud"].all()  # every transaction in the episode
    assert episode.max() - episode.min() < pd.Timedelta(days=28)
    before = on_terminal.loc[: episode.min() - pd.Timedelta(days=28)]
    assert not before["is_fraud"].any() or before["scenario"].ne("compromised_terminal").all()


def test_handbook_labels_all_arrive_within_seven_days(handbook: pd.DataFrame) -> None:
    frauds = handbook[handbook["is_fraud"]]
    delay = frauds["label_reported_at"] - frauds["event_time"]
    assert frauds["label_reported_at"].notna().all()
    assert (delay > pd.Timedelta(0)).all() and (delay <= pd.Timedelta(days=7)).all()
    assert handbook.loc[~handbook["is_fraud"], "label_reported_at"].isna().all()


def test_default_preset_has_every_scenario(default: pd.DataFrame) -> None:
    assert set(default["scenario"].dropna()) == set(SCENARIOS)
    assert 0.006 < default["is_fraud"].mean() < 0.02


def test_card_testing_is_tiny_amounts_then_a_large_one(default: pd.DataFrame) -> None:
    tests = default[default["scenario"] == "card_testing"]
    tiny = tests["amount"] <= 3.0
    assert 0.6 < tiny.mean() < 0.95
    assert (tests.loc[~tiny, "amount"] >= 300).all()
    first_card = tests["card_id"].iloc[0]
    burst = tests[tests["card_id"] == first_card].head(10)
    assert burst["amount"].iloc[0] <= 3.0


def test_impossible_travel_happens_far_from_home(default: pd.DataFrame) -> None:
    travel = default[default["scenario"] == "impossible_travel"]
    assert (_distance(travel) > 40).all()
    legit = default[default["scenario"].isna()]
    assert (_distance(legit) < 5.0).all()


def test_category_shift_moves_spending_to_high_risk_merchants(default: pd.DataFrame) -> None:
    shifted = default[default["scenario"] == "category_shift"]
    assert set(shifted["merchant_category"]) <= {"electronics", "jewelry", "gift_cards"}
    legit_share = (
        default.loc[default["scenario"].isna(), "merchant_category"]
        .isin(["electronics", "jewelry", "gift_cards"])
        .mean()
    )
    assert legit_share < 0.15


def test_default_labels_are_late_and_some_never_come(default: pd.DataFrame) -> None:
    frauds = default[default["is_fraud"]]
    unreported = frauds["label_reported_at"].isna().mean()
    assert 0.04 < unreported < 0.10  # 7 % configured
    delay = (frauds["label_reported_at"] - frauds["event_time"]).dropna()
    assert pd.Timedelta(days=4) < delay.median() < pd.Timedelta(days=8)  # median 6 days
    assert delay.max() <= pd.Timedelta(days=90)


def test_daily_rhythm_and_weekends(default: pd.DataFrame) -> None:
    legit = default[default["scenario"].isna()]
    hours = legit["event_time"].dt.hour.value_counts(normalize=True)
    assert hours[12] > 3 * hours[2]
    daily = legit.groupby(legit["event_time"].dt.date).size()
    weekend = pd.to_datetime(daily.index).day_of_week >= 5
    ratio = daily[weekend].mean() / daily[~weekend].mean()
    assert 0.6 < ratio < 0.73  # weekend_activity = 2/3


def test_same_seed_same_bytes_and_other_seeds_differ(tmp_path: Path) -> None:
    params = preset("default", days=10, n_customers=300, n_terminals=600, seed=11)

    def digest(p: object, name: str) -> str:
        path = tmp_path / name
        write_history(generate_blocks(p), path, p)  # type: ignore[arg-type]
        return hashlib.sha256(path.read_bytes()).hexdigest()

    assert digest(params, "a.parquet") == digest(params, "b.parquet")
    assert digest(params, "a.parquet") != digest(replace(params, seed=12), "c.parquet")
    metadata = history_metadata(tmp_path / "a.parquet")
    assert metadata is not None and metadata["seed"] == 11 and metadata["n_customers"] == 300


def test_unknown_scenarios_and_presets_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown scenario"):
        preset("default", scenarios=("alien_invasion",))
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        preset("nope")


def test_grid_reach_equals_a_brute_force_scan() -> None:
    rng = np.random.default_rng(11)
    customers = np.round(rng.uniform(0, 100, (700, 2)), 4)
    terminals = np.round(rng.uniform(0, 100, (1_500, 2)), 4)
    for radius in (0.9, 5.0, 40.0):
        reach, offsets = _terminals_within(customers, terminals, radius)
        squared = ((customers[:, None, :] - terminals[None, :, :]) ** 2).sum(axis=2)
        rows, cols = np.nonzero(squared < radius * radius)
        assert np.array_equal(reach, cols)
        assert np.array_equal(np.diff(offsets), np.bincount(rows, minlength=len(customers)))

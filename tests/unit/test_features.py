"""Card and terminal features against brute-force references, batching, state, leakage."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraudstream.features import FEATURE_NAMES, CardState, FeatureComputer, describe
from fraudstream.features import card as card_module
from fraudstream.features.card import CardChanges, append_changes, card_features
from fraudstream.features.definitions import CARD_WINDOWS, DISTINCT_TERMINAL_WINDOWS, window_name
from fraudstream.features.pipeline import history_features
from fraudstream.features.terminal import TerminalActivity, count_buckets

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


@st.composite
def streams(draw: st.DrawFn) -> pd.DataFrame:
    """Random transactions on a few cards and terminals, in arrival order, some late."""
    n = draw(st.integers(1, 60))
    gaps = draw(st.lists(st.integers(0, 4 * 86_400), min_size=n, max_size=n))
    times = np.cumsum(gaps)
    late = draw(st.lists(st.integers(0, 7_200), min_size=n, max_size=n))  # up to 2 h late
    return pd.DataFrame(
        {
            "tx_id": [f"t{i}" for i in range(n)],
            "event_time": [
                T0 + timedelta(seconds=int(t - d)) for t, d in zip(times, late, strict=True)
            ],
            "card_id": draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=n, max_size=n)),
            "terminal_id": draw(
                st.lists(st.sampled_from(["T1", "T2", "T3", "T4"]), min_size=n, max_size=n)
            ),
            "amount": draw(
                st.lists(st.integers(0, 50_000).map(lambda c: c / 100), min_size=n, max_size=n)
            ),
            "terminal_x": draw(st.lists(st.floats(0, 100), min_size=n, max_size=n)),
            "terminal_y": draw(st.lists(st.floats(0, 100), min_size=n, max_size=n)),
        }
    )


def brute_force(stream: pd.DataFrame) -> pd.DataFrame:
    """The definitions, one transaction at a time."""
    seen: dict[str, list[tuple[datetime, int, str, float, float]]] = {}
    rows = []
    for tx in stream.itertuples():
        history = seen.setdefault(tx.card_id, [])
        t = max([tx.event_time, *(h[0] for h in history[-1:])])
        cents = round(tx.amount * 100)
        history.append(
            (
                t,
                cents,
                tx.terminal_id,
                round(tx.terminal_x * 1e6) / 1e6,
                round(tx.terminal_y * 1e6) / 1e6,
            )
        )
        out: dict[str, float] = {}
        for window in CARD_WINDOWS:
            inside = [h for h in history if h[0] > t - window]
            out[f"card_tx_count_{window_name(window)}"] = len(inside)
            out[f"card_amount_mean_{window_name(window)}"] = (
                sum(h[1] for h in inside) / len(inside) / 100
            )
        month = [h for h in history if h[0] > t - CARD_WINDOWS[-1]]
        before = month[:-1]
        mean_before = sum(h[1] for h in before) / len(before) if before else math.nan
        out["card_amount_ratio_30d"] = (
            cents / mean_before if before and mean_before > 0 else math.nan
        )
        prev = before[-1] if before else None
        out["card_seconds_since_prev"] = (t - prev[0]).total_seconds() if prev else math.nan
        out["card_terminal_distance"] = (
            math.hypot(prev[3] - history[-1][3], prev[4] - history[-1][4]) if prev else math.nan
        )
        for window in DISTINCT_TERMINAL_WINDOWS:
            terminals = {h[2] for h in history if h[0] > t - window}
            out[f"card_distinct_terminals_{window_name(window)}"] = len(terminals)
        rows.append(out)
    return pd.DataFrame(rows)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=streams(), cut=st.integers(1, 59))
def test_card_windows_match_brute_force_whatever_the_batching(
    stream: pd.DataFrame, cut: int
) -> None:
    expected = brute_force(stream)
    state = CardState()
    parts = [card_features(state, stream.iloc[:cut]), card_features(state, stream.iloc[cut:])]
    for name, values in expected.items():
        got = np.concatenate([p[name] for p in parts if p])
        np.testing.assert_allclose(
            got, values.to_numpy(dtype=float), rtol=1e-12, atol=1e-9, err_msg=name
        )
    whole = card_features(CardState(), stream)
    for name in whole:  # the same bits, one batch or two
        np.testing.assert_array_equal(np.concatenate([p[name] for p in parts if p]), whole[name])


@settings(max_examples=200, deadline=None)
@given(data=st.data(), length=st.integers(1, 80))
def test_distinct_terminals_are_counted_alike_by_row_and_by_window_offset(
    data: st.DataObject, length: int
) -> None:
    """Distinct terminals counted a row at a time or a window offset at a time (whichever
    is fewer array operations for the batch): the same counts either way."""
    previous_same = np.array(
        [data.draw(st.integers(-1, i - 1)) for i in range(length)], dtype=np.int64
    )
    rows = np.array(sorted(data.draw(st.sets(st.integers(0, length - 1), min_size=1))))
    left = np.array([data.draw(st.integers(0, int(i))) for i in rows], dtype=np.int64)
    windows = zip(rows.tolist(), left.tolist(), strict=True)
    brute = [len({j for j in range(lo, i + 1) if previous_same[j] < lo}) for i, lo in windows]
    by_row = card_module._distinct_by_row(previous_same, rows, left)
    by_offset = card_module._distinct_by_offset(previous_same, rows, left, rows - left)
    chosen = card_module._distinct(previous_same, rows, left)
    assert by_row.tolist() == by_offset.tolist() == chosen.tolist() == brute


def test_terminals_are_coded_by_first_appearance_across_calls() -> None:
    activity = TerminalActivity()
    first = activity._encode(np.array(["T9", "T2", "T9", "T5"], dtype=object))
    again = activity._encode(pd.Series(["T5", "T7", "T2", "T8", "T7"]))
    assert first.tolist() == [0, 1, 0, 2] and again.tolist() == [2, 3, 1, 4, 3]
    assert list(activity._terminals) == ["T9", "T2", "T5", "T7", "T8"]
    assert first.dtype == again.dtype == np.int64


@pytest.mark.parametrize("in_order", [True, False])
def test_many_days_of_counts_added_at_once_give_the_tables_of_day_by_day(in_order: bool) -> None:
    """A seal after a restart adds forty days in one call; the codes, the days the counts
    are filed under and so every table must be those of adding the days one by one (in
    order, as the database reads them, or not)."""
    rng = np.random.default_rng(5)
    first = np.datetime64("2035-03-01")
    days = [first + int(d) for d in (range(12) if in_order else rng.permutation(12))]
    chunks = [
        (rng.choice([f"T{i}" for i in range(40)], int(rng.integers(1, 30))), day) for day in days
    ]
    one_by_one, at_once = TerminalActivity(), TerminalActivity()
    for terminals, day in chunks:
        one_by_one.add_daily_counts(
            terminals, np.full(len(terminals), day), np.arange(1, len(terminals) + 1)
        )
    at_once.add_daily_counts(
        np.concatenate([terminals for terminals, _day in chunks]),
        np.concatenate([np.full(len(terminals), day) for terminals, day in chunks]),
        np.concatenate([np.arange(1, len(terminals) + 1) for terminals, _day in chunks]),
    )
    assert at_once._codes == one_by_one._codes
    for day in (first + 9, first + 12, first + 20):
        pd.testing.assert_frame_equal(at_once.table(day).frame, one_by_one.table(day).frame)


def _stream(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "tx_id": [f"t{i}" for i in range(n)],
            "event_time": pd.Timestamp(T0)
            + pd.to_timedelta(np.sort(rng.integers(0, 40 * 86_400, n)), unit="s"),
            "card_id": rng.choice([f"c{i}" for i in range(50)], n),
            "terminal_id": rng.choice([f"T{i}" for i in range(30)], n),
            "amount": np.round(rng.gamma(2, 30, n), 2),
            "terminal_x": rng.uniform(0, 100, n),
            "terminal_y": rng.uniform(0, 100, n),
            "customer_x": rng.uniform(0, 100, n),
            "customer_y": rng.uniform(0, 100, n),
        }
    )


def test_state_snapshot_round_trip_resumes_exactly() -> None:
    stream = _stream(3_000)
    uninterrupted = FeatureComputer().compute(stream)
    first = FeatureComputer()
    head = first.compute(stream.iloc[:1_700])
    snapshot = first.state.to_bytes()
    restored = FeatureComputer(state=CardState.from_bytes(snapshot))
    tail = restored.compute(stream.iloc[1_700:])
    pd.testing.assert_frame_equal(pd.concat([head, tail]), uninterrupted)
    assert CardState.from_bytes(snapshot).cards.keys() == first.state.cards.keys()
    assert len(snapshot) < 50 * 48 * 600  # compact: 48 bytes a remembered transaction


def test_dirty_keys_restore_over_an_older_snapshot() -> None:
    stream = _stream(2_000, seed=3)
    engine = FeatureComputer()
    engine.compute(stream.iloc[:1_000])
    base = engine.state.to_bytes()
    engine.state.dirty.clear()
    engine.compute(stream.iloc[1_000:1_500])
    delta = engine.state.to_bytes(sorted(engine.state.dirty))
    restored = CardState.from_bytes(base)
    restored.merge(CardState.from_bytes(delta))
    assert set(restored.cards) == set(engine.state.cards)
    for card, rows in engine.state.cards.items():
        np.testing.assert_array_equal(restored.cards[card], rows)


def test_idle_cards_expire() -> None:
    state = CardState()
    card_features(state, _stream(200))
    now = int(pd.Timestamp(T0 + timedelta(days=80)).value // 1000)
    assert state.expire(now) == len({*_stream(200)["card_id"]})
    assert len(state) == 0


def test_forgetting_idle_cards_changes_no_feature() -> None:
    """Cards idle for over the TTL before the newest transaction are forgotten; a card that
    comes back gets the features it would have got from the whole history."""
    early = _stream(300)  # 40 days from T0
    returning = early.iloc[:50].assign(
        tx_id=[f"back{i}" for i in range(50)],
        event_time=pd.Timestamp(T0) + pd.Timedelta(days=90) + pd.to_timedelta(range(50), "s"),
    )
    recent = early.iloc[50:60].assign(
        tx_id=[f"r{i}" for i in range(10)], card_id="c-active",
        event_time=pd.Timestamp(T0) + pd.Timedelta(days=89),
    )  # fmt: skip
    kept, forgetful = CardState(), CardState()
    for state in (kept, forgetful):
        card_features(state, early)
        card_features(state, recent)
    assert forgetful.expire_idle() == len({*early["card_id"]})  # idle for 49+ days
    assert set(forgetful.cards) == {"c-active"}
    whole, after = card_features(kept, returning), card_features(forgetful, returning)
    for name in whole:
        np.testing.assert_array_equal(whole[name], after[name], err_msg=name)


def test_no_label_leakage() -> None:
    """A label reported after a transaction never changes that transaction's features."""
    stream = _stream(4_000, seed=7)
    frauds = stream.sample(300, random_state=1).assign(
        reported_at=lambda f: (
            f["event_time"]
            + pd.to_timedelta(np.random.default_rng(2).integers(0, 10 * 86_400, 300), unit="s")
        )
    )
    all_known = history_features(stream, frauds)
    cut = pd.Timestamp(T0 + timedelta(days=20, hours=13))
    only_before = history_features(stream, frauds[frauds["reported_at"] <= cut])
    earlier = (stream["event_time"] < cut).to_numpy()
    pd.testing.assert_frame_equal(all_known[earlier], only_before[earlier])
    assert not all_known[~earlier].equals(only_before[~earlier])  # the labels do matter later


def test_terminal_risk_uses_the_delayed_window_and_known_labels() -> None:
    activity = TerminalActivity()
    day = pd.Timestamp("2026-03-20", tz="UTC")
    txs = pd.DataFrame(
        {
            "terminal_id": ["T1"] * 4 + ["T2"],
            "event_time": [day - timedelta(days=d) for d in (8, 8, 9, 2, 8)],
        }
    )
    activity.add_transactions(txs["terminal_id"], txs["event_time"])
    activity.add_frauds(
        pd.Series(["T1", "T1"]),
        pd.Series([day - timedelta(days=8), day - timedelta(days=2)]),
        pd.Series([day - timedelta(days=1), day + timedelta(hours=1)]),  # the second: not yet known
    )
    table = activity.table(np.datetime64("2026-03-20"))
    row = table.lookup(np.array(["T1", "T2", "T9"]))
    assert list(row["terminal_tx_count_1d_delayed"]) == [2, 1, 0]  # day D-8 only
    assert list(row["terminal_tx_count_7d_delayed"]) == [3, 1, 0]  # days D-14..D-8
    assert list(row["terminal_risk_1d_delayed"]) == [0.5, 0, 0]
    # Known window [D-8, D-1): T1 has 3 transactions there; the D-8 fraud is known, the D-2
    # fraud is reported only after D starts.
    assert list(row["terminal_known_frauds_7d"]) == [1, 0, 0]
    assert list(row["terminal_known_fraud_rate_7d"]) == [pytest.approx(1 / 3), 0, 0]


def test_feature_vector_is_complete_and_deterministic() -> None:
    stream = _stream(1_000)
    first = FeatureComputer().compute(stream)
    assert list(first.columns) == list(FEATURE_NAMES)
    pd.testing.assert_frame_equal(first, FeatureComputer().compute(stream))
    assert first["card_distance_from_home"].notna().all()


@pytest.mark.parametrize(
    ("feature", "value", "words"),
    [
        ("card_amount_ratio_30d", 5.2, "amount 5.2× this card's 30-day average"),
        ("card_tx_count_1h", 4, "4 transactions on this card in 1h"),
        ("terminal_risk_7d_delayed", 0.25, "terminal's fraud rate 25% over 7d a week ago"),
        ("card_seconds_since_prev", 90, "2 min since this card's previous transaction"),
        ("card_amount_ratio_30d", float("nan"), "card_amount_ratio_30d unknown (no history)"),
    ],
)
def test_features_read_in_words(feature: str, value: float, words: str) -> None:
    assert describe(feature, value) == words


def test_a_computer_keeps_updating_the_state_it_was_given() -> None:
    # Engines hand each partition's (possibly empty) state to a new computer per batch.
    stream = _stream(600)
    state = CardState()
    parts = [
        FeatureComputer(state=state).compute(stream.iloc[i : i + 100]) for i in range(0, 600, 100)
    ]
    assert len(state) > 0
    pd.testing.assert_frame_equal(pd.concat(parts), FeatureComputer().compute(stream))


def test_counts_summed_per_bucket_give_the_same_terminal_table() -> None:
    # Engines load counts per `count_buckets` range, not per day; the table must not change.
    rng = np.random.default_rng(5)
    day = np.datetime64("2026-03-01")
    days = day - rng.integers(1, 60, 4_000)
    terminals = rng.choice([f"T{i}" for i in range(40)], 4_000).astype(object)
    counts = rng.integers(1, 9, 4_000)
    fraud_days = day - rng.integers(1, 40, 50)
    frauds = (
        pd.Series(rng.choice(terminals, 50)),
        pd.Series(pd.to_datetime(fraud_days).tz_localize("UTC")),
        pd.Series(pd.to_datetime(fraud_days + 3).tz_localize("UTC")),
    )
    daily = TerminalActivity()
    daily.add_daily_counts(terminals, days, counts)
    daily.add_frauds(*frauds)

    edges = count_buckets(day)
    inside = (days >= edges[0]) & (days < edges[-1])
    bucket_first_day = edges[np.searchsorted(edges, days[inside], side="right") - 1]
    bucketed = TerminalActivity()
    bucketed.add_daily_counts(terminals[inside], bucket_first_day, counts[inside])
    bucketed.add_frauds(*frauds)

    expected = daily.table(day).frame
    got = bucketed.table(day).frame
    assert (expected.to_numpy() > 0).any()
    pd.testing.assert_frame_equal(got, expected.loc[got.index])
    assert (expected.drop(got.index) == 0).all().all()  # terminals only seen before the windows


def test_partitioned_batches_give_the_features_of_each_partition_alone() -> None:
    # An engine scores all its partitions in one batch; each card's history is in the state of
    # its partition. The numbers must be those of scoring each partition on its own.
    stream = _stream(1_200)
    partition_of_card = {card: i % 3 for i, card in enumerate(stream["card_id"].unique())}
    partitions = stream["card_id"].map(partition_of_card).to_numpy()
    together: dict[int, CardState] = {p: CardState() for p in range(3)}
    alone: dict[int, CardState] = {p: CardState() for p in range(3)}
    for start in range(0, 1_200, 300):
        batch = stream.iloc[start : start + 300]
        parts = partitions[start : start + 300]
        got = FeatureComputer().compute_partitioned(batch, parts, together)
        for p in range(3):
            rows = batch[parts == p]
            expected = FeatureComputer(state=alone[p]).compute(rows)
            pd.testing.assert_frame_equal(got.loc[rows.index], expected)
    assert all(len(state) > 0 for state in together.values())


@pytest.mark.parametrize("chunk", [200_000, 37])
def test_recorded_changes_rebuild_the_state_exactly(
    chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An incremental checkpoint stores the rows appended since the last one; replayed over
    the state at that checkpoint (here: batch after batch, some cards late, histories past
    the 30-day window; a segment replayed whole or a few rows at a time), they give the
    very histories the features kept."""
    monkeypatch.setattr("fraudstream.features.card._APPEND_CHUNK", chunk)
    stream = _stream(6_000, seed=5)
    late = stream.sample(300, random_state=1).index  # events arriving out of order
    stream.loc[late, "event_time"] -= pd.Timedelta(days=3)
    live = CardState(changes=CardChanges())
    segments = []
    since = 0  # rows appended since the last checkpoint: what len() of the changes must say
    for start in range(0, len(stream), 700):
        batch = stream.iloc[start : start + 700]
        card_features(live, batch)
        since += len(batch)
        assert live.changes is not None and len(live.changes) == since
        if start % 2100 == 0:  # a checkpoint every third batch
            segments.append(live.changes.to_bytes())
            live.changes, since = CardChanges(), 0
    segments.append(live.changes.to_bytes())
    rebuilt = CardState()
    for blob in segments:
        append_changes(rebuilt, CardChanges.from_bytes(blob))
    assert set(rebuilt.cards) == set(live.cards)
    for card, rows in live.cards.items():
        np.testing.assert_array_equal(rebuilt.cards[card], rows, err_msg=card)
    assert max(len(rows) for rows in live.cards.values()) < 6_000 / 50  # trimmed: 30 days


def test_a_snapshot_replays_as_changes() -> None:
    state = CardState()
    card_features(state, _stream(1_500, seed=2))
    rebuilt = CardState()
    append_changes(rebuilt, CardChanges.of_snapshot(state.to_bytes()))
    assert rebuilt.to_bytes() == state.to_bytes()

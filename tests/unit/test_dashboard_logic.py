"""The dashboard's arithmetic: latency percentiles from histograms, PSI, PR curve, budget;
and how it shows things: reasons, durations, amounts, tables, time axes."""

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from fraudstream.dashboard.format import (
    amount_text,
    duration_text,
    latency_text,
    pr_steps,
    reasons_text,
    table,
    utc_axis,
)
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
    reasons = [
        {"feature": "amount", "contribution": 0.8, "text": "amount far above the card's mean"}
    ]
    assert reasons_text(reasons, ["card_velocity_1h"]) == (
        "rule: card_velocity_1h; amount far above the card's mean"
    )
    assert reasons_text([], []) == "—"


def test_why_lists_only_the_reasons_that_raised_the_score() -> None:
    reasons = [
        {"feature": "amount", "value": 900.0, "contribution": 1.2, "text": "amount far above"},
        {"feature": "tx_count_1d", "value": 1.0, "contribution": -0.7, "text": "few today"},
        {"feature": "terminal_risk", "value": 0.0, "contribution": 0.0, "text": "calm terminal"},
        {"feature": "night", "value": 1.0, "text": "at night"},  # sign unknown
        {"feature": "card_mean", "value": 20.0, "contribution": 0.3, "text": "usual amount"},
    ]
    assert reasons_text(reasons, []) == "amount far above; usual amount"
    assert reasons_text(reasons[1:3], ["card_velocity_1h"]) == "rule: card_velocity_1h"
    assert reasons_text(reasons[1:2], None) == "—"


def test_the_pr_steps_end_at_the_last_operating_point() -> None:
    # Frauds all score in the top three of five bins; the two lowest hold only legitimate
    # transactions: lowering the threshold there adds reviews, never recall.
    histogram = pd.DataFrame(
        {"bin": [0, 1, 2, 3, 4], "legitimate": [500, 80, 6, 3, 1], "fraud": [0, 0, 2, 3, 5]}
    )
    steps = pr_steps(pr_curve(histogram))
    assert steps["threshold"].tolist() == [0.8, 0.6, 0.4]
    assert steps["recall"].tolist() == [0.5, 0.8, 1.0]
    assert steps["precision"].tolist() == [5 / 6, 8 / 12, 10 / 20]
    last = steps.iloc[-1]
    assert (last["recall"], last["precision"]) == (1.0, 0.5)  # not (1.0, 10 / 600)
    # A fraud in the lowest bin: recall 1 only by flagging everything — that point is the
    # last operating point, reached by a step, not by a line drawn across.
    histogram.loc[0, "fraud"] = 1
    steps = pr_steps(pr_curve(histogram))
    assert steps["threshold"].tolist() == [0.8, 0.6, 0.4, 0.0]
    assert steps["recall"].is_monotonic_increasing and steps["recall"].iloc[-1] == 1.0
    assert pr_steps(pr_curve(histogram.assign(fraud=0))).empty


def test_durations_and_amounts_fit_a_tile() -> None:
    assert duration_text(None) == "—"
    assert duration_text(125) == "125 ms" and duration_text(2_100) == "2.1 s"
    assert duration_text(75_000) == "75 s" and duration_text(3_600_000) == "60 min"
    assert duration_text(3 * 86_400_000) == "3.0 days"
    assert latency_text(42.4, 125.0) == "42 / 125 ms"
    assert latency_text(800, 2_400) == "0.8 / 2.4 s"
    assert latency_text(60_000, 180_000) == "1.0 / 3.0 min"
    assert latency_text(8 * 86_400_000, 9 * 86_400_000) == "8.0 / 9.0 d"
    assert latency_text(None, 5.0) == "—"
    assert amount_text(1234.5) == "1,234.50" and amount_text(123_456.7) == "123,457"
    assert amount_text(12_345_678.9) == "12.35 M" and amount_text(3.2e9) == "3.20 bn"
    for ms in (0.4, 999, 1_000, 59_999, 3_599_999, 86_399_999):
        assert len(latency_text(ms / 3, ms)) <= 12, latency_text(ms / 3, ms)


def test_a_table_for_people_has_headers_rounded_numbers_and_utc_stamps() -> None:
    at = datetime(2026, 3, 1, 12, 30, 5, 123456, tzinfo=timezone(timedelta(hours=2)))
    raw = pd.DataFrame(
        {"engine_id": ["e-1"], "throughput_tps": [502.5388], "lag": [12.0],
         "heartbeat_at": [at], "ignored": ["x"]}
    )  # fmt: skip
    shown = table(
        raw,
        {"engine_id": "engine", "throughput_tps": "tx/s", "lag": "lag (messages)",
         "heartbeat_at": "last heartbeat"},
        digits={"throughput_tps": 1, "lag": 0},
    )  # fmt: skip
    assert shown.columns.tolist() == ["engine", "tx/s", "lag (messages)", "last heartbeat"]
    assert shown.iloc[0].tolist() == ["e-1", 502.5, 12, "2026-03-01 10:30:05 UTC"]


def test_time_axes_are_utc_wall_clock() -> None:
    zoned = pd.Series([datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))])
    assert utc_axis(zoned).tolist() == [pd.Timestamp("2026-03-01 10:00")]
    index = pd.DatetimeIndex(zoned)
    assert utc_axis(index).tz is None and utc_axis(index)[0] == pd.Timestamp("2026-03-01 10:00")

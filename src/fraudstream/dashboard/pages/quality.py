"""Model quality over matured labels: per-day AP, AUC-ROC, CP@k, precision and recall of the
decisions; the precision–recall curve; what a threshold costs in reviews; models compared.
Reads what the engine measured once each day matured (``store.quality``)."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

import altair as alt
import pandas as pd
import streamlit as st

from fraudstream.dashboard import queries
from fraudstream.dashboard.common import Unavailable, now, read, settings
from fraudstream.dashboard.format import pr_steps, table
from fraudstream.dashboard.quality import budget, pr_curve
from fraudstream.store.quality import decline_precision

MEASURES = ["AP", "AUC-ROC", "CP@k", "money recall@k", "precision", "recall"]
_DAILY = {
    "day": "day (UTC)", "model_version": "model", "transactions": "transactions",
    "frauds": "frauds", "AP": "AP", "AUC-ROC": "AUC-ROC", "CP@k": "CP@k",
    "money recall@k": "money recall@k", "k": "k", "flagged": "flagged",
    "precision": "precision", "recall": "recall",
}  # fmt: skip
_EVENTS = {"at": "when", "action": "action", "version": "version", "previous": "previous",
           "actor": "by", "evidence": "evidence"}  # fmt: skip


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=timezone.utc)


def _per_model(frame: pd.DataFrame, keys: list[str], measures: list[str]) -> pd.DataFrame:
    """Volume summed and ``measures`` averaged per ``keys``, as a table for people."""
    totals = frame.groupby(keys, as_index=False).agg(
        {"transactions": "sum", "frauds": "sum", **dict.fromkeys(measures, "mean")}
    )
    names = {key: _DAILY.get(key, key) for key in [*keys, "transactions", "frauds", *measures]}
    return table(totals, names, digits=dict.fromkeys(measures, 3))


def _pr_chart(steps: pd.DataFrame) -> alt.LayerChart:
    """The operating points and the steps between them: a threshold's precision holds until
    the next threshold reaches a higher recall; the curve ends where the points end."""
    base = alt.Chart(steps).encode(
        x=alt.X("recall:Q", scale=alt.Scale(domain=[0, 1]), title="recall"),
        y=alt.Y("precision:Q", scale=alt.Scale(domain=[0, 1]), title="precision"),
        tooltip=[alt.Tooltip("threshold:Q", title="flag at or above", format=".2f"),
                 alt.Tooltip("recall:Q", format=".1%"), alt.Tooltip("precision:Q", format=".1%")],
    )  # fmt: skip
    chart: alt.LayerChart = base.mark_line(interpolate="step-before") + base.mark_point(filled=True)
    return chart


st.title("Model quality")
maturity = settings().engine.quality_maturity_days
days = st.slider("Days to measure", 1, 60, 14)
until = now().date()
since = until - timedelta(days=days + maturity)
try:
    measured_days = read(queries.quality_days, since, until)
    histogram = read(queries.quality_histogram, since, until)
    events = read(queries.model_events)
    declines = read(
        decline_precision, _midnight(since), _midnight(until - timedelta(days=maturity))
    )
except Unavailable:
    st.stop()
daily = measured_days[measured_days["role"] == "champion"].drop(columns=["role"])
if daily.empty:
    st.info(
        f"No day measured yet: a day is measured once its labels have matured "
        f"({maturity} days, engine.quality_maturity_days) by the running engine, or now with "
        "`fraudstream quality`."
    )
    st.stop()
daily = daily[daily["day"] >= daily["day"].max() - timedelta(days=days - 1)]
measured = daily["day"].nunique()
st.caption(
    f"{measured} measured day(s), {daily['day'].min():%F} to {daily['day'].max():%F}; "
    f"{int(daily['transactions'].sum()):,} transactions, {int(daily['frauds'].sum()):,} "
    f"known frauds. Flagged = review or decline."
)
shown = daily.assign(
    precision=daily["flagged_frauds"] / daily["flagged"].where(daily["flagged"] > 0),
    recall=daily["flagged_frauds"] / daily["frauds"].where(daily["frauds"] > 0),
).drop(columns=["flagged_frauds"])
st.subheader("Per day")
st.line_chart(shown.groupby("day")[["AP", "AUC-ROC", "CP@k"]].mean(), x_label="day (UTC)")
st.dataframe(table(shown, _DAILY, digits=dict.fromkeys(MEASURES, 3)), hide_index=True,
             width="stretch")  # fmt: skip

curve_col, budget_col = st.columns(2)
with curve_col:
    st.subheader("Precision–recall")
    curve = pr_curve(histogram)
    if curve.empty:
        st.info("No fraud in this period: no curve to draw.")
    else:
        st.altair_chart(_pr_chart(pr_steps(curve)), width="stretch")
with budget_col:
    st.subheader("Threshold and alert budget")
    threshold = st.slider("Flag scores at or above", 0.0, 1.0, 0.5, 0.01)
    cost = budget(histogram, threshold, measured)
    a, b = st.columns(2)
    a.metric("Reviews per day", f"{cost['reviews_per_day']:,.0f}")
    b.metric("Frauds caught per day", f"{cost['frauds_caught_per_day']:,.1f}")
    a.metric("Recall", "—" if pd.isna(cost["recall"]) else f"{cost['recall']:.1%}")
    b.metric("Precision", "—" if pd.isna(cost["precision"]) else f"{cost['precision']:.1%}")

if daily["model_version"].nunique() > 1:
    st.subheader("Models compared")
    st.dataframe(
        _per_model(shown, ["model_version"], ["AP", "AUC-ROC", "CP@k"]),
        hide_index=True,
        width="stretch",
    )

shadow = measured_days[measured_days["role"] == "shadow"]
if not shadow.empty:
    st.subheader("Champion and challenger, on the same days")
    same_days = measured_days[measured_days["day"].isin(set(shadow["day"]))]
    label = same_days["role"] + " " + same_days["model_version"]
    st.line_chart(same_days.assign(model=label), x="day", y="CP@k", color="model",
                  x_label="day (UTC)")  # fmt: skip
    st.dataframe(
        _per_model(same_days, ["role", "model_version"],
                   ["AP", "AUC-ROC", "CP@k", "money recall@k"]),
        hide_index=True,
        width="stretch",
    )  # fmt: skip
    st.caption(
        "The challenger is scored in shadow on the champion's traffic (stored, never acted "
        "on). `fraudstream models gate` promotes it when it is better with significance; "
        "`fraudstream models promote VERSION` does it by hand."
    )
if declines.explored:
    st.subheader("Decline precision, from explored declines")
    interval = f"95 %: {declines.low:.1%}–{declines.high:.1%}"
    st.metric(
        "Decline precision (matured days)", f"{declines.estimate:.1%}", interval,
        delta_color="off",
    )  # fmt: skip
    st.caption(
        f"{declines.explored:,} of the model's would-be declines were sent to review instead "
        "(policy.explore_share), chosen at random: their outcomes estimate what declines "
        "cost, which declined transactions themselves never tell."
    )
if not events.empty:
    st.subheader("Model changes")
    st.dataframe(table(events, _EVENTS), hide_index=True, width="stretch")

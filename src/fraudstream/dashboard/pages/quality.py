"""Model quality over matured labels: per-day AP, AUC-ROC, CP@k, precision and recall of the
decisions; the precision–recall curve; what a threshold costs in reviews; models compared."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import streamlit as st

from fraudstream.dashboard import queries
from fraudstream.dashboard.common import Unavailable, now, read
from fraudstream.dashboard.quality import budget, daily_quality, pr_curve

st.title("Model quality")
left, right = st.columns(2)
days = left.slider("Days to measure", 1, 60, 14)
maturity = right.slider(
    "Labels mature after (days)", 0, 60, 7,
    help="Days younger than this are left out: their frauds may not be reported yet.",
)  # fmt: skip
until = now().replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=maturity)
since = until - timedelta(days=days)
st.caption(f"Transactions from {since:%F} to {until - timedelta(days=1):%F} (UTC days).")


@st.cache_data(ttl=300, show_spinner="Joining predictions and labels…")
def _labelled(since_iso: str, until_iso: str) -> pd.DataFrame:
    return read(queries.labelled_scores, pd.Timestamp(since_iso), pd.Timestamp(until_iso))


try:
    frame = _labelled(since.isoformat(), until.isoformat())
except Unavailable:
    st.stop()
if frame.empty:
    st.info(
        "No matured predictions in this period yet: quality needs transactions older than the "
        "label delay. Lower the maturity or wait; `fraudstream status` shows the engine."
    )
    st.stop()

frauds = int(frame["is_fraud"].sum())
st.caption(f"{len(frame):,} transactions, {frauds:,} known frauds.")
daily = daily_quality(frame)
st.subheader("Per day")
st.line_chart(daily.set_index("day")[["AP", "AUC-ROC", "CP@100"]])
st.dataframe(daily, hide_index=True, width="stretch")

curve_col, budget_col = st.columns(2)
with curve_col:
    st.subheader("Precision–recall")
    curve = pr_curve(frame["is_fraud"].to_numpy(), frame["score"].to_numpy())
    if curve.empty:
        st.info("No fraud in this period: no curve to draw.")
    else:
        st.line_chart(curve, x="recall", y="precision")
with budget_col:
    st.subheader("Threshold and alert budget")
    threshold = st.slider("Flag scores at or above", 0.0, 1.0, 0.5, 0.01)
    cost = budget(frame, threshold)
    a, b = st.columns(2)
    a.metric("Reviews per day", f"{cost['reviews_per_day']:,.0f}")
    b.metric("Frauds caught per day", f"{cost['frauds_caught_per_day']:,.1f}")
    a.metric("Recall", f"{cost['recall']:.1%}" if cost["recall"] == cost["recall"] else "—")
    b.metric(
        "Precision", f"{cost['precision']:.1%}" if cost["precision"] == cost["precision"] else "—"
    )

versions = frame["model_version"].unique()
if len(versions) > 1:
    st.subheader("Models compared")
    st.dataframe(
        pd.concat(
            [
                daily_quality(part).assign(model=version)
                for version, part in frame.groupby("model_version")
            ]
        ),
        hide_index=True,
        width="stretch",
    )

"""Drift: the score distribution of a recent period against a reference period (PSI)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import streamlit as st

from fraudstream.dashboard import queries
from fraudstream.dashboard.common import Unavailable, now, read
from fraudstream.dashboard.quality import psi
from fraudstream.store.sink import SCORE_BINS

BINS = SCORE_BINS

st.title("Drift")
try:
    span = read(queries.stored_span)
except Unavailable:
    st.stop()
if span is None:
    st.info("No predictions yet — is the engine running? `fraudstream status`.")
    st.stop()
first, last = span
end = now()
left, right = st.columns(2)
reference = left.date_input(
    "Reference period", (first.date(), min(first + timedelta(days=1), end).date()),
    min_value=first.date(), max_value=end.date(),
)  # fmt: skip
current_hours = right.select_slider("Compare the last", [1, 6, 24, 72, 168], value=24,
                                    format_func=lambda h: f"{h} h")  # fmt: skip
if not isinstance(reference, tuple) or len(reference) != 2:
    st.info("Pick the reference period's first and last day.")
    st.stop()
ref_since = pd.Timestamp(reference[0], tz="UTC")
ref_until = pd.Timestamp(reference[1], tz="UTC") + pd.Timedelta(days=1)
try:
    expected = read(queries.score_histogram, ref_since, ref_until)
    actual = read(queries.score_histogram, end - timedelta(hours=current_hours), end)
except Unavailable:
    st.stop()
if expected.sum() == 0 or actual.sum() == 0:
    st.info("One of the two periods has no predictions: pick periods in which the engine ran.")
    st.stop()
index = psi(expected, actual)
verdict = "stable" if index < 0.1 else "moderate shift" if index < 0.25 else "large shift"
st.metric("Population stability index (score)", f"{index:.3f}", verdict, delta_color="off")
edges = np.linspace(0, 1, BINS + 1)
st.bar_chart(
    pd.DataFrame(
        {
            "reference": expected / expected.sum(),
            f"last {current_hours} h": actual / actual.sum(),
        },
        index=[f"{low:.2f}" for low in edges[:-1]],
    ),
    stack=False,
)
st.caption(
    "Shares of predictions per score bin, by the time they were stored. Feature drift needs "
    "the features' values, which the engines do not store yet."
)

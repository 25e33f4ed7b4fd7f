"""Drift: scores and key features of a recent period against the model's training window or
a stored reference period, by the population stability index (PSI)."""

from __future__ import annotations

from datetime import timedelta
from itertools import pairwise

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from fraudstream.dashboard import queries
from fraudstream.dashboard.common import Unavailable, now, read
from fraudstream.dashboard.format import table
from fraudstream.dashboard.quality import psi
from fraudstream.model.profile import SCORE_BINS

TRAINING = "The model's training window"
PERIOD = "A stored period"


def verdict(index: float) -> str:
    return "stable" if index < 0.1 else "moderate shift" if index < 0.25 else "large shift"


def bin_labels(cuts: list[float]) -> list[str]:
    """Readable names of a profile's bins: ≤ each cut, above the last, missing."""
    return [f"≤ {cut:,.4g}" for cut in cuts] + [f"> {cuts[-1]:,.4g}" if cuts else "all", "missing"]


def score_chart(periods: dict[str, np.ndarray]) -> alt.Chart:
    """Each period's share of predictions per score bin, side by side, shares on a log
    scale (a share of zero has no place on it: its bar is left out)."""
    edges = np.linspace(0, 1, SCORE_BINS + 1)
    bins = [f"{low:.2f}–{high:.2f}" for low, high in pairwise(edges)]
    shares = pd.concat(
        pd.DataFrame({"score": bins, "period": name, "share": counts / counts.sum(),
                      "predictions": np.rint(counts).astype(int)})
        for name, counts in periods.items()
    )  # fmt: skip
    chart: alt.Chart = (
        alt.Chart(shares[shares["share"] > 0])
        .mark_bar()
        .encode(
            x=alt.X("score:N", scale=alt.Scale(domain=bins), title="score"),
            xOffset=alt.XOffset("period:N", sort=list(periods)),
            y=alt.Y(
                "share:Q",
                scale=alt.Scale(type="log"),
                stack=None,  # side by side: a stack would start at zero, off a log scale
                axis=alt.Axis(format="%"),
                title="share of predictions (log scale)",
            ),
            color=alt.Color("period:N", sort=list(periods), title=None),
            tooltip=["period", "score", alt.Tooltip("share:Q", format=".3%"), "predictions"],
        )
    )
    return chart


st.title("Drift")
try:
    span = read(queries.stored_span)
except Unavailable:
    st.stop()
if span is None:
    st.info("No predictions yet — is the engine running? `fraudstream status`.")
    st.stop()
first, _ = span
end = now()
left, right = st.columns(2)
current_hours = left.select_slider("Compare the last", [1, 6, 24, 72, 168], value=24,
                                   format_func=lambda h: f"{h} h")  # fmt: skip
against = right.radio("against", [TRAINING, PERIOD], horizontal=True)
since = end - timedelta(hours=current_hours)
try:
    model = read(queries.drift_model, since, end)
    profile = read(queries.model_profile, model) if model else None
except Unavailable:
    st.stop()

reference_scores: np.ndarray | None = None
reference_features: dict[str, np.ndarray] = {}
if against == TRAINING:
    if profile is None:
        st.info(
            "No training profile for the model that scored this period: models trained before "
            "profiles existed have none. `fraudstream train` saves one; or compare against a "
            "stored period."
        )
        st.stop()
    reference_scores = np.asarray(profile.score_shares) * profile.rows
    reference_features = {name: np.asarray(shares) for name, shares in profile.shares.items()}
    st.caption(f"Reference: the training window of model {model} ({profile.rows:,} transactions).")
else:
    reference = st.date_input(
        "Reference period", (first.date(), min(first + timedelta(days=1), end).date()),
        min_value=first.date(), max_value=end.date(),
    )  # fmt: skip
    if not isinstance(reference, tuple) or len(reference) != 2:
        st.info("Pick the reference period's first and last day.")
        st.stop()
    ref_since = pd.Timestamp(reference[0], tz="UTC")
    ref_until = pd.Timestamp(reference[1], tz="UTC") + pd.Timedelta(days=1)
    try:
        reference_scores = read(queries.score_histogram, ref_since, ref_until)
        if model:
            reference_features = read(queries.feature_histograms, model, ref_since, ref_until)
    except Unavailable:
        st.stop()

try:
    current_scores = read(queries.score_histogram, since, end)
    current_features = read(queries.feature_histograms, model, since, end) if model else {}
except Unavailable:
    st.stop()
if reference_scores.sum() == 0 or current_scores.sum() == 0:
    st.info("One of the two periods has no predictions: pick periods in which the engine ran.")
    st.stop()

st.subheader("Score")
index = psi(reference_scores, current_scores)
st.metric("Population stability index (score)", f"{index:.3f}", verdict(index),
          delta_color="off")  # fmt: skip
st.altair_chart(
    score_chart({"reference": reference_scores, f"last {current_hours} h": current_scores}),
    width="stretch",
)
st.caption(
    "Share of each period's predictions per score bin, on a log scale so that the few high "
    "scores show beside the many low ones; an empty bin draws no bar."
)

st.subheader("Key features")
compared = [
    name
    for name in (profile.cuts if profile else {})
    if reference_features.get(name, np.zeros(1)).sum() > 0
    and current_features.get(name, np.zeros(1)).sum() > 0
]
if not compared or profile is None:
    st.info(
        "No feature counts to compare: engines count features into the bins of a model's "
        "training profile, so both periods need predictions of the same model with a profile."
    )
    st.stop()


def shares(counts: np.ndarray, width: int) -> np.ndarray:
    padded = np.zeros(width)
    padded[: len(counts)] = counts
    share: np.ndarray = padded / padded.sum()
    return share


indices = pd.DataFrame(
    {
        "feature": compared,
        "PSI": [psi(reference_features[n], current_features[n]) for n in compared],
    }
).sort_values("PSI", ascending=False, ignore_index=True)
indices["shift"] = indices["PSI"].map(verdict)
st.dataframe(table(indices, {"feature": "feature", "PSI": "PSI", "shift": "shift"},
                   digits={"PSI": 3}),
             hide_index=True, width="stretch",
             column_config={"PSI": st.column_config.NumberColumn(format="%.3f")})  # fmt: skip
chosen = st.selectbox("Feature", indices["feature"])
cuts = profile.cuts[chosen]
width = len(cuts) + 2
st.bar_chart(
    pd.DataFrame(
        {
            "reference": shares(reference_features[chosen], width),
            f"last {current_hours} h": shares(current_features[chosen], width),
        },
        index=bin_labels(cuts),
    ),
    stack=False,
    sort=False,
)
st.caption(
    f"Model {model}. Bins are the training window's deciles of each feature; the shares are of "
    "predictions by the hour they were stored (the period's first hour counted whole). Rule "
    "of thumb: PSI < 0.1 stable, 0.1–0.25 moderate shift, > 0.25 a large shift."
)

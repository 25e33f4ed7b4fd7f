"""Explore: a map of terminals by risk; find a transaction, card or terminal; a card's
timeline; export what is shown."""

from __future__ import annotations

from datetime import timedelta

import streamlit as st

from fraudstream.dashboard import queries
from fraudstream.dashboard.common import Unavailable, masked, now, read
from fraudstream.dashboard.format import reasons_text

st.title("Explore")


def terminal_map() -> None:
    """Terminals with alerts in the chosen days where they are, coloured by their alert rate."""
    days = st.select_slider("Alerts of the last", [1, 7, 30], value=7,
                            format_func=lambda d: f"{d} day" + ("s" if d > 1 else ""))  # fmt: skip
    try:
        terminals = read(queries.terminal_risk, now() - timedelta(days=days))
    except Unavailable:
        return
    geographic = terminals["lat"].notna() & terminals["lon"].notna()
    if terminals.empty:
        st.info("No alerts at terminals with a known location in this period.")
        return
    x, y = ("lon", "lat") if geographic.all() else ("x", "y")
    shown = terminals[terminals[x].notna() & terminals[y].notna()]
    st.scatter_chart(shown, x=x, y=y, color="alert_rate", size="alerts", height=420)
    st.caption(
        f"{len(shown):,} terminals with alerts (review or decline) since "
        f"{(now() - timedelta(days=days)).date()} (UTC), "
        "the most alerted first; colour: alerts per transaction there, size: alerts. "
        + ("Longitude and latitude." if x == "lon" else "The simulator's 100 × 100 grid.")
    )


with st.expander("Terminals by risk (map)", expanded=True):
    terminal_map()

text = st.text_input(
    "Transaction id, card token or terminal id",
    help="An exact id; card tokens are shown masked but searched in full.",
)
if not text.strip():
    st.info("Enter an id to search; the results can be exported as CSV.")
    st.stop()
try:
    found = read(queries.search, text)
except Unavailable:
    st.stop()
if found.empty:
    st.warning(f"Nothing stored for {text.strip()!r}.")
    st.stop()

shown = masked(found).assign(
    why=[
        reasons_text(reasons, hits)
        for reasons, hits in zip(found["reasons"], found["rule_hits"], strict=True)
    ]
)[["event_time", "tx_id", "card_id", "terminal_id", "amount", "score", "decision", "why",
   "model_version"]]  # fmt: skip
st.caption(f"{len(shown)} prediction(s)")
st.dataframe(shown, hide_index=True, width="stretch")
st.download_button(
    "Export as CSV",
    shown.to_csv(index=False).encode(),
    file_name="fraudstream-explore.csv",
    mime="text/csv",
)
if found["card_id"].nunique() == 1:
    st.subheader("The card's timeline")
    timeline = found.sort_values("event_time").set_index("event_time")
    st.scatter_chart(timeline[["amount"]])

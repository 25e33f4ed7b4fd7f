"""Explore: find a transaction, card or terminal; a card's timeline; export what is shown."""

from __future__ import annotations

import streamlit as st

from fraudstream.dashboard import queries
from fraudstream.dashboard.common import Unavailable, masked, read
from fraudstream.dashboard.format import reasons_text

st.title("Explore")
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

"""Explore: a map of terminals by risk; find a transaction, card or terminal (a card also by
the start or end of its token), with its labels and the analyst's verdict; a card's timeline;
export what is shown."""

from __future__ import annotations

from datetime import timedelta

import streamlit as st

from fraudstream.dashboard import queries
from fraudstream.dashboard.common import Unavailable, masked, now, read
from fraudstream.dashboard.format import duration_text, reasons_text, table, utc_axis

FRAGMENT_MIN = 6  # characters of a token's start or end
FRAGMENT_WINDOW = timedelta(hours=1)  # no index serves a fragment: how far back it is sought
FRAGMENT_CARDS = 10

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
    st.scatter_chart(
        shown.rename(columns={"alert_rate": "alerts per transaction"}),
        x=x, y=y, color="alerts per transaction", size="alerts", height=420,
    )  # fmt: skip
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
    help=(
        "An exact id, or at least 6 characters of the start or end of a card token; card "
        "tokens are shown masked."
    ),
).strip()
if not text:
    st.info("Enter an id to search; the results can be exported as CSV.")
    st.stop()
try:
    found = read(queries.search, text)
    fragment = found.empty and len(text) >= FRAGMENT_MIN
    if fragment:
        found = read(queries.card_fragment, text, now() - FRAGMENT_WINDOW, cards=FRAGMENT_CARDS)
except Unavailable:
    st.stop()
if found.empty:
    st.warning(
        f"Nothing stored for {text!r}"
        + (
            " (as the start or end of a card token: among the predictions stored in the "
            f"last {duration_text(FRAGMENT_WINDOW.total_seconds() * 1000)})."
            if fragment
            else f". A card is found by at least {FRAGMENT_MIN} characters of its token."
        )
    )
    st.stop()
cards = found["card_id"].nunique()
if fragment:
    st.caption(
        f"{cards} card(s) whose token starts or ends with {text!r}"
        + (f" (the {FRAGMENT_CARDS} seen most recently: type more to narrow)"
           if cards >= FRAGMENT_CARDS else "")
        + ", found among the predictions stored in the last "
        f"{duration_text(FRAGMENT_WINDOW.total_seconds() * 1000)} (no index serves part of a "
        "token); each card's latest predictions are shown."
    )  # fmt: skip

shown = table(
    masked(found).assign(
        why=[
            reasons_text(reasons, hits)
            for reasons, hits in zip(found["reasons"], found["rule_hits"], strict=True)
        ]
    ),
    {"event_time": "event time", "tx_id": "transaction", "card_id": "card",
     "terminal_id": "terminal", "amount": "amount", "score": "score", "decision": "decision",
     "why": "why", "label": "label", "verdict": "analyst verdict", "model_version": "model"},
    digits={"score": 3},
).fillna({"label": "none yet", "analyst verdict": "—"})  # fmt: skip
st.caption(f"{len(shown)} prediction(s)")
st.dataframe(shown, hide_index=True, width="stretch")
st.download_button(
    "Export as CSV",
    shown.to_csv(index=False).encode(),
    file_name="fraudstream-explore.csv",
    mime="text/csv",
)
if cards == 1:
    st.subheader("The card's timeline")
    timeline = found.assign(event_time=utc_axis(found["event_time"])).sort_values("event_time")
    st.scatter_chart(timeline, x="event_time", y="amount", x_label="event time (UTC)",
                     y_label="amount")  # fmt: skip

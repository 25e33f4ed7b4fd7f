"""Review queue: the analyst decides open cases, highest risk first; each verdict becomes an
audited review decision and a label (stored, and published to the labels topic)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from fraudstream.dashboard import queries
from fraudstream.dashboard.common import Unavailable, masked, now, read, settings, write
from fraudstream.dashboard.format import reasons_text
from fraudstream.dashboard.labels import publish_label
from fraudstream.privacy import mask_token

st.title("Review queue")
analyst = st.text_input("Analyst", key="analyst", help="Your name, recorded with each verdict.")

try:
    queue = read(queries.review_queue, 50)
except Unavailable:
    st.stop()

if "reviewed" in st.session_state:
    st.success(st.session_state.pop("reviewed"))
if queue.empty:
    st.success("No open cases: every `review` decision has a verdict.")
    st.stop()

st.caption(f"{len(queue)} open case(s) shown, highest score first.")
overview = masked(queue)
st.dataframe(
    pd.DataFrame(
        {
            "score": overview["score"].round(3),
            "amount": overview["amount"],
            "card": overview["card_id"],
            "terminal": overview["terminal_id"],
            "event time": overview["event_time"],
            "transaction": overview["tx_id"],
        }
    ),
    hide_index=True,
    width="stretch",
)

cases = queue.set_index("tx_id")
chosen = st.selectbox(
    "Case",
    list(cases.index),
    format_func=lambda tx: (
        f"{tx} · score {cases.at[tx, 'score']:.3f} · amount {cases.at[tx, 'amount']:,.2f}"
    ),
)
case = cases.loc[chosen]
left, right = st.columns([2, 3])
with left:
    st.metric("Score", f"{case['score']:.3f}")
    st.write(f"**Amount** {case['amount']:,.2f} · **card** {mask_token(case['card_id'])}")
    st.write(f"**Terminal** {case['terminal_id']} · **event time** {case['event_time']:%F %T}")
    st.write(f"**Why**: {reasons_text(case['reasons'], case['rule_hits'])}")
    with st.form("verdict", clear_on_submit=True):
        comment = st.text_input("Comment (optional)")
        fraud = st.form_submit_button("Fraud", type="primary")
        legitimate = st.form_submit_button("Legitimate")
with right:
    st.subheader("The card's recent history")
    try:
        history = read(queries.card_history, case["card_id"], 20)
    except Unavailable:
        history = pd.DataFrame()
    if not history.empty:
        history = masked(history)
        st.dataframe(
            history[["event_time", "amount", "terminal_id", "score", "decision", "tx_id"]],
            hide_index=True,
            width="stretch",
        )

if fraud or legitimate:
    verdict = "fraud" if fraud else "legitimate"
    if not analyst.strip():
        st.error("Enter your name (Analyst) before deciding a case.")
        st.stop()
    try:
        write(queries.record_review, chosen, verdict, analyst, comment, now())
    except queries.ReviewError as error:
        st.error(str(error))
        st.stop()
    except Unavailable:
        st.stop()
    published = publish_label(settings(), chosen, verdict == "fraud", now())
    message = f"{chosen} marked {verdict} by {analyst.strip()}."
    if published is not None:
        message += f" (Stored; not yet on the labels topic: {published}.)"
    st.session_state["reviewed"] = message
    st.rerun()

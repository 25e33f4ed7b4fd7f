"""Audit: every action people took (verdicts, cases, rules, lists, models, users), newest
first, filtered by period, person, action and object. Read-only: the log is append-only."""

from __future__ import annotations

import json
from datetime import datetime, time, timedelta, timezone

import pandas as pd
import streamlit as st

from fraudstream.dashboard.common import Unavailable, current_user, now, read, stamp
from fraudstream.store.audit import ACTIONS, audit_entries

st.title("Audit")
user = current_user()
if not user.can("supervisor"):
    st.error("The audit log is for supervisors and admins.")
    st.stop()

today = now().date()
period, who, what, which = st.columns([2, 1, 2, 1])
chosen = period.date_input("Period (UTC)", (today - timedelta(days=7), today), max_value=today)
first, last = chosen if isinstance(chosen, tuple) and len(chosen) == 2 else (today, today)
actor = who.text_input("Who", placeholder="any user")
actions = what.multiselect("Actions", ACTIONS, placeholder="any action")
object_id = which.text_input("Object", placeholder="case, rule set, user…")

try:
    entries = read(
        audit_entries,
        since=datetime.combine(first, time.min, timezone.utc),
        until=datetime.combine(last + timedelta(days=1), time.min, timezone.utc),
        actor=actor.strip() or None, actions=tuple(actions),
        object_id=object_id.strip() or None,
    )  # fmt: skip
except Unavailable:
    st.stop()
st.caption(f"{len(entries):,} action(s){' (the newest 500)' if len(entries) == 500 else ''}.")
if entries.empty:
    st.info("No action matches.")
    st.stop()
st.dataframe(
    pd.DataFrame(
        {
            "when": entries["at"].map(stamp),
            "who": entries["actor"],
            "action": entries["action"],
            "object": entries["object_type"] + " " + entries["object_id"],
            "detail": entries["detail"].map(lambda d: json.dumps(d, ensure_ascii=False)),
        }
    ),
    hide_index=True,
    width="stretch",
)

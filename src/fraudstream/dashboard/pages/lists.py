"""Lists: allow and block lists of cards and terminals that rules read by name
(``terminal_id in blocked_terminals``). Supervisors add an entry with a reason and an optional
expiry, or remove one; every engine applies the change within seconds."""

from __future__ import annotations

from datetime import datetime, time, timezone

import pandas as pd
import streamlit as st

from fraudstream.dashboard.common import Unavailable, current_user, now, read, stamp, write
from fraudstream.privacy import mask_token
from fraudstream.store.lists import ListError, add_entry, entries, remove_entry

st.title("Lists")
user = current_user()
if "lists_message" in st.session_state:
    st.success(st.session_state.pop("lists_message"))
try:
    shown = read(entries, now())
except Unavailable:
    st.stop()
if shown.empty:
    st.info("No list entry in force.")
else:
    st.dataframe(
        pd.DataFrame(
            {
                "entry": shown["id"], "list": shown["list_name"],
                "value": [mask_token(v) if n.endswith("cards") else v
                          for n, v in zip(shown["list_name"], shown["value"], strict=True)],
                "reason": shown["reason"], "added by": shown["added_by"],
                "added": shown["added_at"].map(stamp), "expires": shown["expires_at"].map(stamp),
            }
        ),
        hide_index=True, width="stretch",
    )  # fmt: skip


def _apply(change, *args, message: str, **kwargs) -> None:  # type: ignore[no-untyped-def]
    try:
        write(change, *args, by=user, at=now(), **kwargs)
    except ListError as error:
        st.error(str(error))
        return
    except Unavailable:
        return
    st.session_state["lists_message"] = message
    st.rerun()


if not user.can("supervisor"):
    st.caption("Supervisors change lists.")
    st.stop()
add, remove = st.columns(2)
with add, st.form("add_entry", clear_on_submit=True):
    st.subheader("Add an entry")
    name = st.selectbox(
        "List", ["blocked_cards", "blocked_terminals", "allowed_cards", "allowed_terminals"],
        accept_new_options=True,
    )  # fmt: skip
    value = st.text_input("Card token or terminal id")
    reason = st.text_input("Why", placeholder="customer travelling until Friday")
    until = st.date_input("Until (optional, UTC end of day)", value=None)
    if st.form_submit_button("Add", type="primary"):
        expires = None if until is None else datetime.combine(until, time.max, timezone.utc)
        _apply(
            add_entry, name, value.strip(), reason=reason, expires_at=expires,
            message=f"Added to {name}; engines apply it within seconds.",
        )  # fmt: skip
with remove:
    st.subheader("Remove an entry")
    if not shown.empty:
        entry = st.selectbox("Entry", list(shown["id"]))
        if st.button("Remove"):
            _apply(remove_entry, int(entry), message=f"Entry {entry} removed.")

"""Users: admins add people, change their role or password, and disable them (never
delete: the audit keeps naming them). Every change is audited."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from fraudstream.dashboard.common import Unavailable, current_user, now, read, stamp, write
from fraudstream.store.users import (
    MIN_PASSWORD_LENGTH,
    ROLES,
    UserError,
    create_user,
    disable_user,
    list_users,
    set_password,
    set_role,
)

st.title("Users")
admin = current_user()
if not admin.can("admin"):
    st.error("Users are managed by admins.")
    st.stop()
if "user_message" in st.session_state:
    st.success(st.session_state.pop("user_message"))

try:
    users = read(list_users)
except Unavailable:
    st.stop()
st.dataframe(
    pd.DataFrame(
        {
            "user": users["username"],
            "role": users["role"],
            "created": users["created_at"].map(stamp),
            "by": users["created_by"],
            "disabled": users["disabled_at"].map(lambda at: "" if pd.isna(at) else stamp(at)),
        }
    ),
    hide_index=True,
    width="stretch",
)


def _apply(change, *args, message: str) -> None:  # type: ignore[no-untyped-def]
    try:
        write(change, *args, by=admin.username, at=now())
    except UserError as error:
        st.error(str(error))
        return
    except Unavailable:
        return
    st.session_state["user_message"] = message
    st.rerun()


add, edit = st.columns(2)
with add, st.form("add_user", clear_on_submit=True):
    st.subheader("Add a user")
    name = st.text_input("User name", help="Lower-case letters, digits, '_', '.', '-'.")
    role = st.selectbox("Role", ROLES)
    password = st.text_input(
        "Initial password", type="password", help=f"At least {MIN_PASSWORD_LENGTH} characters."
    )
    if st.form_submit_button("Add", type="primary"):
        _apply(create_user, name.strip(), role, password, message=f"User {name.strip()} added.")

active = sorted(users[users["disabled_at"].isna()]["username"])
with edit:
    st.subheader("Change a user")
    chosen = st.selectbox("User", active)
    new_role = st.selectbox("New role", ROLES, key="new_role")
    if st.button("Set role") and chosen:
        _apply(set_role, chosen, new_role, message=f"{chosen} is now {new_role}.")
    new_password = st.text_input("New password", type="password", key="new_password")
    if st.button("Set password") and chosen:
        _apply(set_password, chosen, new_password, message=f"Password of {chosen} changed.")
    if st.button("Disable", type="secondary") and chosen:
        _apply(disable_user, chosen, message=f"{chosen} disabled.")

"""The dashboard's entry script (`fraudstream dashboard` runs it with Streamlit).

Pages live in ``pages/``; they read PostgreSQL only through ``queries`` and the store's
modules via ``common.read``. People sign in with a named user (``fraudstream users create``);
the pages each role sees follow from it. Only a loopback dashboard with no user yet opens
without signing in, as the local operator; beyond loopback a dashboard without users refuses
to serve, and an empty password never signs anyone in.
"""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from fraudstream.dashboard.common import LOCAL_OPERATOR, Unavailable, now, read, settings, write
from fraudstream.store.users import User, active_user, authenticate, record_login, user_count
from fraudstream.telemetry import (
    DASHBOARD_PAGE_SECONDS,
    DASHBOARD_SIGN_INS,
    DASHBOARD_VIEWS,
    serve_metrics,
)

st.set_page_config(page_title="fraudstream", page_icon=":material/shield:", layout="wide")


def _sign_in() -> User | None:
    user = st.session_state.get("user")
    try:
        if isinstance(user, User) and user != LOCAL_OPERATOR:
            user = read(active_user, user.username)
            st.session_state["user"] = user
            if user is not None:
                return user
        users = read(user_count)
    except Unavailable:
        return None
    if users == 0:
        if settings().dashboard.loopback:
            st.session_state["user"] = LOCAL_OPERATOR
            return LOCAL_OPERATOR
        st.error(
            "This dashboard is served beyond 127.0.0.1 and has no users: refused. Create one "
            "with `fraudstream users create NAME --role admin`."
        )
        return None
    st.session_state.pop("user", None)
    box = st.empty()
    with box.form("login"):
        st.subheader("Sign in")
        username = st.text_input("User")
        password = st.text_input("Password", type="password")
        if st.form_submit_button("Sign in", type="primary"):
            if not password:
                DASHBOARD_SIGN_INS.labels("empty_password").inc()
                st.error("Enter your password: an empty password is refused.")
                return None
            signed = write(authenticate, username.strip().lower(), password)
            if signed is None:
                DASHBOARD_SIGN_INS.labels("refused").inc()
                st.error("Wrong user name or password.")
                return None
            DASHBOARD_SIGN_INS.labels("signed_in").inc()
            write(record_login, signed, at=now())
            st.session_state["user"] = signed
            box.empty()  # the pages take the form's place in this very run
            return signed
    return None


_PAGES = Path(__file__).parent / "pages"

serve_metrics(settings().metrics, "dashboard")  # once per server process
signed_in = _sign_in()
if signed_in is not None:
    with st.sidebar:
        st.caption(f"Signed in as **{signed_in.username}** ({signed_in.role})")
        if signed_in == LOCAL_OPERATOR:
            st.caption("No users yet: `fraudstream users create NAME --role admin`.")
        elif st.button("Sign out"):
            st.session_state.pop("user", None)
            st.rerun()
    pages = [
        st.Page(_PAGES / "live.py", title="Live", icon=":material/monitoring:", default=True),
        st.Page(_PAGES / "cases.py", title="Cases", icon=":material/fact_check:"),
        st.Page(_PAGES / "rules.py", title="Rules", icon=":material/rule:"),
        st.Page(_PAGES / "lists.py", title="Lists", icon=":material/list_alt:"),
        st.Page(_PAGES / "quality.py", title="Model quality", icon=":material/target:"),
        st.Page(_PAGES / "drift.py", title="Drift", icon=":material/waves:"),
        st.Page(_PAGES / "explore.py", title="Explore", icon=":material/search:"),
        st.Page(_PAGES / "system.py", title="System", icon=":material/settings:"),
    ]
    if signed_in.can("supervisor"):
        pages.append(st.Page(_PAGES / "audit.py", title="Audit", icon=":material/history:"))
    if signed_in.can("admin"):
        pages.append(st.Page(_PAGES / "users.py", title="Users", icon=":material/group:"))
    page = st.navigation(pages)
    started = time.perf_counter()
    try:
        page.run()
    finally:
        DASHBOARD_VIEWS.labels(page.title).inc()
        DASHBOARD_PAGE_SECONDS.labels(page.title).observe(time.perf_counter() - started)

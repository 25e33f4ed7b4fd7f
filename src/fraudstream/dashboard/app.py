"""The dashboard's entry script (`fraudstream dashboard` runs it with Streamlit).

Pages live in ``pages/``; they read PostgreSQL only through ``queries`` via ``common.read``.
Bound anywhere but loopback, the app asks for ``dashboard.password`` first.
"""

from __future__ import annotations

import hmac
from pathlib import Path

import streamlit as st

from fraudstream.dashboard.common import settings

st.set_page_config(page_title="fraudstream", page_icon=":material/shield:", layout="wide")


def _logged_in() -> bool:
    config = settings().dashboard
    if config.loopback or st.session_state.get("authenticated"):
        return True
    if config.password is None:  # (the CLI refuses this; a direct `streamlit run` might not)
        st.error("This dashboard is served beyond 127.0.0.1 without dashboard.password: refused.")
        return False
    with st.form("login"):
        st.subheader("Sign in")
        password = st.text_input("Password", type="password")
        if st.form_submit_button("Sign in"):
            expected = config.password.get_secret_value()
            if hmac.compare_digest(password.encode(), expected.encode()):
                st.session_state["authenticated"] = True
                st.rerun()
            st.error("Wrong password.")
    return False


_PAGES = Path(__file__).parent / "pages"

if _logged_in():
    st.navigation(
        [
            st.Page(_PAGES / "live.py", title="Live", icon=":material/monitoring:", default=True),
            st.Page(_PAGES / "review.py", title="Review queue", icon=":material/fact_check:"),
            st.Page(_PAGES / "quality.py", title="Model quality", icon=":material/target:"),
            st.Page(_PAGES / "drift.py", title="Drift", icon=":material/waves:"),
            st.Page(_PAGES / "explore.py", title="Explore", icon=":material/search:"),
            st.Page(_PAGES / "system.py", title="System", icon=":material/settings:"),
        ]
    ).run()

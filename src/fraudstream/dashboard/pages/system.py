"""System: broker, engines and database health; throughput; rejected messages."""

from __future__ import annotations

import streamlit as st

from fraudstream import bus
from fraudstream.dashboard import queries
from fraudstream.dashboard.common import Unavailable, now, read, settings

st.title("System")


@st.fragment(run_every=settings().dashboard.refresh_s * 2)
def system() -> None:
    config = settings()
    broker, database, engine = st.columns(3)
    reachable = bus.ping(config.kafka, timeout_s=2)
    broker.metric("Kafka", "up" if reachable else "down", border=True)
    broker.caption(f"bootstrap `{config.kafka.bootstrap}`")
    try:
        engines = read(queries.engines, now())
        dlq = read(queries.dlq_counts, now())
        rejected = read(queries.latest_rejected, 20)
    except Unavailable:
        database.metric("PostgreSQL", "down", border=True)
        return
    database.metric("PostgreSQL", "up", border=True)
    fresh = engines[engines["heartbeat_age_s"] < 30] if len(engines) else engines
    engine.metric("Engines reporting", f"{len(fresh)} / {len(engines)}", border=True)
    if len(fresh):
        engine.caption(f"{fresh['throughput_tps'].sum():,.0f} tx/s together")
    if config.dashboard.database_url is None and not config.database.managed:
        st.warning(
            "The dashboard uses the engine's database user: set dashboard.database_url to a "
            "user that can only read and insert labels and reviews."
        )
    st.subheader("Engines")
    if engines.empty:
        st.info("No engine has reported yet — `fraudstream status`, `fraudstream logs engine`.")
    else:
        st.dataframe(
            engines.assign(partitions=engines["partitions"].map(lambda p: ", ".join(map(str, p)))),
            hide_index=True,
            width="stretch",
        )
    st.subheader("Dead-letter topic")
    left, right = st.columns(2)
    left.metric("Rejected messages", f"{dlq['total']:,}")
    right.metric("In the last hour", f"{dlq['last_hour']:,}")
    if rejected.empty:
        st.info("No message has been rejected.")
    else:
        st.dataframe(rejected, hide_index=True, width="stretch")


system()

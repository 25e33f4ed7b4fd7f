"""System: broker, engines and database health; throughput; rejected messages."""

from __future__ import annotations

import streamlit as st

from fraudstream import bus
from fraudstream.dashboard import queries
from fraudstream.dashboard.common import Unavailable, now, read, settings
from fraudstream.dashboard.format import table

_ENGINES = {
    "engine_id": "engine", "engine": "kind", "consumer_group": "consumer group",
    "model_version": "model", "partitions": "partitions", "throughput_tps": "tx/s",
    "lag": "lag (messages)", "batch_ms_p50": "batch p50 (ms)", "batch_ms_p99": "batch p99 (ms)",
    "dlq_total": "rejected", "started_at": "started", "heartbeat_at": "last heartbeat",
    "heartbeat_age_s": "heartbeat age (s)",
}  # fmt: skip
_REJECTED = {
    "received_at": "received", "source_topic": "topic", "source_partition": "partition",
    "source_offset": "offset", "reason": "reason",
}  # fmt: skip

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
        shown = engines.assign(
            partitions=engines["partitions"].map(lambda p: ", ".join(map(str, p)))
        )
        st.dataframe(
            table(shown, _ENGINES, digits={"throughput_tps": 1, "lag": 0, "batch_ms_p50": 1,
                                           "batch_ms_p99": 1, "heartbeat_age_s": 1}),
            hide_index=True,
            width="stretch",
        )  # fmt: skip
    st.subheader("Dead-letter topic")
    left, right = st.columns(2)
    left.metric("Rejected messages", f"{dlq['total']:,}")
    right.metric("In the last hour", f"{dlq['last_hour']:,}")
    if rejected.empty:
        st.info("No message has been rejected.")
    else:
        st.dataframe(table(rejected, _REJECTED), hide_index=True, width="stretch")


system()

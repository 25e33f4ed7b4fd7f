"""Live: volume, alerts, money at stake, processing latency, lag and engine health,
refreshed; says when the stream is catching up on history."""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
import streamlit as st

from fraudstream.dashboard import queries
from fraudstream.dashboard.common import (
    Unavailable,
    masked,
    now,
    read,
    settings,
    show_empty,
    stamp,
)
from fraudstream.dashboard.format import (
    amount_text,
    duration_text,
    latency_text,
    reasons_text,
    table,
    utc_axis,
)
from fraudstream.store.projections import LATENCY_BUCKETS_MS

WINDOW = timedelta(minutes=5)
PROCESSING_WINDOW = timedelta(minutes=1)  # read from the predictions themselves: kept short
BEHIND = timedelta(minutes=1)  # newest events further behind than this: catching up
_STARTS = {"append": "Kafka append → stored", "scored": "scored → stored (no broker time)"}

st.title("Live")
st.caption(
    f"Headline figures over the last {WINDOW.seconds // 60} minutes; processing latency over "
    f"the predictions stored in the last minute. Refreshes every "
    f"{settings().dashboard.refresh_s:g} s."
)


@st.fragment(run_every=settings().dashboard.refresh_s)
def live() -> None:
    try:
        summary = read(queries.live_summary, now(), WINDOW)
        recent = read(queries.processing, now(), PROCESSING_WINDOW)
        engines = read(queries.engines, now())
        since = now() - timedelta(hours=1)
        series = read(queries.minute_series, since)
        alerts = read(queries.latest_alerts, 20)
    except Unavailable:
        return
    if summary.transactions == 0 and engines.empty:
        show_empty("predictions")
        return
    lag = engines["lag"].dropna()
    fresh = engines[engines["heartbeat_age_s"] < 30]
    versions = ", ".join(sorted(set(fresh["model_version"].dropna()))) or "—"
    first, second = st.columns(3), st.columns(3)  # six tiles in one row cut their values
    first[0].metric("Transactions / s", f"{summary.tx_per_s:,.1f}")
    first[1].metric("Alerts / min", f"{summary.alerts_per_min:,.1f}", help="Review or decline.")
    first[2].metric("Consumer lag", f"{int(lag.sum()):,}" if len(lag) else "—",
                    help="Messages not yet consumed, all partitions together.")  # fmt: skip
    second[0].metric("Declined (amount)", amount_text(summary.amount_decline))
    second[1].metric("Under review (amount)", amount_text(summary.amount_review))
    second[2].metric(
        "Processing p50 / p99",
        latency_text(recent.p50_ms, recent.p99_ms),
        help=f"{_STARTS[recent.start]}, over the predictions stored in the last minute.",
    )
    if recent.behind_s is not None and recent.behind_s > BEHIND.total_seconds():
        st.warning(
            f"Catching up: events are {duration_text(recent.behind_s * 1000)} behind — the "
            f"newest event stored in the last minute happened at {stamp(recent.newest_event)}. "
            "Event-time latency counts that backlog; processing latency does not."
        )
    health = f"{len(fresh)} of {len(engines)} engine(s) reporting" if len(engines) else "no engine"
    processed = (
        f"processing: {_STARTS[recent.start]}, {recent.rows:,} predictions in the last minute"
        if recent.rows
        else "no prediction stored in the last minute"
    )
    st.caption(
        f"Model: **{versions}** · {health} · {processed} · event time → stored (secondary, "
        f"counts any backlog) p50 {_event_time(summary.latency_p50_ms)}, "
        f"p99 {_event_time(summary.latency_p99_ms)}"
    )
    if series.empty:
        show_empty("predictions in the last hour")
    else:
        by_minute = _every_minute(series, since)
        left, middle, right = st.columns(3)
        left.subheader("Volume per minute")
        left.bar_chart(by_minute[["transactions"]], x_label="minute (UTC)", y_label="transactions")
        middle.subheader("Review and decline per minute")
        middle.line_chart(by_minute[["review", "decline"]], x_label="minute (UTC)",
                          y_label="transactions")  # fmt: skip
        right.subheader("Event time → stored")
        right.line_chart(
            by_minute[["latency_p50_ms", "latency_p99_ms"]].rename(
                columns={"latency_p50_ms": "p50", "latency_p99_ms": "p99"}
            ),
            x_label="minute (UTC)",
            y_label="ms",
        )
        right.caption(
            "Secondary: counts the wait before an event reached Kafka and any backlog; "
            f"{duration_text(LATENCY_BUCKETS_MS[-1])} and more is drawn as "
            f"{duration_text(LATENCY_BUCKETS_MS[-1])}."
        )
    st.subheader("Latest alerts")
    if alerts.empty:
        st.info("No review or decline decisions yet.")
    else:
        st.dataframe(_alert_rows(alerts), hide_index=True, width="stretch")


def _every_minute(series: pd.DataFrame, since: datetime) -> pd.DataFrame:
    """The series with a row for every minute since ``since``: a minute without predictions
    shows as none (and a gap in latency), not as a line drawn across it."""
    minutes = pd.date_range(pd.Timestamp(since).ceil("min"), pd.Timestamp(now()).floor("min"),
                            freq="min", tz="UTC")  # fmt: skip
    by_minute = series.assign(minute=pd.to_datetime(series["minute"], utc=True))
    filled = by_minute.set_index("minute").reindex(minutes)
    counts = [c for c in filled.columns if not c.startswith("latency")]
    filled[counts] = filled[counts].fillna(0)
    filled.index = utc_axis(filled.index)
    return filled


def _event_time(ms: float | None) -> str:
    """The histogram's last bucket is open: its values are only known to be at least that."""
    if ms is not None and ms >= LATENCY_BUCKETS_MS[-1]:
        return f"≥ {duration_text(LATENCY_BUCKETS_MS[-1])}"
    return duration_text(ms)


def _alert_rows(alerts: pd.DataFrame) -> pd.DataFrame:
    shown = masked(alerts).assign(
        why=[
            reasons_text(reasons, hits)
            for reasons, hits in zip(alerts["reasons"], alerts["rule_hits"], strict=True)
        ]
    )
    return table(
        shown,
        {"stored_at": "stored", "decision": "decision", "score": "score", "amount": "amount",
         "card_id": "card", "terminal_id": "terminal", "why": "why", "tx_id": "transaction"},
        digits={"score": 3},
    )  # fmt: skip


live()

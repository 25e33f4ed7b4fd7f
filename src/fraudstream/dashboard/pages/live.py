"""Live: volume, alerts, money at stake, latency, lag and engine health, refreshed."""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
import streamlit as st

from fraudstream.dashboard import queries
from fraudstream.dashboard.common import Unavailable, masked, now, read, settings, show_empty
from fraudstream.dashboard.format import reasons_text
from fraudstream.store.projections import LATENCY_BUCKETS_MS

WINDOW = timedelta(minutes=5)

st.title("Live")
st.caption(
    f"Headline figures over the last {WINDOW.seconds // 60} minutes; latency is event time → "
    "stored in PostgreSQL. Refreshes every "
    f"{settings().dashboard.refresh_s:g} s."
)


@st.fragment(run_every=settings().dashboard.refresh_s)
def live() -> None:
    try:
        summary = read(queries.live_summary, now(), WINDOW)
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
    cells = st.columns(6)
    cells[0].metric("Transactions / s", f"{summary.tx_per_s:,.1f}")
    cells[1].metric("Alerts / min", f"{summary.alerts_per_min:,.1f}")
    cells[2].metric("Amount declined", f"{summary.amount_decline:,.2f}")
    cells[3].metric("Amount under review", f"{summary.amount_review:,.2f}")
    cells[4].metric("Latency p50 / p99", _latency(summary.latency_p50_ms, summary.latency_p99_ms))
    cells[5].metric("Consumer lag", f"{int(lag.sum()):,}" if len(lag) else "—")
    health = f"{len(fresh)} of {len(engines)} engine(s) reporting" if len(engines) else "no engine"
    st.caption(f"Model: **{versions}** · {health}")
    if series.empty:
        show_empty("predictions in the last hour")
    else:
        by_minute = _every_minute(series, since)
        left, middle, right = st.columns(3)
        left.subheader("Volume per minute")
        left.bar_chart(by_minute[["transactions"]])
        middle.subheader("Review and decline per minute")
        middle.line_chart(by_minute[["review", "decline"]])
        right.subheader("Latency (ms)")
        right.line_chart(by_minute[["latency_p50_ms", "latency_p99_ms"]])
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
    return filled


def _latency(p50: float | None, p99: float | None) -> str:
    if p50 is None or p99 is None:
        return "—"
    if p99 < 10_000:
        return f"{p50:,.0f} / {p99:,.0f} ms"
    return f"{_seconds(p50)} / {_seconds(p99)}"


def _seconds(ms: float) -> str:
    """The histogram's last bucket is open: its values are only known to be at least that."""
    return f"≥{ms / 1000:,.0f} s" if ms >= LATENCY_BUCKETS_MS[-1] else f"{ms / 1000:,.1f} s"


def _alert_rows(alerts: pd.DataFrame) -> pd.DataFrame:
    shown = masked(alerts)
    return pd.DataFrame(
        {
            "stored": shown["stored_at"],
            "decision": shown["decision"],
            "score": shown["score"].round(3),
            "amount": shown["amount"],
            "card": shown["card_id"],
            "terminal": shown["terminal_id"],
            "why": [
                reasons_text(reasons, hits)
                for reasons, hits in zip(shown["reasons"], shown["rule_hits"], strict=True)
            ],
            "transaction": shown["tx_id"],
        }
    )


live()

"""What the pages show people, in one manner: explanations in words, durations and amounts
short enough for a tile, tables with readable headers, rounded numbers and UTC stamps, time
axes in UTC, and the precision–recall steps a chart draws."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import pandas as pd

from fraudstream.dashboard.common import stamp

__all__ = [
    "amount_text",
    "duration_text",
    "latency_text",
    "pr_steps",
    "reasons_text",
    "table",
    "utc_axis",
]

_UNITS = (("ms", 1.0), ("s", 1_000.0), ("min", 60_000.0), ("h", 3_600_000.0),
          ("d", 86_400_000.0))  # fmt: skip
_WORDS = {"d": "days"}  # in a sentence; a tile keeps the short unit


def reasons_text(reasons: Sequence[dict[str, Any]] | None, rule_hits: Sequence[str] | None) -> str:
    """Rule hits first (they decided), then the model's reasons that pushed the score up, as
    one line; a reason that lowered the score (or says nothing of its sign) is no reason to
    flag."""
    parts = [f"rule: {rule}" for rule in rule_hits or []]
    parts += [
        str(reason.get("text") or reason.get("feature"))
        for reason in reasons or []
        if _positive(reason.get("contribution"))
    ]
    return "; ".join(parts) or "—"


def _positive(contribution: Any) -> bool:
    try:
        return float(contribution) > 0
    except (TypeError, ValueError):
        return False


def _unit(ms: float, at_least: float) -> tuple[str, float]:
    """The largest unit of which ``ms`` holds ``at_least`` one (1.5: 75 s stays in seconds)."""
    name, size = _UNITS[0]
    for candidate, candidate_size in _UNITS[1:]:
        if abs(ms) < at_least * candidate_size:
            break
        name, size = candidate, candidate_size
    return name, size


def _number(value: float) -> str:
    return f"{value:,.1f}" if abs(value) < 10 else f"{value:,.0f}"


def duration_text(ms: float | None) -> str:
    """A duration in its natural unit: ``125 ms``, ``2.1 s``, ``62 min``, ``3.5 days``."""
    if ms is None:
        return "—"
    name, size = _unit(ms, 1.5)
    return f"{ms:,.0f} ms" if name == "ms" else f"{_number(ms / size)} {_WORDS.get(name, name)}"


def latency_text(p50_ms: float | None, p99_ms: float | None) -> str:
    """Two percentiles in the p99's unit, the unit once: ``42 / 125 ms``, ``0.8 / 2.4 s``."""
    if p50_ms is None or p99_ms is None:
        return "—"
    name, size = _unit(p99_ms, 1.0)
    if name == "ms":
        return f"{p50_ms:,.0f} / {p99_ms:,.0f} ms"
    return f"{_number(p50_ms / size)} / {_number(p99_ms / size)} {name}"


def amount_text(value: float) -> str:
    """An amount for a tile: cents below ten thousand, whole units below a million, then
    millions and billions (``1.23 M``)."""
    if abs(value) < 10_000:
        return f"{value:,.2f}"
    if abs(value) < 1_000_000:
        return f"{value:,.0f}"
    if abs(value) < 1_000_000_000:
        return f"{value / 1e6:,.2f} M"
    return f"{value / 1e9:,.2f} bn"


def _is_time(column: pd.Series) -> bool:
    if pd.api.types.is_datetime64_any_dtype(column):
        return True
    present = column.dropna()
    return (
        column.dtype == object
        and len(present) > 0
        and all(isinstance(value, datetime) for value in present)
    )


def table(
    frame: pd.DataFrame, columns: Mapping[str, str], digits: Mapping[str, int] | None = None
) -> pd.DataFrame:
    """``frame`` as a table for people: only ``columns`` (stored name → header), in their
    order; times as UTC stamps (``common.stamp``); fractional numbers rounded to ``digits``
    decimals (2 unless named there; 0 makes them whole numbers)."""
    shown = frame[list(columns)].copy()
    for name in columns:
        if _is_time(shown[name]):
            shown[name] = shown[name].map(stamp)
        elif pd.api.types.is_float_dtype(shown[name]):
            places = (digits or {}).get(name, 2)
            rounded = shown[name].round(places)
            shown[name] = rounded.astype("Int64") if places == 0 else rounded
    return shown.rename(columns=dict(columns))


def utc_axis(times: Any) -> Any:
    """Times for a chart axis: UTC wall-clock times without a zone (a chart draws zoned times in
    the browser's zone; name the axis "… (UTC)")."""
    if isinstance(times, pd.Index):
        return pd.DatetimeIndex(pd.to_datetime(times, utc=True)).tz_localize(None)
    return pd.to_datetime(times, utc=True).dt.tz_localize(None)


def pr_steps(curve: pd.DataFrame) -> pd.DataFrame:
    """The operating points of a precision–recall curve (``quality.pr_curve``, highest
    threshold first) to draw as steps: at each recall the highest threshold that reaches it
    (a lower one only adds legitimate transactions at the same recall), ending at the first
    point of the highest recall — never a line drawn on to recall 1."""
    if curve.empty:
        return curve
    ordered = curve.sort_values("threshold", ascending=False, ignore_index=True)
    reached = ordered["recall"] > ordered["recall"].shift(fill_value=-1.0)
    return ordered[reached].reset_index(drop=True)

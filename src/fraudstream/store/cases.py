"""Cases: a card's alerts worked together, from open to resolved.

The engine opens cases (``projections.Cases``); people move them here. A case is open,
investigating or escalated until resolved as fraud or legitimate; resolving labels each of
its alerts (source ``analyst``, as a review verdict) in the same transaction, and an
escalated case can only be resolved by a supervisor. Its due time is its first alert plus the
SLA of its priority (``dashboard.sla_minutes``). Every change is audited.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

import pandas as pd
import psycopg

from fraudstream.store import audit
from fraudstream.store.db import frame
from fraudstream.store.users import User

__all__ = [
    "OPEN",
    "RESOLVED",
    "STATUSES",
    "VIEWS",
    "CaseError",
    "add_note",
    "assign",
    "card_timeline",
    "case_alerts",
    "case_notes",
    "case_queue",
    "case_totals",
    "earlier_cases",
    "get_case",
    "move",
    "resolve",
]

OPEN = ("open", "investigating", "escalated")
RESOLVED = ("resolved_fraud", "resolved_legitimate")
STATUSES = OPEN + RESOLVED
View = Literal["all open", "mine", "unassigned", "overdue"]
VIEWS: tuple[View, ...] = ("all open", "mine", "unassigned", "overdue")
_MOVES = {
    "open": {"investigating", "escalated"},
    "investigating": {"open", "escalated"},
    "escalated": {"investigating"},
}
_TIMELINE_BEFORE = timedelta(days=7)  # the card's transactions around its alerts
_TIMELINE_AFTER = timedelta(days=1)


class CaseError(ValueError):
    """A case change that cannot be made; the message says why."""


_DUE = "c.opened_at + make_interval(mins => (%(sla)s::int[])[c.priority])"
_VIEW_FILTERS: dict[str, str] = {
    "all open": "TRUE",
    "mine": "c.assignee = %(user)s",
    "unassigned": "c.assignee IS NULL",
    "overdue": f"{_DUE} < %(now)s",
}


def case_totals(
    conn: psycopg.Connection[Any], *, user: str, now: datetime, sla_minutes: Sequence[int]
) -> dict[str, int]:
    """How many unresolved cases each view holds."""
    filters = ", ".join(
        f"count(*) FILTER (WHERE {condition})" for condition in _VIEW_FILTERS.values()
    )
    counts = conn.execute(
        f"SELECT {filters} FROM cases c "  # noqa: S608 (filters written in this module)
        "WHERE c.status IN ('open', 'investigating', 'escalated')",
        {"user": user, "now": now, "sla": list(sla_minutes)},
    ).fetchone()
    return dict(zip(VIEWS, (int(str(n)) for n in counts or (0,) * len(VIEWS)), strict=True))


def case_queue(
    conn: psycopg.Connection[Any],
    *,
    view: View,
    user: str,
    now: datetime,
    sla_minutes: Sequence[int],
    oldest_first: bool = False,
    limit: int = 200,
) -> pd.DataFrame:
    """Unresolved cases in ``view``, most urgent (priority, then age) or oldest first."""
    if view not in _VIEW_FILTERS:
        raise CaseError(f"view must be one of {', '.join(VIEWS)}, not {view!r}")
    order = "c.opened_at" if oldest_first else "c.priority, c.opened_at"
    return frame(
        conn,
        f"SELECT c.case_id, c.card_id, c.status, c.priority, c.assignee, c.opened_at, "  # noqa: S608
        f"{_DUE} AS due_at, {_DUE} < %(now)s AS overdue, c.alert_count, c.max_score, "
        f"c.total_amount, c.last_alert_at FROM cases c "
        f"WHERE c.status IN ('open', 'investigating', 'escalated') AND {_VIEW_FILTERS[view]} "
        f"ORDER BY {order}, c.case_id LIMIT %(limit)s",
        {"user": user, "now": now, "sla": list(sla_minutes), "limit": limit},
    )


def get_case(
    conn: psycopg.Connection[Any], case_id: int, *, now: datetime, sla_minutes: Sequence[int]
) -> dict[str, Any] | None:
    found = frame(
        conn,
        f"SELECT c.*, {_DUE} AS due_at, {_DUE} < %(now)s AND c.resolved_at IS NULL AS overdue "  # noqa: S608
        "FROM cases c WHERE c.case_id = %(case)s",
        {"case": case_id, "now": now, "sla": list(sla_minutes)},
    )
    return None if found.empty else found.iloc[0].to_dict()


def case_alerts(conn: psycopg.Connection[Any], case_id: int) -> pd.DataFrame:
    """The case's alerts with what the engine decided, why, and any verdict or label since."""
    return frame(
        conn,
        "SELECT p.tx_id, p.event_time, p.amount, p.terminal_id, p.score, p.decision, "
        "p.rule_hits, p.reasons, r.verdict, r.analyst, "
        "(SELECT bool_or(l.is_fraud) FROM labels l WHERE l.tx_id = p.tx_id) AS labelled_fraud "
        "FROM case_alerts a JOIN fraud_predictions p USING (tx_id) "
        "LEFT JOIN review_decisions r USING (tx_id) "
        "WHERE a.case_id = %s ORDER BY p.event_time",
        (case_id,),
    )


def card_timeline(conn: psycopg.Connection[Any], case_id: int, *, limit: int = 500) -> pd.DataFrame:
    """The card's transactions around the case, newest first: from a week before its first
    alert to a day after its last, each marked when it is one of the case's alerts, with any
    label."""
    return frame(
        conn,
        "SELECT p.event_time, p.tx_id, p.amount, p.terminal_id, p.score, p.decision, "
        "a.case_id IS NOT NULL AS in_case, "
        "(SELECT bool_or(l.is_fraud) FROM labels l WHERE l.tx_id = p.tx_id) AS labelled_fraud "
        "FROM cases c JOIN fraud_predictions p ON p.card_id = c.card_id "
        "LEFT JOIN case_alerts a ON a.tx_id = p.tx_id AND a.case_id = c.case_id "
        "WHERE c.case_id = %(case)s "
        "AND p.event_time >= (SELECT min(q.event_time) FROM case_alerts x "
        "    JOIN fraud_predictions q USING (tx_id) WHERE x.case_id = c.case_id) - %(before)s "
        "AND p.event_time <= (SELECT max(q.event_time) FROM case_alerts x "
        "    JOIN fraud_predictions q USING (tx_id) WHERE x.case_id = c.case_id) + %(after)s "
        "ORDER BY p.event_time DESC LIMIT %(limit)s",
        {"case": case_id, "before": _TIMELINE_BEFORE, "after": _TIMELINE_AFTER, "limit": limit},
    )


def earlier_cases(conn: psycopg.Connection[Any], case_id: int) -> pd.DataFrame:
    """The card's other cases, newest first."""
    return frame(
        conn,
        "SELECT o.case_id, o.status, o.opened_at, o.resolved_at, o.resolved_by, o.alert_count "
        "FROM cases c JOIN cases o ON o.card_id = c.card_id AND o.case_id <> c.case_id "
        "WHERE c.case_id = %s ORDER BY o.opened_at DESC",
        (case_id,),
    )


def case_notes(conn: psycopg.Connection[Any], case_id: int) -> pd.DataFrame:
    return frame(
        conn,
        "SELECT at, author, note FROM case_notes WHERE case_id = %s ORDER BY at, id",
        (case_id,),
    )


def _locked(conn: psycopg.Connection[Any], case_id: int) -> tuple[str, str | None]:
    """The case's status and assignee, locked for this transaction."""
    row = conn.execute(
        "SELECT status, assignee FROM cases WHERE case_id = %s FOR UPDATE", (case_id,)
    ).fetchone()
    if row is None:
        raise CaseError(f"no case {case_id}")
    status = str(row[0])
    if status in RESOLVED:
        raise CaseError(f"case {case_id} is already {status.replace('_', ' ')}")
    return status, None if row[1] is None else str(row[1])


def _set(
    conn: psycopg.Connection[Any], case_id: int, column: Literal["assignee", "status"],
    before: str | None, after: str | None, *, action: str, by: User, at: datetime,
) -> None:  # fmt: skip
    """One column of a locked case changed, and the change audited."""
    conn.execute(
        f"UPDATE cases SET {column} = %s, updated_at = %s WHERE case_id = %s",  # noqa: S608
        (after, at, case_id),
    )
    audit.record(
        conn, at=at, actor=by.username, action=action, object_type="case",
        object_id=str(case_id), detail={"from": before, "to": after},
    )  # fmt: skip


def assign(
    conn: psycopg.Connection[Any], case_id: int, assignee: str | None, *, by: User, at: datetime
) -> None:
    """Give the case to ``assignee`` (an active user), or to nobody."""
    with conn.transaction():
        _status, before = _locked(conn, case_id)
        if assignee is not None:
            active = conn.execute(
                "SELECT 1 FROM app_users WHERE username = %s AND disabled_at IS NULL", (assignee,)
            ).fetchone()
            if active is None:
                raise CaseError(f"no active user {assignee!r} to assign case {case_id} to")
        _set(conn, case_id, "assignee", before, assignee, action="case.assign", by=by, at=at)


def move(
    conn: psycopg.Connection[Any], case_id: int, status: str, *, by: User, at: datetime
) -> None:
    """Change an unresolved case's status (resolving is ``resolve``)."""
    with conn.transaction():
        before, _assignee = _locked(conn, case_id)
        if status not in _MOVES[before]:
            allowed = ", ".join(sorted(_MOVES[before]))
            raise CaseError(f"case {case_id} is {before}: it can go to {allowed}, not {status!r}")
        _set(conn, case_id, "status", before, status, action="case.status", by=by, at=at)


def add_note(
    conn: psycopg.Connection[Any], case_id: int, note: str, *, by: User, at: datetime
) -> None:
    text = note.strip()
    if not text:
        raise CaseError("an empty note is not added")
    if len(text) > 4000:
        raise CaseError(f"a note has at most 4,000 characters, not {len(text):,}")
    with conn.transaction():
        if conn.execute("SELECT 1 FROM cases WHERE case_id = %s", (case_id,)).fetchone() is None:
            raise CaseError(f"no case {case_id}")
        conn.execute(
            "INSERT INTO case_notes (case_id, at, author, note) VALUES (%s, %s, %s, %s)",
            (case_id, at, by.username, text),
        )
        audit.record(
            conn, at=at, actor=by.username, action="case.note", object_type="case",
            object_id=str(case_id), detail={"characters": len(text)},
        )  # fmt: skip


def resolve(
    conn: psycopg.Connection[Any],
    case_id: int,
    *,
    fraud: bool,
    by: User,
    at: datetime,
    comment: str | None = None,
) -> list[str]:
    """Resolve the case and label each of its alerts as ``fraud`` or not (an alert already
    given a verdict keeps it); returns the tx_ids labelled now, for the labels topic."""
    with conn.transaction():
        status, _assignee = _locked(conn, case_id)
        if status == "escalated" and not by.can("supervisor"):
            raise CaseError(f"case {case_id} is escalated: a supervisor resolves it")
        verdict = "fraud" if fraud else "legitimate"
        labelled = [
            str(row[0])
            for row in conn.execute(
                "INSERT INTO review_decisions (tx_id, verdict, analyst, comment, decided_at) "
                "SELECT tx_id, %s, %s, %s, %s FROM case_alerts WHERE case_id = %s "
                "ON CONFLICT (tx_id) DO NOTHING RETURNING tx_id",
                (verdict, by.username, comment or None, at, case_id),
            ).fetchall()
        ]
        conn.execute(
            "INSERT INTO labels (tx_id, source, is_fraud, reported_at) "
            "SELECT tx, 'analyst', %s, %s FROM unnest(%s::text[]) AS tx "
            "ON CONFLICT (tx_id, source) DO NOTHING",
            (fraud, at, labelled),
        )
        conn.execute(
            "UPDATE cases SET status = %s, resolved_at = %s, resolved_by = %s, updated_at = %s "
            "WHERE case_id = %s",
            (f"resolved_{verdict}", at, by.username, at, case_id),
        )
        audit.record(
            conn, at=at, actor=by.username, action="case.resolve", object_type="case",
            object_id=str(case_id),
            detail={"verdict": verdict, "labelled": labelled, "comment": comment or None},
        )  # fmt: skip
    return labelled

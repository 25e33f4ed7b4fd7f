"""Cases: a card's alerts worked together, from open to resolved.

The queue shows the unresolved cases of a view (all, mine, unassigned, overdue) with every
view's total; a chosen case shows its alerts and why, the card's transactions around them,
earlier cases and notes, and the actions: assign, move, note, resolve (which labels its
alerts and publishes the labels)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from fraudstream.dashboard.common import (
    Unavailable,
    current_user,
    masked,
    now,
    read,
    settings,
    stamp,
    write,
)
from fraudstream.dashboard.format import reasons_text
from fraudstream.dashboard.labels import publish_label
from fraudstream.privacy import mask_token
from fraudstream.store import cases
from fraudstream.store.users import list_users

st.title("Cases")
user = current_user()
sla = settings().dashboard.sla_minutes

if "case_message" in st.session_state:
    st.success(st.session_state.pop("case_message"))

left, right = st.columns([3, 1])
try:
    totals = read(cases.case_totals, user=user.username, now=now(), sla_minutes=sla)
except Unavailable:
    st.stop()
view = left.radio(
    "Queue",
    cases.VIEWS,
    horizontal=True,
    format_func=lambda name: f"{name.capitalize()} ({totals[name]:,})",
    key="case_view",
)
view = view or "all open"
oldest_first = right.toggle("Oldest first", help="Off: most urgent (priority, then age) first.")
try:
    queue = read(
        cases.case_queue, view=view, user=user.username, now=now(), sla_minutes=sla,
        oldest_first=oldest_first,
    )  # fmt: skip
except Unavailable:
    st.stop()
if queue.empty:
    st.success(f"No case in “{view}”.")
    st.stop()

shown = masked(queue)
st.caption(f"{len(queue):,} of {totals[view]:,} case(s) in “{view}”.")
st.dataframe(
    pd.DataFrame(
        {
            "case": shown["case_id"],
            "priority": "P" + shown["priority"].astype(str),
            "status": shown["status"],
            "card": shown["card_id"],
            "alerts": shown["alert_count"],
            "highest score": shown["max_score"].round(3),
            "amount": shown["total_amount"].astype(float).round(2),
            "assignee": shown["assignee"].fillna("—"),
            "opened": shown["opened_at"].map(stamp),
            "due": shown["due_at"].map(stamp),
            "overdue": shown["overdue"].map({True: "overdue", False: ""}),
        }
    ),
    hide_index=True,
    width="stretch",
)

cards_of = dict(zip(queue["case_id"], queue["card_id"], strict=True))
chosen = st.selectbox(
    "Case",
    list(queue["case_id"]),
    format_func=lambda case_id: f"#{case_id} · card {mask_token(cards_of[case_id])}",
)
case = read(cases.get_case, int(chosen), now=now(), sla_minutes=sla)
if case is None:
    st.warning(f"Case {chosen} no longer exists.")
    st.stop()


def _act(action, *args, message: str, **kwargs) -> object:  # type: ignore[no-untyped-def]
    """Run a case action; a refusal is shown, a success survives the rerun."""
    try:
        done = write(action, int(chosen), *args, by=user, at=now(), **kwargs)
    except cases.CaseError as error:
        st.error(str(error))
        st.stop()
    except Unavailable:
        st.stop()
    st.session_state["case_message"] = message
    return done


summary, actions = st.columns([3, 2])
with summary:
    due = f"due {stamp(case['due_at'])}" + (" — **overdue**" if case["overdue"] else "")
    st.subheader(f"Case #{chosen} · P{case['priority']} · {case['status']}")
    st.write(
        f"Card **{mask_token(case['card_id'])}** · {case['alert_count']} alert(s) · "
        f"{float(case['total_amount']):,.2f} in total · highest score {case['max_score']:.3f}"
    )
    st.write(f"Opened {stamp(case['opened_at'])} · {due}")
    st.write(f"Assignee: **{case['assignee'] or 'nobody'}**")

with actions:
    users = read(list_users)
    active = sorted(users[users["disabled_at"].isna()]["username"])
    take, give = st.columns(2)
    if take.button("Assign to me", disabled=case["assignee"] == user.username):
        _act(cases.assign, user.username, message=f"Case {chosen} assigned to you.")
        st.rerun()
    target = give.selectbox("Assign to", ["—", *active], key="assign_to")
    if give.button("Assign") and target != "—":
        _act(cases.assign, target, message=f"Case {chosen} assigned to {target}.")
        st.rerun()
    moves = st.columns(3)
    for column, (status, label) in zip(
        moves,
        (("investigating", "Investigate"), ("escalated", "Escalate"), ("open", "Reopen")),
        strict=True,
    ):
        if column.button(label, disabled=case["status"] == status, key=f"move_{status}"):
            _act(cases.move, status, message=f"Case {chosen} is now {status}.")
            st.rerun()
    with st.form("resolve", clear_on_submit=True):
        comment = st.text_input("Resolution comment (optional)")
        fraud = st.form_submit_button("Resolve: fraud", type="primary")
        legitimate = st.form_submit_button("Resolve: legitimate")
    if fraud or legitimate:
        labelled = _act(
            cases.resolve, fraud=bool(fraud), comment=comment or None,
            message=f"Case {chosen} resolved as {'fraud' if fraud else 'legitimate'}.",
        )  # fmt: skip
        failed = [
            problem
            for tx_id in labelled  # type: ignore[attr-defined]
            if (problem := publish_label(settings(), tx_id, bool(fraud), now())) is not None
        ]
        if failed:
            st.session_state["case_message"] += (
                f" {len(failed)} label(s) stored but not yet on the labels topic: {failed[0]}."
            )
        st.rerun()


def _transactions(frame: pd.DataFrame, **extra: object) -> None:
    """A table of transactions: when, how much, where, score and decision, then ``extra``."""
    st.dataframe(
        pd.DataFrame(
            {
                "event time": frame["event_time"].map(stamp),
                "amount": frame["amount"].astype(float).round(2),
                "terminal": frame["terminal_id"],
                "score": frame["score"].round(3),
                "decision": frame["decision"],
                **extra,
                "transaction": frame["tx_id"],
            }
        ),
        hide_index=True,
        width="stretch",
    )


alerts_tab, timeline_tab, earlier_tab, notes_tab = st.tabs(
    ["Alerts", "Card timeline", "Earlier cases", "Notes"]
)
with alerts_tab:
    alerts = read(cases.case_alerts, int(chosen))
    _transactions(
        alerts,
        why=[
            reasons_text(r, h) for r, h in zip(alerts["reasons"], alerts["rule_hits"], strict=True)
        ],
        verdict=alerts["verdict"].fillna("—"),
    )
with timeline_tab:
    timeline = read(cases.card_timeline, int(chosen))
    st.caption(
        "The card's transactions, newest first, from a week before its first alert to a day "
        "after its last."
    )
    _transactions(
        timeline,
        **{
            "in this case": timeline["in_case"].map({True: "alert", False: ""}),
            "label": timeline["labelled_fraud"]
            .map({True: "fraud", False: "legitimate"})
            .fillna(""),
        },
    )
with earlier_tab:
    earlier = read(cases.earlier_cases, int(chosen))
    if earlier.empty:
        st.info("No other case on this card.")
    else:
        st.dataframe(
            pd.DataFrame(
                {
                    "case": earlier["case_id"],
                    "status": earlier["status"],
                    "opened": earlier["opened_at"].map(stamp),
                    "resolved": earlier["resolved_at"].map(stamp),
                    "by": earlier["resolved_by"].fillna("—"),
                    "alerts": earlier["alert_count"],
                }
            ),
            hide_index=True,
            width="stretch",
        )
with notes_tab:
    for note in read(cases.case_notes, int(chosen)).itertuples():
        st.markdown(f"**{note.author}** · {stamp(note.at)}  \n{note.note}")
    with st.form("note", clear_on_submit=True):
        text = st.text_area("Add a note", max_chars=4000)
        if st.form_submit_button("Add note"):
            _act(cases.add_note, text, message=f"Note added to case {chosen}.")
            st.rerun()

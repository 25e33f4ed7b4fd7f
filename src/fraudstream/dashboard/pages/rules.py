"""Rules: the live rule set, its versions, and the four-eyes path of a change — draft (any
analyst), backtest on stored history, approve (another supervisor), publish; publishing an
earlier version rolls back. Engines pick a published version up within seconds."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import streamlit as st

from fraudstream.dashboard.common import (
    Unavailable,
    current_user,
    now,
    read,
    settings,
    stamp,
    write,
)
from fraudstream.engines.base import decision_rules
from fraudstream.model.registry import Registry
from fraudstream.store import rulebook
from fraudstream.store.backtest import backtest
from fraudstream.store.lists import active_lists

st.title("Rules")
user = current_user()
if "rules_message" in st.session_state:
    st.success(st.session_state.pop("rules_message"))

try:
    live = read(rulebook.published)
    history = read(rulebook.versions)
except Unavailable:
    st.stop()
current = live.rules if live else decision_rules(settings())
source = f"version {live.version}" if live else f"the rules file ({current.version})"
st.caption(
    f"Live: **{source}** · a rule forces at least its action (allow approves unless a rule "
    "declines); the model's thresholds still apply."
)
_COLUMNS = ["name", "action", "when", "enabled"]
_RULES_ONLY = {"review": 2.0, "decline": 3.0}
_DAYS = [
    "day", "transactions", "reviewed", "declined", "cards", "flagged_amount", "precision",
    "recall", "live_precision", "live_recall", "overlap", "over_capacity",
]  # fmt: skip


def _table(rules) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    rows = []
    for rule in rules.rule:
        when = rule.when
        if when is None:
            column, values = (
                ("terminal_id", rule.terminals) if rule.by_terminal else ("card_id", rule.cards)
            )
            when = f"{column} in {sorted(values)!r}"
        elif not isinstance(when, str):
            side = "above" if when.above is not None else "below"
            when = f"{when.feature} {'>' if side == 'above' else '<'} {when.above or when.below}"
        rows.append(
            {"name": rule.name, "action": rule.action, "when": when, "enabled": rule.enabled}
        )
    return pd.DataFrame(rows, columns=_COLUMNS)


def _apply(step, *args, message: str, **kwargs) -> object:  # type: ignore[no-untyped-def]
    try:
        done = write(step, *args, by=user, at=now(), **kwargs)
    except rulebook.RuleBookError as error:
        st.error(str(error))
        st.stop()
    except Unavailable:
        st.stop()
    st.session_state["rules_message"] = message
    return done


draft_tab, versions_tab = st.tabs(["Draft and backtest", "Versions"])
with draft_tab:
    st.write("Edit the rules (a row per rule; add or delete rows), then save a draft.")
    edited = st.data_editor(
        _table(current), num_rows="dynamic", width="stretch", key="rules_editor",
        column_config={
            "action": st.column_config.SelectboxColumn(options=["review", "decline", "allow"]),
            "when": st.column_config.TextColumn(
                help="e.g. card_tx_count_1h > 5 and amount > 3 × card_amount_mean_30d; "
                "terminal_id in blocked_terminals", width="large",
            ),
        },
    )  # fmt: skip
    rules = [
        {"name": row["name"], "action": row["action"], "when": row["when"],
         "enabled": bool(row["enabled"])}
        for row in edited.dropna(subset=["name"]).to_dict("records")
    ]  # fmt: skip
    note = st.text_input("What changes, and why", key="draft_note")
    left, right = st.columns(2)
    days = left.slider("Backtest over the last … days", 1, 60, 14)
    if right.button("Backtest"):
        try:
            candidate = rulebook.checked_rules(rules)
        except rulebook.RuleBookError as error:
            st.error(str(error))
            st.stop()
        registry = Registry(settings().models_dir)
        model = registry.current()
        # No model yet: the rules alone (no score reaches these thresholds).
        thresholds = registry.metadata(model)["thresholds"] if model else _RULES_ONLY
        today = now().date()
        result = read(
            backtest, candidate.model_copy(update={"lists": read(active_lists, now())}),
            first=today - timedelta(days=days), last=today, thresholds=thresholds,
            matured_before=today - timedelta(days=settings().engine.quality_maturity_days),
        )  # fmt: skip
        if not result.rows:
            st.info("No stored prediction in that period.")
        else:
            totals = result.totals
            figures = st.columns(5)
            figures[0].metric("Transactions", f"{totals['transactions']:,.0f}")
            figures[1].metric(
                "Reviewed / declined", f"{totals['reviewed']:,.0f} / {totals['declined']:,.0f}"
            )
            figures[2].metric(
                "Precision (live)", f"{totals['precision']:.3f} ({totals['live_precision']:.3f})"
            )
            figures[3].metric(
                "Recall (live)", f"{totals['recall']:.3f} ({totals['live_recall']:.3f})"
            )
            figures[4].metric("Overlap with live", f"{totals['overlap']:.0%}")
            if result.unread:
                st.warning(
                    f"Stored predictions do not keep {', '.join(result.unread)}: rules reading "
                    "them never fire in a backtest."
                )
            shown = result.days[_DAYS].round(3)
            st.dataframe(
                shown.rename(columns=lambda c: c.replace("_", " ")),
                hide_index=True,
                width="stretch",
            )
    if st.button("Save draft", type="primary"):
        version = _apply(rulebook.draft, rules, note=note, message="")
        st.session_state["rules_message"] = f"Version {version} drafted: a supervisor approves it."
        st.rerun()

with versions_tab:
    compared = read(rulebook.shadow_days, now() - timedelta(days=30))
    if not compared.empty:
        st.subheader("Shadow beside live, day by day")
        st.caption("The same transactions: what each rule set flagged (review or decline).")
        st.dataframe(
            compared.rename(columns=lambda c: c.replace("_", " ")),
            hide_index=True,
            width="stretch",
        )
    if history.empty:
        st.info("No version yet: the rules file decides. Draft one above.")
        st.stop()
    st.dataframe(
        pd.DataFrame(
            {
                "version": history["version"], "status": history["status"],
                "note": history["note"], "rules": history["rules"].map(len),
                "drafted by": history["drafted_by"], "drafted": history["drafted_at"].map(stamp),
                "approved by": history["approved_by"].fillna("—"),
                "last published": history["published_at"].map(stamp),
            }
        ),
        hide_index=True, width="stretch",
    )  # fmt: skip
    chosen = st.selectbox("Version", list(history["version"]))
    row = history.set_index("version").loc[chosen]
    st.dataframe(
        _table(rulebook.checked_rules(row["rules"], f"book-{chosen}")),
        hide_index=True,
        width="stretch",
    )
    approve, publish, shadow = st.columns(3)
    if approve.button("Approve", disabled=row["status"] != "draft"):
        _apply(rulebook.approve, int(chosen), message=f"Version {chosen} approved.")
        st.rerun()
    label = "Roll back to this version" if live and chosen < live.version else "Publish"
    if publish.button(label, disabled=row["status"] in ("draft", "live")):
        _apply(rulebook.publish, int(chosen), message=f"Version {chosen} is live.")
        st.rerun()
    if shadow.button("Run in shadow", disabled=row["status"] in ("draft", "live", "shadow")):
        _apply(rulebook.publish, int(chosen), target="shadow",
               message=f"Version {chosen} runs in shadow.")  # fmt: skip
        st.rerun()

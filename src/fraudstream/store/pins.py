"""Which model and rules decide each partition's records, recorded before they are used.

The engine sends a verdict as soon as its step has decided, before the step is committed
(docs/adr/0007). A crash in between makes the next owner decide those records again, and it
must decide them as they were answered: with the same model and the same rules, whatever was
promoted or published meanwhile. So an engine pins a partition's model and rules here before
it decides anything of that partition with them, and a restarted engine replays the records
that may have been answered with the pinned ones (``engines/local.py``). The rule sets are
kept whole, lists included: the rule book keeps its versions, but the live lists change in
place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg

from fraudstream.policy import RuleSet

__all__ = ["Pin", "pin", "pins", "rule_set"]


@dataclass(frozen=True)
class Pin:
    model_version: str
    rules_version: str


def pin(
    conn: psycopg.Connection[Any],
    group: str,
    topic: str,
    partitions: list[int],
    model_version: str,
    rules: RuleSet,
) -> None:
    """Pin ``partitions`` to ``model_version`` and ``rules`` (stored if new), in one
    transaction committed before this returns."""
    if not partitions:
        return
    lists = {name: sorted(entries) for name, entries in sorted(rules.lists.items())}
    with conn.transaction():
        conn.execute(
            "INSERT INTO decision_rule_sets (rules_version, rules, lists) VALUES (%s, %s, %s) "
            "ON CONFLICT (rules_version) DO NOTHING",
            (rules.version, rules.model_dump_json(exclude_unset=True), json.dumps(lists)),
        )
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO decision_pins (consumer_group, topic, partition, model_version, "
                "rules_version) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET "
                "model_version = excluded.model_version, "
                "rules_version = excluded.rules_version, pinned_at = now()",
                [(group, topic, p, model_version, rules.version) for p in partitions],
            )


def pins(conn: psycopg.Connection[Any], group: str, topic: str) -> dict[int, Pin]:
    """Each partition's pinned model and rules (partitions never decided: absent)."""
    rows = conn.execute(
        "SELECT partition, model_version, rules_version FROM decision_pins "
        "WHERE consumer_group = %s AND topic = %s",
        (group, topic),
    ).fetchall()
    if not conn.autocommit:
        conn.commit()
    return {int(p): Pin(str(m), str(r)) for p, m, r in rows}


def rule_set(conn: psycopg.Connection[Any], version: str) -> RuleSet | None:
    """The rule set an engine decided with as ``version``, lists included; None if unknown."""
    row = conn.execute(
        "SELECT rules, lists FROM decision_rule_sets WHERE rules_version = %s", (version,)
    ).fetchone()
    if not conn.autocommit:
        conn.commit()
    if row is None:
        return None
    rules, lists = row
    return RuleSet.model_validate(rules).model_copy(
        update={"lists": {name: frozenset(entries) for name, entries in lists.items()}}
    )

"""``POST /v1/decisions``, without the web framework: one transaction in, its decision out.

The owning engine decides (docs/adr/0007): the transaction is appended to the stream with a
reply address and the engine's verdict, sent as soon as its step has decided (the row it
stores says the same), is the answer. If no
verdict comes within ``api.budget_ms`` the answer is the policy's fallback
(``api/fallback.py``), marked degraded and recorded; the transaction is in the stream
anyway and gets its full decision there. Retries are answered from what is stored: the same
``tx_id`` with the same content gets the stored decision, other content is a conflict.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import msgspec

from fraudstream.api.bridge import DecisionBridge
from fraudstream.api.fallback import fallback_decision
from fraudstream.api.recorder import DegradedRecorder
from fraudstream.clock import Clock
from fraudstream.policy import RuleSet
from fraudstream.records import Verdict
from fraudstream.schema import Invalid, Transaction, content_digest, decode_transaction, encode
from fraudstream.telemetry import API_DECISIONS, API_DEGRADED

__all__ = ["Conflict", "Decider", "DecisionOut", "StoredLookup", "Unprocessable"]

log = logging.getLogger("fraudstream.api")

_ANSWERS_KEPT = 200_000  # recent answers by tx_id, for retries that come back here
# The wait for a verdict ends this much before the budget: the fallback takes microseconds,
# but a busy event loop can fire a timer milliseconds late.
_MARGIN_SHARE, _MARGIN_MIN_S = 0.05, 0.004
_STORED_POLL_S = 0.002
_ABANDON_AFTER_S = 60.0
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)  # replaced by the answer's time


class DecisionOut(msgspec.Struct, kw_only=True):
    """The response body (``api/schemas.py`` documents it for OpenAPI)."""

    tx_id: str
    decision: str
    score: float | None
    reasons: list[str]
    rule_hits: list[str]
    model_version: str | None
    rules_version: str
    degraded: bool
    degraded_reason: str | None = None
    stale: list[str] = []
    missing: list[str] = []
    replayed: bool = False
    decided_at: datetime
    decision_ms: float


class Unprocessable(Exception):
    """HTTP 422: the body is not a valid transaction (``field`` and ``rule`` say where)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.field, self.rule = _field_and_rule(message)


class Conflict(Exception):
    """HTTP 409: the tx_id was decided before with other content."""


StoredLookup = Callable[[str], "dict[str, Any] | None"]
"""tx_id → its stored prediction (``fraud_predictions`` columns), or None."""

_encoder = msgspec.json.Encoder()


class Decider:
    def __init__(
        self,
        *,
        bridge: DecisionBridge,
        rules: RuleSet,
        clock: Clock,
        budget_ms: float,
        floor_amount: float,
        stored: StoredLookup,
        recorder: DegradedRecorder,
    ) -> None:
        self.bridge = bridge
        self.rules = rules
        self.clock = clock
        self.budget_s = budget_ms / 1000
        self.margin_s = max(_MARGIN_MIN_S, _MARGIN_SHARE * self.budget_s)
        self.floor_amount = floor_amount
        self.stored = stored
        self.recorder = recorder
        self._answers: OrderedDict[str, tuple[int, DecisionOut]] = OrderedDict()
        self.degraded = 0

    async def decide(self, body: bytes, key_name: str | None) -> bytes:
        """The decision on ``body`` as the response's JSON; raises Unprocessable, Conflict."""
        started = time.perf_counter()
        deadline = started + self.budget_s - self.margin_s
        record = decode_transaction(body, now=self.clock.now())
        if isinstance(record, Invalid):
            raise Unprocessable(record.reason)
        digest = content_digest(record)
        known = self._answers.get(record.tx_id)
        if known is not None:
            if known[0] != digest:
                raise Conflict(_conflict(record.tx_id))
            answer = msgspec.structs.replace(known[1], replayed=True)
            return self._finish(answer, started)
        future = self.bridge.ask(record.tx_id, digest, record.card_id, encode(record))
        if future is None:  # the same tx_id with other content is waiting here
            raise Conflict(_conflict(record.tx_id))
        try:
            verdict = await asyncio.wait_for(
                asyncio.shield(future), max(deadline - time.perf_counter(), 0)
            )
        except TimeoutError:
            # A verdict may still come (and update the card's state here); after a minute
            # nobody waits for it any more.
            asyncio.get_running_loop().call_later(_ABANDON_AFTER_S, future.cancel)
            answer = self._degraded(record, "engine_late")
            return self._finish(answer, started, record, key_name)
        if verdict.status == "decided":
            answer = _from_verdict(verdict)
            self._keep(record.tx_id, digest, answer)
            return self._finish(answer, started)
        if verdict.status == "conflict":
            raise Conflict(_conflict(record.tx_id))
        if verdict.status == "rejected":
            raise Unprocessable(verdict.detail or "rejected by the engine")
        answer = await self._replayed(record, digest, deadline)
        return self._finish(answer, started, record, key_name)

    async def _replayed(self, record: Transaction, digest: int, deadline: float) -> DecisionOut:
        """The stored decision of an identical earlier transaction (its row may still be on
        its way into PostgreSQL: asked again until the deadline)."""
        while True:
            row = await asyncio.to_thread(self.stored, record.tx_id)
            if row is not None:
                if row["content_hash"] is not None and int(row["content_hash"]) != digest:
                    raise Conflict(_conflict(record.tx_id))
                answer = _from_row(row)
                self._keep(record.tx_id, digest, answer)
                return msgspec.structs.replace(answer, replayed=True)
            if time.perf_counter() + _STORED_POLL_S >= deadline:
                return self._degraded(record, "stored_decision_late")
            await asyncio.sleep(_STORED_POLL_S)

    def _degraded(self, record: Transaction, kind: str) -> DecisionOut:
        """The fallback decision; ``kind`` says for the metrics why the full one is missing:
        no verdict from the engine in time, or an earlier one not yet read back stored."""
        why = f"the engine did not decide within {self.budget_s * 1000:.0f} ms"
        fallback = fallback_decision(
            record, self.bridge.cards.get(record.card_id), self.rules,
            floor_amount=self.floor_amount, why=why,
        )  # fmt: skip
        self.degraded += 1
        API_DEGRADED.labels(kind).inc()
        return DecisionOut(
            tx_id=record.tx_id, decision=fallback.decision, score=None,
            reasons=fallback.reasons, rule_hits=fallback.rule_hits, model_version=None,
            rules_version=self.rules.version, degraded=True, degraded_reason=why,
            stale=fallback.stale, missing=fallback.missing, decided_at=self.clock.now(),
            decision_ms=0.0,
        )  # fmt: skip

    def _keep(self, tx_id: str, digest: int, answer: DecisionOut) -> None:
        self._answers[tx_id] = (digest, answer)
        if len(self._answers) > _ANSWERS_KEPT:
            self._answers.popitem(last=False)

    def _finish(
        self,
        answer: DecisionOut,
        started: float,
        record: Transaction | None = None,
        key_name: str | None = None,
    ) -> bytes:
        answer.decision_ms = round((time.perf_counter() - started) * 1000, 3)
        answer.decided_at = self.clock.now()
        if answer.degraded and record is not None:
            self.recorder.record(record, answer, key_name)
        API_DECISIONS.labels(answer.decision, "true" if answer.degraded else "false").inc()
        return _encoder.encode(answer)


def _conflict(tx_id: str) -> str:
    return f"tx_id {tx_id!r} was already decided with different content"


def _words(rule_hits: list[str], reasons: list[dict[str, Any]]) -> list[str]:
    words = [f"rule {name} fired" for name in rule_hits]
    return words + [str(r.get("text") or r.get("feature")) for r in reasons]


def _from_verdict(verdict: Verdict) -> DecisionOut:
    return DecisionOut(
        tx_id=verdict.tx_id, decision=verdict.decision or "review", score=verdict.score,
        reasons=_words(verdict.rule_hits, verdict.reasons),
        rule_hits=verdict.rule_hits, model_version=verdict.model_version,
        rules_version=verdict.rules_version or "", degraded=False,
        decided_at=verdict.scored_at or _EPOCH, decision_ms=0.0,
    )  # fmt: skip


def _from_row(row: dict[str, Any]) -> DecisionOut:
    return DecisionOut(
        tx_id=row["tx_id"], decision=row["decision"], score=float(row["score"]),
        reasons=_words(list(row["rule_hits"]), list(row["reasons"])),
        rule_hits=list(row["rule_hits"]), model_version=row["model_version"],
        rules_version=row["rules_version"] or "", degraded=False,
        decided_at=row["scored_at"], decision_ms=0.0,
    )  # fmt: skip


_WHERE = re.compile(r" - at `\$\.?([^`]*)`$")
_NAMED = re.compile(r"field `([^`]+)`")


def _field_and_rule(message: str) -> tuple[str | None, str]:
    """Which field a decoding error is about, and the rule it broke, from its message."""
    text = message.split(": ", 1)[1] if ": " in message else message
    where = _WHERE.search(text)
    if where:
        return where.group(1) or None, text[: where.start()]
    named = _NAMED.search(text)
    if named:
        return named.group(1), text
    for name in Transaction.__struct_fields__:
        if text.startswith(f"{name} ") or text.startswith(f"{name}:"):
            return name, text
    return None, text

"""The decision API's logic without its services: the `api` service of `up`, and (below) the
fallback policy, the rate limit, the listening rule, keys and decoder messages."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from fraudstream.api.app import create_app
from fraudstream.api.bridge import CardSnapshot
from fraudstream.api.decisions import DecisionOut, _field_and_rule
from fraudstream.api.fallback import Fallback, fallback_decision
from fraudstream.api.keys import KEY_PREFIX, KeyRing
from fraudstream.api.limits import RateLimiter
from fraudstream.api.recorder import DegradedRecorder
from fraudstream.api.server import listening_problem
from fraudstream.bus.replies import verdict_status
from fraudstream.config import ENV_PREFIX, ApiSettings, Settings, SettingsError, load_settings
from fraudstream.engines.step import duplicate_reason
from fraudstream.features import FEATURE_NAMES
from fraudstream.policy import RuleSet, decide, default_rules, rules_fired
from fraudstream.records import StoredId
from fraudstream.schema import Invalid, Transaction, decode_transaction
from fraudstream.stack import ServiceError
from fraudstream.stack.pipeline import pipeline_services
from fraudstream.stack.postgres import api_password_file
from fraudstream.store.db import HeldConnection, api_conninfo
from fraudstream.store.roles import API_ROLE

from ..conftest import overrides_env, run_cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [key for key in os.environ if key.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)


def _settings(tmp_path: Path, **overrides: str) -> Settings:
    return load_settings(overrides={"state_dir": str(tmp_path), **overrides})


def test_up_runs_the_api_after_the_engine_and_before_the_simulator(tmp_path: Path) -> None:
    services = pipeline_services(_settings(tmp_path, **{"api.port": "8123"}), {})
    assert [s.name for s in services] == ["engine", "api", "simulator", "dashboard"]
    api = services[1]
    assert api.arguments == ["api"]
    assert api.address == "http://127.0.0.1:8123/v1/decisions"
    assert api.log_file == tmp_path / "logs" / "api.log"
    api.preflight()  # loopback: nothing to refuse


def test_up_refuses_an_api_beyond_loopback_before_starting_anything(tmp_path: Path) -> None:
    settings = _settings(tmp_path, **{"api.host": "0.0.0.0"})
    api = next(s for s in pipeline_services(settings, {}) if s.name == "api")
    with pytest.raises(ServiceError, match=r"^cannot start api: api.host is 0.0.0.0.*tls_certfile"):
        api.preflight()


def test_the_api_connects_as_its_own_user(tmp_path: Path) -> None:
    managed = _settings(tmp_path, **{"database.password": "owner"})
    params = conninfo_to_dict(api_conninfo(managed))
    assert params["user"] == API_ROLE
    assert params["password"] == api_password_file(managed).read_text().strip() != "owner"
    assert api_password_file(managed).stat().st_mode & 0o777 == 0o600
    external = "postgresql://owner:pw@db/fraudstream"
    assert api_conninfo(_settings(tmp_path, **{"database.url": external})) == external
    own = "postgresql://fraudstream_api:pw@db/fraudstream"
    both = _settings(tmp_path, **{"database.url": external, "api.database_url": own})
    assert api_conninfo(both) == own


def test_the_committed_openapi_document_is_the_apps() -> None:
    document = json.dumps(create_app(load_settings()).openapi(), indent=2, sort_keys=True) + "\n"
    committed = (ROOT / "docs" / "openapi.json").read_text()
    assert committed == document, (
        "docs/openapi.json is not what the API serves: regenerate it with "
        "`python -m fraudstream api --openapi docs/openapi.json`"
    )


# --- rules on one row: policy.rules_fired against policy.decide -----------------------------

_FEATURES = ["amount", "card_tx_count_1h", "card_terminal_speed", "terminal_risk_1d_delayed"]
_TERMINALS = ["T1", "T2", "T3"]
_CARDS = ["c1", "c2", "c3"]
_limits = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
_conditions = st.builds(
    lambda feature, side, limit: {"feature": feature, side: limit},
    st.sampled_from(_FEATURES),
    st.sampled_from(["above", "below"]),
    _limits,
)
_expressions = st.builds(
    lambda feature, op, limit, terminal: {
        "when": f"{feature} {op} {limit!r} or terminal_id in ['{terminal}']"
    },
    st.sampled_from(_FEATURES),
    st.sampled_from(["<", ">=", "==", "!="]),
    st.integers(-5, 5),
    st.sampled_from(_TERMINALS),
)
_triggers = st.one_of(
    _conditions.map(lambda when: {"when": when}),
    _expressions,
    st.lists(st.sampled_from(_TERMINALS), max_size=2).map(lambda ids: {"terminals": ids}),
    st.lists(st.sampled_from(_CARDS), max_size=2).map(lambda ids: {"cards": ids}),
)
_rule_sets = st.lists(
    st.tuples(_triggers, st.sampled_from(["review", "decline", "allow"]), st.booleans()),
    max_size=6,
).map(
    lambda rules: RuleSet.model_validate(
        {
            "version": "p1",
            "rule": [
                {"name": f"r{i}", "action": action, "enabled": enabled, **trigger}
                for i, (trigger, action, enabled) in enumerate(rules)
            ],
        }
    )
)
_values = st.one_of(st.just(math.nan), st.floats(allow_nan=True), _limits)
_rows = st.tuples(
    st.dictionaries(st.sampled_from(_FEATURES), _values),  # an absent feature is NaN
    st.sampled_from(_TERMINALS),
    st.sampled_from(_CARDS),
)


@given(rules=_rule_sets, rows=st.lists(_rows, min_size=1, max_size=8))
@settings(max_examples=300, deadline=None)
def test_rules_fired_agrees_with_decide(
    rules: RuleSet, rows: list[tuple[dict[str, float], str, str]]
) -> None:
    frame = pd.DataFrame(
        [{name: values.get(name, math.nan) for name in FEATURE_NAMES} for values, _, _ in rows]
    )
    texts = {
        "terminal_id": np.array([terminal for _, terminal, _ in rows], dtype=object),
        "card_id": np.array([card for _, _, card in rows], dtype=object),
    }
    batch = decide(
        np.zeros(len(rows)), frame, texts,
        {"review": 2.0, "decline": 3.0}, rules,  # no score reaches a threshold: rules only
    )  # fmt: skip
    severity = {"review": 1, "decline": 2}
    for index, (values, terminal, card) in enumerate(rows):
        fired = rules_fired(rules, values, {"terminal_id": terminal, "card_id": card})
        assert [name for name, _ in fired] == batch.rule_hits[index]
        actions = {action for _, action in fired}
        strongest = max((severity[a] for a in actions - {"allow"}), default=0)
        if "allow" in actions and "decline" not in actions:
            strongest = 0  # allowed, unless a rule declines
        assert ["approve", "review", "decline"][strongest] == batch.decision[index]


# --- the fallback policy ------------------------------------------------------------------

WHY = "the engine did not decide within 50 ms"
AS_OF = datetime(2026, 12, 3, 9, 0, tzinfo=timezone.utc)


def _record(amount: float = 42.5, **fields: object) -> Transaction:
    values: dict[str, object] = {
        "tx_id": "t-1", "event_time": datetime(2026, 12, 3, 10, 15, tzinfo=timezone.utc),
        "card_id": "card-42", "terminal_id": "term-7", "amount": amount, **fields,
    }  # fmt: skip
    return Transaction(**values)  # type: ignore[arg-type]


def _snapshot(**features: float) -> CardSnapshot:
    """A card's last seen vector: another transaction's (small amount, daytime, a risky
    terminal) unless told otherwise."""
    vector = dict.fromkeys(FEATURE_NAMES, 0.0)
    vector.update({"amount": 5.0, "hour": 14.0, "terminal_risk_1d_delayed": 0.9, **features})
    return CardSnapshot([vector[name] for name in FEATURE_NAMES], AS_OF)


def _rules(*rules: dict[str, object]) -> RuleSet:
    return RuleSet.model_validate({"version": "t1", "rule": list(rules)})


def _fallback(
    record: Transaction, card: CardSnapshot | None = None, rules: RuleSet | None = None
) -> Fallback:
    return fallback_decision(record, card, rules or default_rules(), floor_amount=100.0, why=WHY)


def test_the_floor_approves_small_amounts_and_reviews_larger_ones() -> None:
    small = _fallback(_record(100.0))
    assert (small.decision, small.rule_hits, small.reasons[0]) == ("approve", [], WHY)
    large = _fallback(_record(100.01))
    assert large.decision == "review" and large.rule_hits == []
    assert "amount 100.01 is above the fallback floor 100.00" in large.reasons


@pytest.mark.parametrize("with_card", [False, True])
def test_a_decline_rule_wins_over_the_floor_with_or_without_the_cards_state(
    with_card: bool,
) -> None:
    # The card's last transaction was small: the rule sees this request's amount.
    answer = _fallback(_record(20_000.0), _snapshot() if with_card else None)
    assert answer.decision == "decline" and answer.rule_hits == ["amount_over_limit"]
    assert "rule amount_over_limit fired" in answer.reasons


def test_the_cards_last_seen_state_is_used_and_said_to_be_stale() -> None:
    answer = _fallback(_record(), _snapshot(card_tx_count_1h=9.0))
    assert answer.decision == "review" and answer.rule_hits == ["card_velocity_1h"]
    assert answer.stale == [f"card_state as of {AS_OF.isoformat()}"]
    assert answer.missing == ["model_score", "terminal_risk"]


def test_without_the_cards_state_card_rules_are_not_evaluated_and_it_is_missing() -> None:
    answer = _fallback(_record())
    assert answer.decision == "approve" and answer.stale == []
    assert answer.missing == ["card_state", "model_score", "terminal_risk"]
    assert "no recent state of this card at hand: card rules not evaluated" in answer.reasons


def test_terminal_features_are_never_taken_from_the_stale_vector() -> None:
    risky = _rules(
        {"name": "risky_terminal", "action": "decline",
         "when": {"feature": "terminal_risk_1d_delayed", "above": 0.5}},
    )  # fmt: skip
    answer = _fallback(_record(), _snapshot(terminal_risk_1d_delayed=0.9), risky)
    assert answer.decision == "approve" and answer.rule_hits == []


def test_the_time_of_day_is_the_requests_in_utc_not_the_stale_vectors() -> None:
    night = _rules(
        {"name": "night", "action": "review", "when": {"feature": "is_night", "above": 0.5}}
    )
    # 23:30 at UTC-3 is 02:30 UTC: night by the features' definition (UTC hours).
    late = datetime(2026, 12, 2, 23, 30, tzinfo=timezone(timedelta(hours=-3)))
    answer = _fallback(_record(event_time=late), _snapshot(is_night=0.0), night)
    assert answer.rule_hits == ["night"]


def test_list_rules_fire_on_the_requests_terminal_and_card() -> None:
    lists = _rules(
        {"name": "blocked_terminal", "action": "decline", "terminals": ["term-7"]},
        {"name": "watched_card", "action": "review", "cards": ["card-42"]},
    )
    answer = _fallback(_record(), None, lists)
    assert answer.decision == "decline"
    assert answer.rule_hits == ["blocked_terminal", "watched_card"]


# --- the rate limit -----------------------------------------------------------------------


def test_a_key_gets_its_burst_then_waits_for_tokens() -> None:
    limiter = RateLimiter(rate=10.0, burst=3)
    assert [limiter.allow("checkout", now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.allow("checkout", now=100.0) == pytest.approx(0.1)  # one token: 1/10 s
    assert limiter.allow("checkout", now=100.05) == pytest.approx(0.05)  # half refilled
    assert limiter.allow("refunds", now=100.05) == 0.0  # every key has its own bucket


def test_tokens_refill_over_time_up_to_the_burst() -> None:
    limiter = RateLimiter(rate=10.0, burst=3)
    for _ in range(3):
        limiter.allow("checkout", now=0.0)
    assert limiter.allow("checkout", now=0.1) == 0.0  # 0.1 s: one token back
    assert limiter.allow("checkout", now=0.1) > 0
    later = [limiter.allow("checkout", now=60.0) for _ in range(4)]  # a minute: 3, not 600
    assert later[:3] == [0.0, 0.0, 0.0] and later[3] == pytest.approx(0.1)


# --- where the API may listen -------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_needs_nothing(host: str) -> None:
    assert listening_problem(ApiSettings(host=host)) is None


def test_beyond_loopback_needs_tls_or_the_insecure_flag() -> None:
    problem = listening_problem(ApiSettings(host="0.0.0.0"))
    assert problem is not None and problem.startswith("api.host is 0.0.0.0, not loopback")
    for named in ("api.tls_certfile", "api.tls_keyfile", "FRAUDSTREAM_API__TLS_CERTFILE"):
        assert named in problem
    assert "api.insecure_beyond_loopback=true" in problem
    tls = ApiSettings(host="0.0.0.0", tls_certfile=Path("c.pem"), tls_keyfile=Path("k.pem"))
    assert listening_problem(tls) is None
    assert listening_problem(ApiSettings(host="0.0.0.0", insecure_beyond_loopback=True)) is None


@pytest.mark.parametrize("given_key", ["api.tls_certfile", "api.tls_keyfile"])
def test_half_a_tls_pair_is_refused(given_key: str) -> None:
    with pytest.raises(SettingsError, match=r"api\.tls_certfile and api\.tls_keyfile go together"):
        load_settings(overrides={given_key: "/etc/fraudstream/tls.pem"})


def test_the_api_command_refuses_a_host_beyond_loopback_with_exit_2(tmp_path: Path) -> None:
    env = overrides_env({"state_dir": str(tmp_path)})
    result = run_cli("--set", "api.host=0.0.0.0", "api", env=env, timeout=60)
    assert result.returncode == 2
    assert "api.host is 0.0.0.0, not loopback" in result.stderr
    assert "api.tls_certfile" in result.stderr and "Traceback" not in result.stderr


# --- 422: the field and the rule from the decoder's own messages --------------------------

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)
BODY = {
    "tx_id": "t-1", "event_time": "2026-12-03T10:15:00Z", "card_id": "card-42",
    "terminal_id": "term-7", "amount": 42.5,
}  # fmt: skip


def _reason(payload: bytes) -> str:
    decoded = decode_transaction(payload, now=NOW)
    assert isinstance(decoded, Invalid), decoded
    return decoded.reason


@pytest.mark.parametrize(
    ("changes", "field", "rule"),
    [
        ({"amount": "42"}, "amount", "Expected `float`, got `str`"),
        ({"amount": -1}, "amount", "Expected `float` >= 0.0"),
        ({"card_id": ...}, "card_id", "Object missing required field `card_id`"),
        ({"colour": "red"}, "colour", "Object contains unknown field `colour`"),
        ({"card_id": "ca\x00rd"}, "card_id", "card_id contains a NUL character"),
        ({"event_time": "yesterday"}, "event_time", "Invalid RFC3339 encoded datetime"),
        ({"event_time": "2027-01-01T00:00:00Z"}, "event_time", "event_time 2027-01-01T00:00"),
        ({"tx_id": "x" * 200}, "tx_id", "Expected `str` of length <= 128"),
    ],
)
def test_a_decoder_message_names_the_field_and_the_rule(
    changes: dict[str, object], field: str, rule: str
) -> None:
    body = {k: v for k, v in {**BODY, **changes}.items() if v is not ...}
    found_field, found_rule = _field_and_rule(_reason(json.dumps(body).encode()))
    assert found_field == field
    assert found_rule.startswith(rule)
    assert not found_rule.startswith("invalid transaction")  # the prefix is the API's status


@pytest.mark.parametrize("payload", [b"{not json", b"", b"[]"])
def test_a_body_that_is_no_object_names_no_field(payload: bytes) -> None:
    found_field, found_rule = _field_and_rule(_reason(payload))
    assert found_field is None and found_rule


# --- keys ---------------------------------------------------------------------------------


class _Keys:
    """A connection factory whose SELECT answers the active keys' (digest, name) rows."""

    closed = False

    def __init__(self, *active: tuple[str, str]) -> None:
        self.rows = [(hashlib.sha256(t.encode()).digest(), name) for t, name in active]
        self.opened = 0

    def close(self) -> None:
        self.closed = True

    def __call__(self) -> _Keys:
        self.opened += 1
        self.closed = False
        return self

    def __enter__(self) -> _Keys:
        return self

    def __exit__(self, *_exc: object) -> None:
        return None

    def execute(self, _query: str) -> _Keys:
        return self

    def fetchall(self) -> list[tuple[bytes, str]]:
        return list(self.rows)


def test_a_key_is_known_by_its_digest_until_it_is_revoked() -> None:
    checkout, refunds = KEY_PREFIX + "a" * 43, KEY_PREFIX + "b" * 43
    database = _Keys((checkout, "checkout"), (refunds, "refunds"))
    ring = KeyRing(database)
    ring.reload()
    assert ring.name_of(checkout) == "checkout" and ring.name_of(refunds) == "refunds"
    assert ring.name_of(KEY_PREFIX + "c" * 43) is None  # unknown
    assert ring.name_of(None) is None and ring.name_of("") is None
    database.rows = database.rows[1:]  # checkout revoked: no longer among the active rows
    ring.reload()
    assert ring.name_of(checkout) is None and ring.name_of(refunds) == "refunds"
    assert database.opened == 1  # one connection kept between reloads
    ring.close()
    assert database.closed


class _Connection:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_a_held_connection_is_kept_and_opened_again_after_a_failure() -> None:
    opened: list[_Connection] = []

    def connect() -> Any:
        opened.append(_Connection())
        return opened[-1]

    held = HeldConnection(connect)
    with held() as first, held() as again:
        assert again is first  # one connection for every use
    with pytest.raises(RuntimeError), held():
        raise RuntimeError("the server went away mid-query")
    assert first.closed and len(opened) == 1
    with held() as second:
        assert second is not first and len(opened) == 2
    second.closed = True  # closed from the other side between two uses
    with held() as third:
        assert third is not second
    held.close()
    assert third.closed


def test_degraded_answers_wait_out_a_failed_write_and_are_stored_once_it_is_back() -> None:
    stored: list[tuple[object, ...]] = []
    failures = [RuntimeError("the server went away mid-insert")]

    class Database(_Connection):
        @contextlib.contextmanager
        def cursor(self) -> Iterator[Database]:
            yield self

        def executemany(self, _query: str, rows: list[tuple[object, ...]]) -> None:
            if failures:
                raise failures.pop()
            self.pending = list(rows)

        def commit(self) -> None:
            stored.extend(self.pending)

    opened: list[Database] = []

    def connect() -> Any:
        opened.append(Database())
        return opened[-1]

    recorder = DegradedRecorder(connect)
    recorder.start()
    answer = DecisionOut(
        tx_id="t-1", decision="review", score=None, reasons=[], rule_hits=[],
        model_version=None, rules_version="r1", degraded=True, degraded_reason=WHY,
        decided_at=AS_OF, decision_ms=49.0,
    )  # fmt: skip
    recorder.record(_record(), answer, "checkout")
    deadline = time.monotonic() + 30
    while recorder.stored < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    recorder.close()
    assert [row[0] for row in stored] == ["t-1"]  # kept through the failure, stored once
    assert stored[0][9] == "checkout"
    assert len(opened) == 2 and opened[0].closed  # the failed connection replaced
    assert opened[1].closed  # and the last one closed with the recorder


def test_a_token_without_the_prefix_is_refused_even_if_its_digest_is_held() -> None:
    ring = KeyRing(_Keys(("a" * 47, "odd")))
    ring.reload()
    assert ring.name_of("a" * 47) is None


# --- verdicts of dead-lettered requests ----------------------------------------------------


def test_a_dead_letter_reason_is_a_verdict_status() -> None:
    stored = StoredId(content_hash=7, partition=0, offset=3)
    replay = duplicate_reason("t-1", 7, 1, 9, stored)
    conflict = duplicate_reason("t-1", 8, 1, 9, stored)
    assert replay is not None and conflict is not None
    assert verdict_status(replay) == "replay"
    assert verdict_status(conflict) == "conflict"
    assert verdict_status(_reason(b"{not json")) == "rejected"

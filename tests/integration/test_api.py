"""The decision API against the real broker, database, engine and HTTP server: the stored
decision is the answer, retries are idempotent, conflicts and bad input are refused with the
field named, keys are required, and an engine that is away or killed costs a degraded answer
within the budget, never a decision (``tests/contract`` holds the multi-day parity run)."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest

from fraudstream.api.recorder import _INSERT as RECORD_DEGRADED
from fraudstream.api.schemas import DecisionResponse
from fraudstream.config import Settings
from fraudstream.model.registry import Registry
from fraudstream.stack.postgres import EmbeddedPostgres
from fraudstream.store.db import api_conninfo, connect, conninfo
from fraudstream.store.roles import API_ROLE, ENGINE_ROLE
from fraudstream.telemetry import read_samples

from ..api_kit import Client, create_key, start_api, stop_api, with_api
from ..conftest import free_port, run_cli
from ..engine_kit import engine_env, isolated, start_engine, stop_engine, wait_for


@dataclass
class Api:
    settings: Settings
    client: Client
    key: str
    engine: Any
    log: Path


@contextlib.contextmanager
def _running(stack_settings: Settings, models_dir: Path, log: Path) -> Iterator[Api]:
    # A budget a loaded test machine keeps: these tests are about what is answered; how fast
    # is `fraudstream bench --only api`'s question.
    settings = with_api(isolated(stack_settings, models_dir, batch_max_messages=500), 1000)
    key = create_key(settings, "checkout")
    running = Api(settings, Client(settings.api.port, key), key, start_engine(settings, log), log)
    server = None

    def decided_fully() -> bool:  # the first answers wait for the engine's assignment
        reply = running.client.post(_tx())
        assert reply.status == 200, reply.body
        return not reply.body["degraded"]

    try:
        server = start_api(settings, log)
        wait_for(decided_fully, 90, "a full decision")
        yield running
    finally:
        running.client.close()
        if server is not None:
            stop_api(server)
        if running.engine.poll() is None:
            stop_engine(running.engine, log)


@pytest.fixture
def api(stack_settings: Settings, models_dir: Path, tmp_path: Path) -> Iterator[Api]:
    """An engine and an API of this test's own: for tests that stop, kill or reconfigure."""
    with _running(stack_settings, models_dir, tmp_path / "services.log") as running:
        yield running


@pytest.fixture(scope="module")
def shared_api(
    stack_settings: Settings, models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    """One engine and API for the tests that only send requests (each its own transactions)."""
    log = tmp_path_factory.mktemp("shared-api") / "services.log"
    with _running(stack_settings, models_dir, log) as running:
        yield running


def _tx(**fields: Any) -> dict[str, Any]:
    now = datetime.now(timezone.utc)
    return {
        "tx_id": f"api-{uuid.uuid4().hex[:12]}", "event_time": now.isoformat(),
        "card_id": f"card-{uuid.uuid4().hex[:6]}", "terminal_id": "term-1", "amount": 42.5,
        **fields,
    }  # fmt: skip


def _stored(settings: Settings, tx_id: str) -> dict[str, Any] | None:
    with psycopg.connect(conninfo(settings)) as conn:
        row = conn.execute(
            "SELECT score, decision, rule_hits, model_version, rules_version "
            "FROM fraud_predictions WHERE tx_id = %s",
            (tx_id,),
        ).fetchone()
    if row is None:
        return None
    names = ["score", "decision", "rule_hits", "model_version", "rules_version"]
    return dict(zip(names, row, strict=True))


def _count(settings: Settings, table: str, tx_ids: list[str]) -> int:
    with psycopg.connect(conninfo(settings)) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM {table} WHERE tx_id = ANY(%s)",
            (tx_ids,),
        ).fetchone()
    return int(row[0]) if row else 0


def test_the_answer_is_the_stored_decision_and_a_retry_gets_it_again(shared_api: Api) -> None:
    api = shared_api
    big = _tx(amount=25_000.0)  # over the default rules' limit: declined, a rule named
    reply = api.client.post(big)
    assert reply.status == 200, reply.body
    DecisionResponse.model_validate(reply.body)
    assert not reply.body["degraded"] and not reply.body["replayed"], reply.body
    assert reply.body["decision"] == "decline"
    assert "amount_over_limit" in reply.body["rule_hits"]
    assert any("amount_over_limit" in words for words in reply.body["reasons"])
    # Answered as soon as decided, stored by the step's commit just after (docs/adr/0007).
    wait_for(lambda: _stored(api.settings, big["tx_id"]) is not None, 30, "the row stored")
    stored = _stored(api.settings, big["tx_id"])
    assert stored is not None
    for name in ("score", "decision", "rule_hits", "model_version", "rules_version"):
        assert reply.body[name] == stored[name], name

    again = api.client.post(big)  # a retry, same content: the stored decision, not a new one
    assert again.status == 200
    assert again.body["replayed"] and again.body["score"] == reply.body["score"]
    # Another API process (no memory of the first answer) gets it from the engine and the
    # database: same answer; still one row.
    other = Client(api.settings.api.port, api.key)
    reordered = json.dumps(dict(reversed(list(big.items())))).encode()  # same content
    assert other.post(reordered).body["decision"] == "decline"
    assert _count(api.settings, "fraud_predictions", [big["tx_id"]]) == 1


def test_a_reused_tx_id_with_other_content_is_a_conflict(shared_api: Api) -> None:
    api = shared_api
    first = _tx()
    assert api.client.post(first).status == 200
    changed = {**first, "amount": first["amount"] + 1}
    reply = api.client.post(changed)
    assert reply.status == 409, reply.body
    assert reply.body["error"] == "conflict" and first["tx_id"] in reply.body["message"]
    # From a fresh client too (the engine sees the conflict, not only this process's memory).
    assert Client(api.settings.api.port, api.key).post(changed).status == 409
    # The first is stored, by its step's commit just after its answer.
    wait_for(lambda: _stored(api.settings, first["tx_id"]) is not None, 30, "the first stored")
    assert _stored(api.settings, first["tx_id"])["decision"] is not None  # type: ignore[index]


def test_keys_are_required_checked_and_revocable(api: Api) -> None:
    assert api.client.post(_tx(), key=None).status == 401
    wrong = api.client.post(_tx(), key="fsk_" + "x" * 43)
    assert wrong.status == 401 and wrong.headers.get("www-authenticate") == "Bearer"
    assert api.client.post(_tx(), key=api.key).status == 200
    revoked = run_cli("api-keys", "revoke", "checkout", env=engine_env(api.settings))
    assert revoked.returncode == 0, revoked.stderr
    listed = run_cli("api-keys", "list", env=engine_env(api.settings))
    assert "checkout" in listed.stdout and "revoked" in listed.stdout
    assert api.key not in listed.stdout  # the key itself is never shown again
    wait_for(lambda: api.client.post(_tx()).status == 401, 30, "the revoked key to be refused")


def test_the_metrics_count_each_answer_by_status_and_decision(shared_api: Api) -> None:
    api = shared_api
    url = api.settings.metrics.url_of("api")
    assert url is not None

    def counts() -> dict[tuple[str, str], float]:
        return {
            (sample.name, ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))):
            sample.value
            for sample in read_samples(url)
        }  # fmt: skip

    before = counts()
    decided = [api.client.post(_tx(amount=amount)) for amount in (10.0, 20.0, 25_000.0)]
    first = _tx()
    decided.append(api.client.post(first))
    assert api.client.post({**first, "amount": 1.0}).status == 409
    assert api.client.post(_tx(amount="1")).status == 422
    assert api.client.post(_tx(), key=None).status == 401
    after = counts()

    def grew(name: str, labels: str = "") -> float:
        return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)

    assert [reply.status for reply in decided] == [200] * 4
    assert not any(reply.body["degraded"] for reply in decided)
    assert grew("fraudstream_api_requests_total", "status=200") == 4
    assert grew("fraudstream_api_requests_total", "status=409") == 1
    assert grew("fraudstream_api_requests_total", "status=422") == 1
    assert grew("fraudstream_api_requests_total", "status=401") == 1
    assert grew("fraudstream_api_decision_seconds_count") == 7
    assert grew("fraudstream_api_decision_seconds_sum") > 0
    decisions = [reply.body["decision"] for reply in decided]
    for decision in set(decisions):
        labels = f"decision={decision},degraded=false"
        assert grew("fraudstream_api_decisions_total", labels) == decisions.count(decision)
    assert grew("fraudstream_api_degraded_answers_total", "reason=engine_late") == 0


def test_two_workers_serve_one_sum_of_their_metrics(shared_api: Api, tmp_path: Path) -> None:
    """With ``api.workers`` > 1 each worker counts into its own files and the server's
    endpoint serves their sum: every answer is counted once, whichever worker gave it."""
    base = shared_api.settings
    settings = base.model_copy(
        update={
            "api": base.api.model_copy(update={"port": free_port(), "workers": 2}),
            "metrics": base.metrics.model_copy(update={"api_port": free_port()}),
        }
    )
    server = start_api(settings, tmp_path / "api.log")
    clients = [Client(settings.api.port, shared_api.key) for _ in range(8)]
    try:
        url = settings.metrics.url_of("api")
        assert url is not None
        wait_for(lambda: bool(read_samples(url)), 30, "the workers' metrics endpoint")
        replies = [client.post(_tx()) for client in clients for _ in range(3)]
        assert [reply.status for reply in replies] == [200] * len(replies)
        answered = {
            sample.labels.get("status"): sample.value
            for sample in read_samples(url)
            if sample.name == "fraudstream_api_requests_total"
        }
        assert answered.get("200") == len(replies), answered
        files = list((settings.state_dir / "run" / "api-metrics").glob("*.db"))
        assert len({path.stem.rsplit("_", 1)[-1] for path in files}) == 2  # a pid each
    finally:
        for client in clients:
            client.close()
        stop_api(server)


@pytest.mark.parametrize(
    ("body", "status", "field", "rule"),
    [
        (_tx(amount="12.50"), 422, "amount", "Expected `float`"),
        (_tx(amount=-5), 422, "amount", ">= 0"),
        ({k: v for k, v in _tx().items() if k != "card_id"}, 422, "card_id", "missing required"),
        (_tx(surprise=1), 422, "surprise", "unknown field"),
        (_tx(card_id="ab\x00cd"), 422, "card_id", "NUL"),
        (_tx(card_id="4111 1111 1111 1111"), 422, "card_id", "looks like a card number"),
        (_tx(event_time="2026-13-45"), 422, "event_time", "datetime"),
        (_tx(event_time=(datetime.now(timezone.utc) + timedelta(days=3)).isoformat()), 422,
         "event_time", "outside"),
        (b"{not json", 422, None, "JSON"),
        (b"[1, 2]", 422, None, "Expected `object`"),
        (_tx(tx_id="x" * 200), 422, "tx_id", "length <= 128"),
        (json.dumps(_tx(merchant_category="m" * 70_000)).encode(), 413, None, None),
    ],
    ids=["wrong type", "negative", "missing", "unknown", "NUL", "card number", "bad date", "future",
         "not JSON", "not an object", "too long", "oversized"],
)  # fmt: skip
def test_bad_input_is_refused_naming_the_field_and_the_rule(
    shared_api: Api, body: Any, status: int, field: str | None, rule: str | None
) -> None:
    api = shared_api
    reply = api.client.post(body)
    assert reply.status == status, reply.body
    if status == 422:
        assert reply.body["error"] == "invalid_transaction"
        assert reply.body["field"] == field, reply.body
        assert rule in reply.body["rule"], reply.body  # type: ignore[operator]


def test_an_engine_that_is_away_costs_a_degraded_answer_within_budget_never_a_decision(
    api: Api,
) -> None:
    stop_engine(api.engine, api.log)
    budget = api.settings.api.budget_ms
    sent = [_tx(amount=30.0), _tx(amount=900.0), _tx(amount=20_000.0)]
    replies = [api.client.post(body) for body in sent]
    for reply in replies:
        assert reply.status == 200 and reply.body["degraded"], reply.body
        DecisionResponse.model_validate(reply.body)
        assert reply.body["score"] is None and "model_score" in reply.body["missing"]
        assert reply.body["decision_ms"] < budget
    floor, above, over_limit = (r.body for r in replies)
    assert floor["decision"] == "approve"  # under the fallback floor
    assert above["decision"] == "review"  # over it
    assert over_limit["decision"] == "decline" and over_limit["rule_hits"] == ["amount_over_limit"]
    tx_ids = [body["tx_id"] for body in sent]
    wait_for(
        lambda: _count(api.settings, "degraded_decisions", tx_ids) == 3, 10,
        "the degraded answers to be recorded",
    )  # fmt: skip
    # Back up, the engine decides them fully from the stream: both are recorded.
    api.engine = start_engine(api.settings, api.log)
    wait_for(
        lambda: _count(api.settings, "fraud_predictions", tx_ids) == 3, 90,
        "the full decisions of the degraded requests",
    )  # fmt: skip


def test_the_fallback_decides_by_the_published_rules_and_the_lists_in_force(api: Api) -> None:
    """A card blocked on a list under a published rule is declined even by the degraded
    answer, within seconds and without a restart of the API."""
    from fraudstream.store.lists import add_entry
    from fraudstream.store.rulebook import approve, draft, publish
    from fraudstream.store.users import User

    stop_engine(api.engine, api.log)
    ana, sam = User("ana", "analyst"), User("sam", "supervisor")
    now = datetime.now(timezone.utc)
    block = {"name": "blocked_card", "action": "decline", "when": "card_id in blocked_cards"}
    with connect(api.settings, autocommit=True) as conn:
        for user in (ana, sam):
            conn.execute(
                "INSERT INTO app_users (username, role, password_hash, created_at, created_by) "
                "VALUES (%s, %s, '$argon2id$test', now(), 'test')",
                (user.username, user.role),
            )
        version = draft(conn, [block], note="block lists", by=ana, at=now)
        approve(conn, version, by=sam, at=now)
        publish(conn, version, by=sam, at=now)
        add_entry(conn, "blocked_cards", "card-stolen", reason="reported", by=sam, at=now)

    def declined() -> bool:
        reply = api.client.post(_tx(card_id="card-stolen", amount=5.0))
        assert reply.status == 200 and reply.body["degraded"], reply.body
        return reply.body["decision"] == "decline"

    wait_for(declined, 30, "the degraded answer to follow the published rules and lists")
    reply = api.client.post(_tx(card_id="card-stolen", amount=5.0)).body
    assert reply["rule_hits"] == ["blocked_card"]
    assert reply["rules_version"].startswith(f"book-{version}+lists-")
    other = api.client.post(_tx(card_id="card-fine", amount=5.0)).body
    assert other["decision"] == "approve" and other["rule_hits"] == []


def test_nothing_is_lost_when_the_engine_is_killed_mid_traffic(api: Api) -> None:
    """Requests keep flowing from four clients while the engine is killed with SIGKILL and
    restarted: every request is answered (within the budget, by the server's clock: the
    client's view under load is the benchmark's), every transaction is recorded exactly
    once, and every full answer is the decision stored (answers leave before their commit:
    the kill lands between the two)."""
    budget = api.settings.api.budget_ms
    answers: list[tuple[str, int, bool, float]] = []
    full: dict[str, tuple[str, float]] = {}  # tx_id → (decision, score) answered in full
    stop = threading.Event()

    def send() -> None:
        client = Client(api.settings.api.port, api.key)
        while not stop.is_set():
            body = _tx(card_id=f"card-{uuid.uuid4().hex[:3]}")  # cards shared by requests
            reply = client.post(body)
            answers.append(
                (body["tx_id"], reply.status, reply.body.get("degraded"),
                 reply.body.get("decision_ms", float("inf")))
            )  # fmt: skip
            if reply.status == 200 and not reply.body["degraded"]:
                full[body["tx_id"]] = (reply.body["decision"], reply.body["score"])
        client.close()

    clients = [threading.Thread(target=send) for _ in range(4)]
    for thread in clients:
        thread.start()
    wait_for(lambda: len(answers) > 100, 60, "traffic before the kill")
    api.engine.send_signal(signal.SIGKILL)
    api.engine.wait(10)
    wait_for(lambda: sum(1 for a in answers if a[2]) > 8, 60, "degraded answers while it is down")
    api.engine = start_engine(api.settings, api.log)
    count = len(answers)
    wait_for(lambda: any(not a[2] for a in answers[count:]), 90, "full answers after the restart")
    stop.set()
    for thread in clients:
        thread.join(30)

    assert all(status == 200 for _, status, _, _ in answers), {s for _, s, _, _ in answers}
    slowest = max(decision_ms for *_, decision_ms in answers)
    assert slowest <= budget, slowest
    tx_ids = [tx_id for tx_id, *_ in answers]
    assert len(set(tx_ids)) == len(tx_ids)
    wait_for(
        lambda: _count(api.settings, "fraud_predictions", tx_ids) == len(tx_ids), 120,
        f"all {len(tx_ids)} transactions recorded",
    )  # fmt: skip
    with psycopg.connect(conninfo(api.settings)) as conn:
        rows = conn.execute(
            "SELECT tx_id, decision, score FROM fraud_predictions WHERE tx_id = ANY(%s)",
            (list(full),),
        ).fetchall()
    assert full and {tx_id: (decision, score) for tx_id, decision, score in rows} == full
    degraded = [tx_id for tx_id, _, was_degraded, _ in answers if was_degraded]
    assert degraded
    wait_for(
        lambda: _count(api.settings, "degraded_decisions", degraded) == len(degraded), 10,
        "every degraded answer recorded",
    )  # fmt: skip


def test_an_answer_sent_before_its_commit_is_what_a_restart_stores_after_a_promotion(
    stack_settings: Settings, models_dir: Path, tmp_path: Path
) -> None:
    """The engine answers as soon as it has decided, before its step is committed. Hold its
    write on a lock, promote a model that declines everything, kill the engine and its
    database sessions, restart it: the stored decision is the one answered, by the model
    pinned for the partition, not the one now promoted; what comes after gets the new one."""
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    registry = Registry(models)
    with _running(stack_settings, models, tmp_path / "services.log") as api:
        # Nothing in flight when the lock is taken: a write the lock held from before would
        # hold the next step too, and its answer would be degraded.
        settled = _tx(amount=12.0)
        assert api.client.post(settled).status == 200
        wait_for(lambda: _stored(api.settings, settled["tx_id"]) is not None, 60, "no write due")
        body = _tx(amount=12.0)
        with psycopg.connect(conninfo(api.settings)) as blocker:
            blocker.execute("LOCK TABLE fraud_predictions IN SHARE MODE")  # writes wait
            reply = api.client.post(body)
            assert reply.status == 200 and not reply.body["degraded"], reply.body
            assert _stored(api.settings, body["tx_id"]) is None  # answered, not committed
            answered = registry.current()
            assert reply.body["model_version"] == answered
            artifact = registry.load(answered)
            declining = registry.add(
                artifact.model,
                {**artifact.metadata, "thresholds": {"review": 0.0, "decline": 0.0}},
                promote=True,
            )
            api.engine.send_signal(signal.SIGKILL)
            api.engine.wait(10)
            # Its sessions too (as the superuser): a session waiting on the lock would
            # commit the write itself once the lock is released.
            with psycopg.connect(EmbeddedPostgres(api.settings).admin_conninfo()) as admin:
                terminated = admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = %s AND usename = %s",
                    (api.settings.database.name, ENGINE_ROLE),
                ).fetchone()
            assert terminated is not None and int(str(terminated[0])) > 0
        api.engine = start_engine(api.settings, api.log)
        wait_for(
            lambda: _stored(api.settings, body["tx_id"]) is not None, 90,
            "the answered transaction stored after the restart",
        )  # fmt: skip
        stored = _stored(api.settings, body["tx_id"])
        assert stored is not None
        assert stored["model_version"] == answered != declining
        assert stored["decision"] == reply.body["decision"] != "decline"
        assert stored["score"] == pytest.approx(reply.body["score"])
        assert stored["rules_version"] == reply.body["rules_version"]

        def declined_by_the_new_model() -> bool:
            after = api.client.post(_tx(amount=12.0)).body
            return bool(after["model_version"] == declining and after["decision"] == "decline")

        wait_for(declined_by_the_new_model, 90, "the promoted model deciding what comes after")


def test_the_api_user_reads_decisions_and_keys_and_only_adds_degraded_answers(
    stack_settings: Settings, models_dir: Path
) -> None:
    settings = with_api(isolated(stack_settings, models_dir))
    answered = datetime.now(timezone.utc)
    row = ("t-1", "c-1", 42.5, "approve", [], "why", [], [], "r1", "checkout", answered, 1.0)
    with psycopg.connect(api_conninfo(settings), autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (API_ROLE,)
        conn.execute("SELECT tx_id, content_hash FROM fraud_predictions").fetchall()
        conn.execute("SELECT key_sha256, name FROM api_keys WHERE revoked_at IS NULL").fetchall()
        for _ in range(2):  # the recorder's statement; the second time its ON CONFLICT
            conn.execute(RECORD_DEGRADED, row)
        for statement in (
            "SELECT * FROM degraded_decisions",
            "SELECT * FROM labels",
            "UPDATE api_keys SET revoked_at = now()",
            "INSERT INTO api_keys (name, prefix, key_sha256) VALUES ('k', 'fsk_', 'x')",
            "INSERT INTO fraud_predictions (tx_id) VALUES ('x')",
            "DELETE FROM degraded_decisions",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    assert _count(settings, "degraded_decisions", ["t-1"]) == 1

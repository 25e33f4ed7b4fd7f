"""The decision API as an ASGI application (FastAPI: docs/adr/0007 says why).

``POST /v1/decisions`` (a key in ``Authorization: Bearer …``) and ``GET /v1/health``. The
body is read raw and decoded with the same decoder as the stream (``schema.py``), so the API
refuses exactly what the engine would dead-letter, with the field and the rule named.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import psycopg
from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.security import HTTPBearer
from psycopg.rows import dict_row

from fraudstream import __version__
from fraudstream.api.bridge import DecisionBridge
from fraudstream.api.decisions import Conflict, Decider, Unprocessable
from fraudstream.api.keys import KeyRing
from fraudstream.api.limits import RateLimiter
from fraudstream.api.recorder import DegradedRecorder
from fraudstream.api.reloading import Reloader
from fraudstream.api.schemas import ERROR_RESPONSES, DecisionResponse
from fraudstream.clock import Clock, SystemClock
from fraudstream.config import Settings
from fraudstream.engines.base import PolicyWatcher
from fraudstream.schema import MAX_MESSAGE_BYTES, Transaction
from fraudstream.store.db import HeldConnection, api_conninfo
from fraudstream.telemetry import API_DECISION_SECONDS, API_REQUESTS

__all__ = ["create_app"]

log = logging.getLogger("fraudstream.api")

_MAX_BODY = MAX_MESSAGE_BYTES  # what the stream's decoder accepts; read no further
_STORED = """
SELECT tx_id, decision, score, rule_hits, reasons, model_version, rules_version, content_hash,
       scored_at
FROM fraud_predictions WHERE tx_id = %s
"""


_Answer = tuple[int, list[tuple[str, str]], bytes]
"""A response: status, headers beside the content type, JSON body."""


def _error(status: int, error: str, message: str, **extra: Any) -> _Answer:
    headers = extra.pop("headers", [])
    return status, headers, msgspec.json.encode({"error": error, "message": message, **extra})


class _Database:
    """The API's connections. ``stored`` reads a replayed request's stored decision, from
    worker threads one at a time, on a connection held open; ``connect`` opens one for each
    background reader and writer (key ring, rule reloader, degraded-answer recorder)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._held = HeldConnection(self.connect)

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            api_conninfo(self.settings), autocommit=True, application_name="fraudstream-api",
            connect_timeout=max(1, int(self.settings.database.connect_timeout_s)),
        )  # fmt: skip

    def stored(self, tx_id: str) -> dict[str, Any] | None:
        with self._lock:
            try:
                with self._held() as conn, conn.cursor(row_factory=dict_row) as cursor:
                    return cursor.execute(_STORED, (tx_id,)).fetchone()
            except Exception as error:  # unreachable or refusing: the request degrades
                log.warning("reading a stored decision: %s", error)
                return None

    def close(self) -> None:
        self._held.close()


async def _read_body(chunks: AsyncIterator[bytes], declared: str | None) -> bytes | None:
    """The body, or None when it is larger than any transaction can be."""
    if declared is not None and declared.isdigit() and int(declared) > _MAX_BODY:
        return None
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > _MAX_BODY:
            return None
        parts.append(chunk)
    return b"".join(parts)


class _DecisionsFirst:
    """ASGI: ``POST /v1/decisions`` goes straight to its handler, everything else (health,
    the OpenAPI document, errors) through FastAPI. The framework's middleware stack and
    request objects cost about a third of the API's CPU per decision in a profile at
    1,000 req/s (docs/benchmarks.md); the route is still declared in FastAPI, which
    documents it and serves it the same way when called without this front."""

    def __init__(self, app: FastAPI, answer: Callable[[str, bytes | None], Awaitable[_Answer]]):
        self.app, self.answer = app, answer

    def openapi(self) -> dict[str, Any]:
        return self.app.openapi()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if not (
            scope["type"] == "http" and scope["method"] == "POST"
            and scope["path"] == "/v1/decisions"
        ):  # fmt: skip
            await self.app(scope, receive, send)
            return
        authorization, declared = "", None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-length":
                declared = value.decode("latin-1")

        async def chunks() -> AsyncIterator[bytes]:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                yield message.get("body", b"")
                if not message.get("more_body", False):
                    return

        status, headers, content = await self.answer(
            authorization, await _read_body(chunks(), declared)
        )
        raw = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(content))]
        raw += [(name.lower().encode(), value.encode("latin-1")) for name, value in headers]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": content})


def _refresh(
    policy: PolicyWatcher, connection: HeldConnection, decider: Decider | None = None
) -> None:
    """The fallback's rules: the rule book's and the lists' as the engines have them."""
    with connection() as conn:
        if policy.refresh(conn) and decider is not None:
            decider.rules = policy.rules


def create_app(settings: Settings, clock: Clock | None = None) -> _DecisionsFirst:
    """The ASGI application: FastAPI behind a front that serves decisions directly."""
    clock = clock or SystemClock()
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        database = _Database(settings)
        keys = KeyRing(database.connect)
        await asyncio.to_thread(keys.reload)
        keys.start()
        bridge = DecisionBridge(settings.kafka, asyncio.get_running_loop())
        await asyncio.to_thread(bridge.start)
        recorder = DegradedRecorder(database.connect)
        recorder.start()
        policy = PolicyWatcher(settings, clock)
        rules_connection = HeldConnection(database.connect)
        await asyncio.to_thread(_refresh, policy, rules_connection)
        rules = Reloader(
            "rules", lambda: _refresh(policy, rules_connection, state.get("decider")),
            settings.engine.rules_check_interval_s,
        )  # fmt: skip
        rules.start()
        state.update(
            keys=keys,
            bridge=bridge,
            limiter=RateLimiter(settings.api.rate_per_key, settings.api.burst_per_key),
            decider=Decider(
                bridge=bridge, rules=policy.rules, clock=clock,
                budget_ms=settings.api.budget_ms, floor_amount=settings.api.fallback_floor_amount,
                stored=database.stored, recorder=recorder,
            ),
        )  # fmt: skip
        log.info("decision API ready (replies to %s)", bridge.name)
        try:
            yield
        finally:
            rules.close()
            rules_connection.close()
            keys.close()
            recorder.close()
            bridge.close()
            database.close()

    app = FastAPI(
        title="fraudstream decision API",
        version=__version__,
        description="Approve, review or decline a card transaction before it is paid.",
        lifespan=lifespan,
        # FastAPI's OpenTelemetry hooks ask the environment for a provider on every request
        # (a tenth of the request path's samples in a profile); no collector is set up here.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    bearer = HTTPBearer(auto_error=False, description="An API key from `fraudstream api-keys`.")

    async def answer(authorization: str, body: bytes | None) -> _Answer:
        """One request's status, extra headers and JSON body, whichever way it came in;
        counted and timed for the metrics."""
        started = time.perf_counter()
        status, headers, content = await respond(authorization, body)
        API_DECISION_SECONDS.observe(time.perf_counter() - started)
        API_REQUESTS.labels(str(status)).inc()
        return status, headers, content

    async def respond(authorization: str, body: bytes | None) -> _Answer:
        keys: KeyRing = state["keys"]
        scheme, _, token = authorization.partition(" ")
        key_name = keys.name_of(token.strip()) if scheme.lower() == "bearer" else None
        if key_name is None:
            return _error(
                401, "unauthorized", "a valid API key is required: Authorization: Bearer fsk_…",
                headers=[("WWW-Authenticate", "Bearer")],
            )  # fmt: skip
        wait = state["limiter"].allow(key_name)
        if wait:
            return _error(
                429, "rate_limited", f"key {key_name!r} is over {settings.api.rate_per_key:g} "
                "requests/s", headers=[("Retry-After", str(max(1, round(wait))))],
            )  # fmt: skip
        if body is None:
            return _error(413, "too_large", f"a transaction is at most {MAX_MESSAGE_BYTES} bytes")
        try:
            return 200, [], await state["decider"].decide(body, key_name)
        except Unprocessable as invalid:
            return _error(
                422, "invalid_transaction", invalid.message, field=invalid.field,
                rule=invalid.rule,
            )  # fmt: skip
        except Conflict as conflict:
            return _error(409, "conflict", str(conflict))

    @app.post(
        "/v1/decisions",
        summary="Decide on one transaction",
        response_model=DecisionResponse,
        responses=ERROR_RESPONSES,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Transaction"}}
                },
            },
            "security": [{"HTTPBearer": []}],
        },
    )
    async def decisions(request: Request) -> Response:
        body = await _read_body(request.stream(), request.headers.get("content-length"))
        status, headers, content = await answer(request.headers.get("authorization", ""), body)
        return Response(content, status, headers=dict(headers), media_type="application/json")

    @app.get("/v1/health", summary="Liveness and what the process sees")
    async def health() -> dict[str, Any]:
        bridge: DecisionBridge | None = state.get("bridge")
        decider: Decider | None = state.get("decider")
        return {
            "status": "ok" if bridge is not None else "starting",
            "degraded_answers": decider.degraded if decider else 0,
            "undelivered": bridge.undelivered if bridge else 0,
        }

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description,
                routes=app.routes,
            )  # fmt: skip
            _refs, components = msgspec.json.schema_components(
                [Transaction], ref_template="#/components/schemas/{name}"
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
            schemes = schema["components"].setdefault("securitySchemes", {})
            schemes["HTTPBearer"] = bearer.model.model_dump(
                mode="json", by_alias=True, exclude_none=True
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return _DecisionsFirst(app, answer)

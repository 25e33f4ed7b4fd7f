"""Whether one service of a running system does its job, seen from where the caller runs:
``fraudstream health SERVICE``, for container health checks and monitors.

The broker and the database must answer; an engine must have reported its status recently
(a hung engine keeps its process but stops reporting); the dashboard must answer Streamlit's
health endpoint, and the decision API its own.
"""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass

import psycopg

from fraudstream import bus
from fraudstream.config import Settings
from fraudstream.store.db import connect

__all__ = ["SERVICES", "Health", "engine_max_age_s", "probe"]

SERVICES = ("kafka", "postgres", "engine", "dashboard", "api")


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str


def engine_max_age_s(settings: Settings) -> float:
    """How old an engine's last status may be: three missed reports, at least 30 s."""
    return max(3 * settings.engine.status_interval_s, 30.0)


def probe(settings: Settings, service: str, *, max_age_s: float | None = None) -> Health:
    """Check one of ``SERVICES``; ``max_age_s`` is for the engine (default
    ``engine_max_age_s``)."""
    if service == "kafka":
        return _kafka(settings)
    if service == "postgres":
        return _postgres(settings)
    if service == "engine":
        return _engine(settings, engine_max_age_s(settings) if max_age_s is None else max_age_s)
    if service == "dashboard":
        return _dashboard(settings)
    if service == "api":
        return _api(settings)
    raise ValueError(f"unknown service {service!r}: choose from {', '.join(SERVICES)}")


def _kafka(settings: Settings) -> Health:
    address = settings.kafka.bootstrap
    if bus.ping(settings.kafka, timeout_s=5.0):
        return Health(True, f"the broker at {address} answers")
    return Health(False, f"no broker answers at {address}")


def _postgres(settings: Settings) -> Health:
    try:
        with connect(settings) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as error:
        return Health(False, f"PostgreSQL does not answer: {_first_line(error)}")
    return Health(True, "PostgreSQL answers")


def _engine(settings: Settings, max_age_s: float) -> Health:
    # Engines name themselves engine.engine_id, else "<host name>-<pid>" (engines/base.py):
    # the probe runs in another process, so it looks for any engine of this host.
    configured = settings.engine.engine_id
    prefix = f"{socket.gethostname()}-"
    try:
        with connect(settings) as conn:
            row = conn.execute(
                "SELECT engine_id, extract(epoch FROM now() - heartbeat_at)::float8 "
                "FROM engine_status "
                "WHERE CASE WHEN %(id)s::text IS NULL THEN starts_with(engine_id, %(prefix)s) "
                "           ELSE engine_id = %(id)s END "
                "ORDER BY heartbeat_at DESC LIMIT 1",
                {"id": configured, "prefix": prefix},
            ).fetchone()
    except psycopg.Error as error:
        return Health(False, f"cannot read the engine status: {_first_line(error)}")
    who = f"engine {configured}" if configured else f"an engine on {prefix[:-1]}"
    if row is None:
        return Health(False, f"no status from {who} yet")
    engine_id, age = row
    assert isinstance(age, float)  # ::float8
    if age > max_age_s:
        return Health(False, f"{engine_id} last reported {age:.0f} s ago (> {max_age_s:.0f} s)")
    return Health(True, f"{engine_id} reported {age:.0f} s ago")


def _dashboard(settings: Settings) -> Health:
    url = f"http://{_local(settings.dashboard.host)}:{settings.dashboard.port}/_stcore/health"
    body, error = _get(url)
    if body is None:
        return Health(False, f"the dashboard does not answer at {url}: {error}")
    if body != "ok":
        return Health(False, f"the dashboard at {url} says {body!r}")
    return Health(True, f"the dashboard answers at {url}")


def _api(settings: Settings) -> Health:
    api = settings.api
    url = f"{'https' if api.tls else 'http'}://{_local(api.host)}:{api.port}/v1/health"
    body, error = _get(url)
    if body is None:
        return Health(False, f"the decision API does not answer at {url}: {error}")
    try:
        status = json.loads(body).get("status")
    except (ValueError, AttributeError):
        status = None
    if status != "ok":
        return Health(False, f"the decision API at {url} says {body!r}")
    return Health(True, f"the decision API answers at {url}")


def _local(host: str) -> str:
    """Where this host reaches a server listening on ``host``."""
    if host in ("0.0.0.0", "::"):  # noqa: S104 (listening everywhere: ask on loopback)
        host = "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _get(url: str) -> tuple[str | None, str]:
    """The body of a GET (its first 200 characters), or None and why not."""
    # Asked of our own server from beside it: its certificate names the host clients use, and
    # the probe sends nothing worth protecting.
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    try:
        # The callers build http(s) URLs only (S310).
        with urllib.request.urlopen(url, timeout=5, context=unverified) as response:  # noqa: S310
            return response.read(200).decode(errors="replace").strip(), ""
    except (urllib.error.URLError, OSError) as error:
        return None, str(error)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]

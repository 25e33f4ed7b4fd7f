"""The local stack as one unit, like ``docker compose``: up, down, status, logs.

Managed services are those fraudstream runs itself; a service configured as external
(``kafka.bootstrap_servers``, ``database.url``) is only checked and prepared (topics, schema).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from psycopg.conninfo import conninfo_to_dict
from pydantic import SecretStr

from fraudstream import bus
from fraudstream.config import Settings
from fraudstream.stack.kafka import KafkaBroker
from fraudstream.stack.pipeline import pipeline_services
from fraudstream.stack.postgres import EmbeddedPostgres
from fraudstream.stack.process import PidRecord, ServiceError
from fraudstream.store import migrations
from fraudstream.store.db import connect
from fraudstream.store.roles import (
    API_ROLE,
    DASHBOARD_ROLE,
    ENGINE_ROLE,
    ensure_api_role,
    ensure_dashboard_role,
    ensure_engine_role,
)

__all__ = ["ServiceStatus", "Stack", "UpReport"]

_STATE_MARKER = ".fraudstream-state"
"""Written into every state directory we create, so ``down --volumes`` never deletes another."""


class ManagedService(Protocol):
    name: str
    log_file: Path

    @property
    def address(self) -> str: ...

    def record(self) -> PidRecord | None: ...

    def is_running(self) -> bool: ...

    def healthy(self) -> bool: ...

    def preflight(self) -> object: ...

    def start(self) -> PidRecord: ...

    def stop(self) -> bool: ...


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    state: str  # running | starting | stopped | external | unreachable
    pid: int | None
    address: str
    uptime_s: float | None
    detail: str = ""
    metrics: str | None = None  # its Prometheus endpoint


@dataclass
class UpReport:
    started: list[str] = field(default_factory=list)
    already_running: list[str] = field(default_factory=list)
    topics_created: list[str] = field(default_factory=list)
    migrations_applied: list[int] = field(default_factory=list)
    model_trained: str | None = None
    api_keys: int | None = None  # active keys, when `up` runs the decision API

    @property
    def changed(self) -> bool:
        return bool(
            self.started or self.topics_created or self.migrations_applied or self.model_trained
        )


class Stack:
    def __init__(self, settings: Settings, child_env: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.broker = KafkaBroker(settings)
        self.database = EmbeddedPostgres(settings)
        env = dict(os.environ if child_env is None else child_env)
        self.pipeline: list[ManagedService] = (
            list(pipeline_services(settings, env)) if settings.pipeline else []
        )

    def managed(self) -> list[ManagedService]:
        """Services fraudstream runs itself, in start order."""
        services: list[ManagedService] = []
        if self.settings.kafka.managed:
            services.append(self.broker)
        if self.settings.database.managed:
            services.append(self.database)
        return services

    def log_files(self) -> dict[str, Path]:
        return {service.name: service.log_file for service in [*self.managed(), *self.pipeline]}

    def up(self, progress: Callable[[str], None] = lambda _message: None) -> UpReport:
        """Start what is not running, wait until healthy, create topics and schema."""
        report = UpReport()
        with self._lock():
            (self.settings.state_dir / _STATE_MARKER).touch()
            to_start = [service for service in self.managed() if not service.is_running()]
            report.already_running = [s.name for s in self.managed() if s not in to_start]
            pipeline = [service for service in self.pipeline if not service.is_running()]
            for service in [*to_start, *pipeline]:  # fail before starting anything, not half-way
                service.preflight()
            for service in to_start:
                progress(f"starting {service.name} on {service.address}")
                service.start()
                report.started.append(service.name)
            managed = self.settings.database.managed
            self.prepare(
                report, progress,
                dashboard_password=self.database.dashboard_password() if managed else None,
                api_password=self.database.api_password() if managed else None,
                engine_password=self.database.engine_password() if managed else None,
                train=bool(self.pipeline),
            )  # fmt: skip
            if self.pipeline:
                self._start_pipeline(report, progress)
                if any(service.name == "api" for service in self.pipeline):
                    report.api_keys = self._active_api_keys()
        return report

    def prepare(
        self,
        report: UpReport,
        progress: Callable[[str], None] = lambda _message: None,
        *,
        dashboard_password: str | None,
        api_password: str | None = None,
        engine_password: str | None = None,
        train: bool = True,
    ) -> UpReport:
        """Ready the configured broker and database (managed or external) for the pipeline:
        topics, schema, the engines', the dashboard's and the decision API's database users
        (given their passwords) and, with ``train``, a first model if none is current. What
        `up` does once its services run; all that `fraudstream init` does."""
        progress("checking the broker and creating topics")
        if not bus.ping(self.settings.kafka, timeout_s=self.settings.start_timeout_s):
            raise ServiceError(
                f"Kafka at {self.settings.kafka.bootstrap} does not answer metadata requests"
            )
        report.topics_created = bus.ensure_topics(self.settings.kafka)
        progress("migrating the database schema")
        with connect(self.settings) as conn:
            report.migrations_applied = [m.version for m in migrations.migrate(conn)]
            if dashboard_password is not None:
                ensure_dashboard_role(conn, dashboard_password)
            if api_password is not None:
                ensure_api_role(conn, api_password)
            if engine_password is not None:
                ensure_engine_role(conn, engine_password)
        if train:
            from fraudstream.clock import SystemClock
            from fraudstream.model.bootstrap import ensure_model

            report.model_trained = ensure_model(self.settings, SystemClock(), progress)
        return report

    def dashboard_role_password(
        self, warn: Callable[[str], None] = lambda _message: None
    ) -> str | None:
        """The password to give the dashboard's own database user when fraudstream owns that
        user: the managed server's, or the one dashboard.database_url names (``warn`` is told
        when that URL names another user, or no password: that user is the operator's)."""
        if self.settings.database.managed:
            return self.database.dashboard_password()
        return _named_password(
            "dashboard.database_url", self.settings.dashboard.database_url, DASHBOARD_ROLE, warn
        )

    def api_role_password(self, warn: Callable[[str], None] = lambda _message: None) -> str | None:
        """The same for the decision API's user: the managed server's, or api.database_url's."""
        if self.settings.database.managed:
            return self.database.api_password()
        return _named_password("api.database_url", self.settings.api.database_url, API_ROLE, warn)

    def engine_role_password(
        self, warn: Callable[[str], None] = lambda _message: None
    ) -> str | None:
        """The same for the engines' user: the managed server's, or engine.database_url's."""
        if self.settings.database.managed:
            return self.database.engine_password()
        return _named_password(
            "engine.database_url", self.settings.engine.database_url, ENGINE_ROLE, warn
        )

    def _active_api_keys(self) -> int:
        from fraudstream.api.keys import list_keys

        with connect(self.settings) as conn:
            return sum(key.revoked_at is None for key in list_keys(conn))

    def _start_pipeline(self, report: UpReport, progress: Callable[[str], None]) -> None:
        for service in self.pipeline:
            if service.is_running():
                report.already_running.append(service.name)
                continue
            progress(f"starting {service.name}")
            service.start()
            report.started.append(service.name)

    def down(self, *, volumes: bool = False) -> list[str]:
        """Stop the managed services (last started, first stopped); optionally delete all data."""
        stopped = []
        with self._lock():
            for service in [*reversed(self.pipeline), *reversed(self.managed())]:
                if service.stop():
                    stopped.append(service.name)
        if volumes:
            self._delete_state()
        return stopped

    def status(self) -> list[ServiceStatus]:
        statuses = []
        if not self.settings.kafka.managed:
            statuses.append(self._external("kafka", self.settings.kafka.bootstrap, self._kafka_up))
        if not self.settings.database.managed:
            statuses.append(self._external("postgres", "database.url", self._database_up))
        for service in [*self.managed(), *self.pipeline]:
            record = service.record()
            metrics = (
                self.settings.metrics.url_of(service.name) if service in self.pipeline else None
            )
            if record is None or not service.is_running():
                statuses.append(
                    ServiceStatus(service.name, "stopped", None, service.address, None,
                                  metrics=metrics)
                )  # fmt: skip
                continue
            state = "running" if service.healthy() else "starting"
            uptime = time.time() - record.started_at
            statuses.append(
                ServiceStatus(service.name, state, record.pid, service.address, uptime,
                              detail=_measured(service.name, metrics), metrics=metrics)
            )  # fmt: skip
        order = {"kafka": 0, "postgres": 1, "engine": 2, "api": 3, "simulator": 4}
        return sorted(statuses, key=lambda status: order.get(status.name, 99))

    def schema_current(self) -> bool:
        with connect(self.settings) as conn:
            return migrations.is_current(conn)

    def _kafka_up(self) -> bool:
        return bus.ping(self.settings.kafka)

    def _database_up(self) -> bool:
        try:
            with connect(self.settings) as conn:
                conn.execute("SELECT 1")
        except Exception:  # any failure means "not reachable" for a status line
            return False
        return True

    @staticmethod
    def _external(name: str, address: str, check: Callable[[], bool]) -> ServiceStatus:
        state = "external" if check() else "unreachable"
        return ServiceStatus(name, state, None, address, None, detail="not managed by fraudstream")

    @contextmanager
    def _lock(self) -> Iterator[None]:
        _private_directory(self.settings.state_dir)
        run_dir = self.settings.state_dir / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        with (run_dir / "stack.lock").open("w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ServiceError(
                    "another fraudstream command is changing the stack in "
                    f"{self.settings.state_dir}"
                ) from None
            yield

    def _delete_state(self) -> None:
        state = self.settings.state_dir
        if not state.exists():
            return
        if not (state / _STATE_MARKER).exists():
            raise ServiceError(
                f"refusing to delete {state}: "
                f"it was not created by fraudstream (no {_STATE_MARKER})"
            )
        shutil.rmtree(state)


def _named_password(
    setting: str, url: SecretStr | None, role: str, warn: Callable[[str], None]
) -> str | None:
    """The password of ``role`` in the connection URL ``setting``, when it names that role."""
    if url is None:
        return None
    params = conninfo_to_dict(url.get_secret_value())
    if params.get("user") != role or not params.get("password"):
        warn(f"{setting} does not name user {role} with a password: that user is yours to create")
        return None
    return str(params["password"])


def _measured(service: str, metrics: str | None) -> str:
    """What a running service's metrics say about it right now, in a few words."""
    if metrics is None or service not in ("engine", "simulator"):
        return ""
    from fraudstream.telemetry import scrape

    found = scrape(metrics)
    if service == "simulator" and "fraudstream_simulator_rate" in found:
        return f"sending {found['fraudstream_simulator_rate']:,.1f} tx/s"
    if service == "engine" and "fraudstream_engine_consumer_lag" in found:
        return f"lag {found['fraudstream_engine_consumer_lag']:,.0f}"
    return ""


def _private_directory(path: Path) -> None:
    """The state directory: only its account may list, read or write it (others may at most
    pass through it, as PostgreSQL's own account must to reach its data when run by root)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o066:
        path.chmod(mode & ~0o066)

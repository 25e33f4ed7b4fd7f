"""The engine, the decision API, the simulator, the dashboard and (when retraining is on) the
learner as services of the local stack (``fraudstream`` sub-commands)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from fraudstream.config import Settings
from fraudstream.stack.process import PidRecord, ServiceError, read_pid, running, spawn, stop

__all__ = ["PipelineService", "pipeline_services"]


class PipelineService:
    """A long-running ``fraudstream`` sub-command with a pid file and a log, like a container."""

    def __init__(
        self,
        settings: Settings,
        name: str,
        arguments: list[str],
        address: str,
        env: Mapping[str, str],
        problem: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.name = name
        self.arguments = arguments
        self._address = address
        self.env = dict(env)
        self._problem = problem  # why the service would refuse to start, checked before `up`
        self.log_file: Path = settings.state_dir / "logs" / f"{name}.log"
        self.pid_file = settings.state_dir / "run" / f"{name}.pid"

    @property
    def address(self) -> str:
        return self._address

    def record(self) -> PidRecord | None:
        return read_pid(self.pid_file)

    def is_running(self) -> bool:
        return running(self.record())

    def healthy(self) -> bool:
        return self.is_running()

    def preflight(self) -> None:
        problem = self._problem()
        if problem:
            raise ServiceError(f"cannot start {self.name}: {problem}")

    def start(self) -> PidRecord:
        argv = [sys.executable, "-m", "fraudstream", *self.arguments]
        return spawn(
            argv, pid_file=self.pid_file, log_file=self.log_file, address=self.address, env=self.env
        )

    def stop(self) -> bool:
        # SIGTERM: the engine finishes its batch and commits; the simulator flushes.
        return stop(self.pid_file, sig=signal.SIGTERM, timeout_s=60.0)


def pipeline_services(settings: Settings, env: Mapping[str, str]) -> list[PipelineService]:
    """Engine first, then the decision API and the simulator, so that nothing waits unscored;
    then the dashboard."""
    child_env = {**env, "FRAUDSTREAM_STATE_DIR": str(settings.state_dir), "PYTHONUNBUFFERED": "1"}
    topics = settings.kafka.topics
    engine = PipelineService(
        settings,
        "engine",
        ["score"],  # the engine of engine.kind
        f"group {settings.engine.group_id}",
        child_env,
    )
    scheme = "https" if settings.api.tls else "http"
    api = PipelineService(
        settings,
        "api",
        ["api"],  # serves without keys too: requests get 401 until `fraudstream api-keys create`
        f"{scheme}://{settings.api.host}:{settings.api.port}/v1/decisions",
        child_env,
        problem=lambda: _listening_problem(settings),
    )
    simulator = PipelineService(
        settings,
        "simulator",
        ["simulate", "--accelerated", "--forever"],
        f"→ {topics.transactions}, ≤ {settings.simulator.rate:,.0f} tx/s until now, then "
        f"{settings.simulator.live_rate:,.0f} tx/s in real time",
        child_env,
    )
    dashboard = PipelineService(
        settings,
        "dashboard",
        ["dashboard"],
        f"http://{settings.dashboard.host}:{settings.dashboard.port}",
        child_env,
    )
    services = [engine, api, simulator, dashboard]
    every = settings.model.retrain_every_hours
    if every is not None:  # off by default (docs/adr/0008)
        learner = PipelineService(
            settings, "learner", ["retrain", "--every-hours", f"{every:g}"],
            f"a challenger every {every:g} h, then the gate", child_env,
        )  # fmt: skip
        services.append(learner)
    return services


def _listening_problem(settings: Settings) -> str | None:
    from fraudstream.api.server import listening_problem  # uvicorn: only when `up` starts it

    return listening_problem(settings.api)

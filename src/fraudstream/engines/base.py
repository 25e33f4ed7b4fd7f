"""What every engine is and shares: the protocol the CLI and tests drive, the statistics it
keeps, the model it scores with (switched without a restart), its rules and name, and the
registry that maps ``engine.kind`` to a class imported only when chosen."""

from __future__ import annotations

import importlib
import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from fraudstream.clock import Clock
from fraudstream.config import Settings
from fraudstream.model.registry import Registry
from fraudstream.model.scoring import Scorer
from fraudstream.policy import RuleSet, default_rules, load_rules

__all__ = [
    "ENGINES",
    "Engine",
    "EngineStats",
    "ModelHolder",
    "create_engine",
    "decision_rules",
    "engine_id",
]

log = logging.getLogger("fraudstream.engine")

ENGINES: dict[str, tuple[str, str, str | None]] = {
    "local": ("fraudstream.engines.local", "LocalEngine", None),
    "spark": ("fraudstream.engines.spark", "SparkEngine", "pip install 'fraudstream[spark]'"),
}
"""engine.kind → (module, class, what installs its optional dependency)."""


@dataclass
class EngineStats:
    batches: int = 0
    scored: int = 0
    stored: int = 0
    rejected: int = 0  # dead-lettered, for any reason (replays and conflicts included)
    alerts: int = 0
    late: int = 0  # scored, but behind the partition's watermark: not counted for terminals
    replays: int = 0  # a tx_id seen before with identical content
    conflicts: int = 0  # a tx_id seen before with different content
    batch_ms: list[float] = field(default_factory=list)


class Engine(Protocol):
    name: str
    stats: EngineStats
    stop: threading.Event

    def run(self, max_idle_s: float | None = None) -> EngineStats:
        """Process until ``stop`` is set (or nothing arrives for ``max_idle_s``)."""
        ...


def create_engine(
    kind: str, settings: Settings, clock: Clock, stop: threading.Event | None = None, **options: Any
) -> Engine:
    """The engine registered as ``kind``, its module imported only now."""
    if kind not in ENGINES:
        raise ValueError(f"engine.kind must be one of {', '.join(ENGINES)}, not {kind!r}")
    module_name, class_name, install = ENGINES[kind]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        hint = f": {install}" if install else ""
        raise RuntimeError(f"the {kind} engine needs {error.name}{hint}") from None
    engine: Engine = getattr(module, class_name)(settings, clock, stop, **options)
    return engine


class ModelHolder:
    """The model an engine scores with, switched when the registry's current one changes."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.scorer = Scorer(registry.load())

    def refresh(self) -> bool:
        """Load the registry's current model if it is another one; True when switched."""
        current = self.registry.current()
        if not current or current == self.scorer.version:
            return False
        self.scorer = Scorer(self.registry.load(current))
        log.info("switched to model %s", current)
        return True


def decision_rules(settings: Settings) -> RuleSet:
    """The operator's rules file when one is set, else the built-in rules."""
    return load_rules(settings.policy.rules_file) if settings.policy.rules_file else default_rules()


def engine_id(settings: Settings) -> str:
    """This process's name in ``engine_status``: configured, else host and pid."""
    return settings.engine.engine_id or f"{socket.gethostname()}-{os.getpid()}"

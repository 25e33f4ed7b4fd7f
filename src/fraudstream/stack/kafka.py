"""A single-node Apache Kafka 4.x broker in KRaft mode (combined broker + controller).

The jars are the official ones from Maven Central (``org.apache.kafka:kafka_2.13``), resolved
once with ``mvn`` into the cache directory and reused by every state directory.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import uuid
from importlib import resources
from pathlib import Path

from fraudstream import bus
from fraudstream.config import Settings
from fraudstream.stack.maven import resolve_jars
from fraudstream.stack.process import (
    PidRecord,
    ServiceError,
    port_in_use,
    port_owner,
    read_pid,
    running,
    spawn,
    stop,
    wait_until,
)

__all__ = ["KafkaBroker", "ensure_jars", "java_major_version", "require_java"]

MIN_JAVA = 17


def java_major_version(java: str) -> int | None:
    """Major version of the given Java executable, or None when it cannot be run."""
    executable = shutil.which(java)
    if executable is None:
        return None
    try:
        result = subprocess.run(
            [executable, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def require_java(java: str) -> str:
    """The Java executable to use, or a ServiceError that says how to get Java 17+."""
    version = java_major_version(java)
    how = (
        "install it (Debian/Ubuntu: `apt-get install openjdk-17-jre-headless`) or point "
        "JAVA_HOME / FRAUDSTREAM_KAFKA__JAVA at a Java 17+ executable"
    )
    if version is None:
        raise ServiceError(
            f"Java {MIN_JAVA}+ is needed to run Kafka but {java!r} was not found: {how}"
        )
    if version < MIN_JAVA:
        raise ServiceError(f"Kafka 4 needs Java {MIN_JAVA}+, {java!r} is Java {version}: {how}")
    return shutil.which(java) or java


def ensure_jars(settings: Settings) -> Path:
    """Directory holding the broker's jars, resolving them with Maven on first use."""
    version = settings.kafka.version
    return resolve_jars(
        settings, settings.cache_dir / f"kafka-{version}", "kafka-pom.xml", version,
        expected="kafka_2.13-*.jar", what=f"Apache Kafka {version}",
    )  # fmt: skip


class KafkaBroker:
    """The managed broker's files under ``<state_dir>/kafka`` and its lifecycle."""

    name = "kafka"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.kafka = settings.kafka
        state = settings.state_dir
        self.data_dir = state / "kafka" / "data"
        self.config_file = state / "kafka" / "server.properties"
        self.log_file = state / "logs" / "kafka.log"
        self.pid_file = state / "run" / "kafka.pid"

    @property
    def address(self) -> str:
        return f"{self.kafka.host}:{self.kafka.port}"

    def record(self) -> PidRecord | None:
        return read_pid(self.pid_file)

    def is_running(self) -> bool:
        return running(self.record())

    def healthy(self) -> bool:
        return bus.ping(self.kafka, timeout_s=1.0)

    def preflight(self) -> str:
        """Check what start() needs (Java, free ports) before anything is started."""
        java = require_java(self.kafka.java)
        for port, role in (
            (self.kafka.port, "port"),
            (self.kafka.controller_port, "controller_port"),
        ):
            if port_in_use(self.kafka.host, port):
                raise ServiceError(
                    f"cannot start Kafka: {self.kafka.host}:{port} is already in use by "
                    f"{port_owner(port)}; stop it or choose another port with "
                    f"FRAUDSTREAM_KAFKA__{role.upper()}"
                )
        return java

    def start(self) -> PidRecord:
        """Format storage on first start, launch the broker and wait until it answers."""
        java = self.preflight()
        libs = ensure_jars(self.settings)
        self._write_config()
        if not (self.data_dir / "meta.properties").exists():
            self._format(java, libs)
        log4j = self.config_file.parent / "log4j2.properties"
        log4j.write_text(
            resources.files("fraudstream.stack").joinpath("resources/log4j2.properties").read_text()
        )
        argv = [
            java,
            f"-Xmx{self.kafka.heap}",
            f"-Xms{self.kafka.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            f"{libs}/*",
            "kafka.Kafka",
            str(self.config_file),
        ]
        record = spawn(argv, pid_file=self.pid_file, log_file=self.log_file, address=self.address)
        wait_until(
            self.healthy,
            timeout_s=self.settings.start_timeout_s,
            what=f"Kafka broker on {self.address}",
            alive=self.is_running,
            log_file=self.log_file,
        )
        return record

    def stop(self) -> bool:
        # SIGTERM runs the broker's controlled shutdown, which flushes and closes the logs.
        return stop(self.pid_file, timeout_s=60.0)

    def _write_config(self) -> None:
        k = self.kafka
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{k.host}:{k.controller_port}",
            "listeners": f"PLAINTEXT://{k.host}:{k.port},CONTROLLER://{k.host}:{k.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{k.host}:{k.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": str(k.partitions),
            "default.replication.factor": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "log.retention.hours": "168",
        }
        self.config_file.write_text("".join(f"{key}={value}\n" for key, value in lines.items()))

    def _format(self, java: str, libs: Path) -> None:
        # A cluster id may begin with "-", so it is passed as --cluster-id=ID, never as two words.
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        result = subprocess.run(
            [
                java, "-cp", f"{libs}/*", "kafka.tools.StorageTool", "format",
                f"--cluster-id={cluster_id}", "--config", str(self.config_file), "--standalone",
            ],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise ServiceError(f"formatting Kafka storage failed: {result.stdout}{result.stderr}")

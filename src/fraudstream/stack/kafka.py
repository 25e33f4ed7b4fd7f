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
from fraudstream.config import Settings, env_name
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
    write_private,
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
        if not self.kafka.loopback and not self.kafka.scram:
            raise ServiceError(
                f"cannot start Kafka on {self.kafka.host}, beyond loopback, without "
                "authentication: set kafka.security_protocol=SASL_PLAINTEXT, "
                "kafka.sasl_mechanism=SCRAM-SHA-512, kafka.sasl_username and "
                f"kafka.sasl_password ({env_name('kafka.sasl_password')})"
            )
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
        elif self.kafka.scram and not self._scram_marker.exists():
            raise ServiceError(
                f"the broker's storage in {self.data_dir} was made without SCRAM users: "
                "authentication is set up when the storage is formatted, on a first start "
                "(`fraudstream down --volumes` deletes it, and every message)"
            )
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

    @property
    def _scram_marker(self) -> Path:
        return self.data_dir / ".fraudstream-scram"

    def _listeners(self) -> dict[str, str]:
        """Clients' listener: PLAINTEXT, or SASL_PLAINTEXT with SCRAM (the broker talks to
        itself through it too). The controller's stays on loopback, where only this node
        reaches it."""
        k = self.kafka
        controller = f"CONTROLLER://127.0.0.1:{k.controller_port}"
        if not k.scram:
            return {
                "listeners": f"PLAINTEXT://{k.host}:{k.port},{controller}",
                "advertised.listeners": f"PLAINTEXT://{k.host}:{k.port}",
                "inter.broker.listener.name": "PLAINTEXT",
                "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            }
        mechanism = str(k.sasl_mechanism)
        assert k.sasl_password is not None  # (the settings require it with SASL)
        login = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{k.sasl_username}" password="{k.sasl_password.get_secret_value()}";'
        )
        return {
            "listeners": f"SASL_PLAINTEXT://{k.host}:{k.port},{controller}",
            "advertised.listeners": f"SASL_PLAINTEXT://{k.host}:{k.port}",
            "inter.broker.listener.name": "SASL_PLAINTEXT",
            "listener.security.protocol.map": "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT",
            "sasl.enabled.mechanisms": mechanism,
            "sasl.mechanism.inter.broker.protocol": mechanism,
            f"listener.name.sasl_plaintext.{mechanism.lower()}.sasl.jaas.config": login,
        }

    def _write_config(self) -> None:
        k = self.kafka
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{k.controller_port}",
            **self._listeners(),
            "controller.listener.names": "CONTROLLER",
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
        # Private from its creation: with SCRAM it holds the broker's own password.
        write_private(self.config_file, "".join(f"{key}={value}\n" for key, value in lines.items()))

    def _format(self, java: str, libs: Path) -> None:
        # A cluster id may begin with "-", so it is passed as --cluster-id=ID, never as two words.
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        k = self.kafka
        arguments = [
            "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
            "--config", str(self.config_file), "--standalone",
        ]  # fmt: skip
        if k.scram:  # the one user, in the metadata from the start (the broker needs it too)
            assert k.sasl_password is not None
            secret = k.sasl_password.get_secret_value()
            arguments += [
                "--add-scram",
                f"{k.sasl_mechanism}=[name={k.sasl_username},password={secret}]",
            ]
        # The arguments go in a private file the java launcher reads (`java @file`): the
        # password never shows in the process list.
        argfile = self.config_file.parent / ".format-arguments"
        write_private(argfile, "\n".join(f'"{a}"' for a in arguments) + "\n")
        try:
            result = subprocess.run(
                [java, "-cp", f"{libs}/*", f"@{argfile}"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
        finally:
            argfile.unlink(missing_ok=True)
        if result.returncode != 0:
            output = f"{result.stdout}{result.stderr}"
            if k.sasl_password is not None:
                output = output.replace(k.sasl_password.get_secret_value(), "********")
            raise ServiceError(f"formatting Kafka storage failed: {output}")
        if k.scram:
            write_private(self._scram_marker, f"{k.sasl_mechanism} {k.sasl_username}\n")

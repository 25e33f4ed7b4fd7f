"""Spark for the Spark engine: the Kafka connector jars and a session with safe defaults.

The connector (``org.apache.spark:spark-sql-kafka-0-10_2.13``, at the installed pyspark's
version) is resolved once with ``mvn`` into the cache directory and handed to Spark as
``spark.jars``; nothing is downloaded when a query starts. The session binds to loopback,
runs Python workers with this interpreter, keeps state in RocksDB and logs quietly: the
set-up pitfalls users otherwise meet one by one.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fraudstream.config import Settings
from fraudstream.stack.kafka import require_java
from fraudstream.stack.maven import resolve_jars
from fraudstream.stack.process import ServiceError, port_in_use, spawn, stop, wait_until

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["StandaloneCluster", "connector_jars", "pyspark_version", "spark_session"]

_JAR_VERSION = re.compile(r"-\d[\w.\-]*\.jar$")


def pyspark_version() -> str:
    try:
        import pyspark
    except ImportError as error:  # an optional part of the install
        raise ServiceError(
            "the Spark engine needs pyspark: `pip install 'fraudstream[spark]'` "
            "(make setup installs it)"
        ) from error
    return str(pyspark.__version__)


def connector_jars(settings: Settings) -> list[Path]:
    """The connector's jars that pyspark does not ship, resolving them on first use."""
    version = pyspark_version()
    libs = resolve_jars(
        settings, settings.cache_dir / f"spark-kafka-{version}", "spark-kafka-pom.xml", version,
        expected="spark-sql-kafka-*.jar",
        what=f"spark-sql-kafka-0-10_2.13:{version} (the installed pyspark's version)",
    )  # fmt: skip
    import pyspark

    bundled = {
        _artifact(jar.name) for jar in (Path(pyspark.__file__).parent / "jars").glob("*.jar")
    }
    return sorted(jar for jar in libs.glob("*.jar") if _artifact(jar.name) not in bundled)


def _artifact(file_name: str) -> str:
    """``kafka-clients-3.9.2.jar`` → ``kafka-clients``."""
    return _JAR_VERSION.sub("", file_name)


def spark_session(settings: Settings, master: str | None = None) -> SparkSession:
    """A session for the engine: the connector on the class path, loopback, quiet logs."""
    java = require_java(settings.kafka.java)
    java_home = Path(java).resolve().parent.parent
    os.environ.setdefault("JAVA_HOME", str(java_home))
    # Workers must run this interpreter (with fraudstream and its dependencies installed).
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    spark_settings = settings.spark
    builder = (
        SparkSession.builder.appName("fraudstream-engine")
        .master(master or spark_settings.master)
        .config("spark.jars", ",".join(str(jar) for jar in connector_jars(settings)))
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", str(spark_settings.ui).lower())
        .config("spark.ui.showConsoleProgress", "false")  # progress bars in a service log
        .config("spark.sql.shuffle.partitions", str(spark_settings.state_partitions))
        .config(
            "spark.sql.streaming.stateStore.providerClass",
            "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider",
        )
        # Commit a micro-batch's state as a changelog, not a copy of the database files.
        .config("spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled", "true")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.executorEnv.PYSPARK_PYTHON", sys.executable)
        # One thread per Python worker: tasks are the parallelism; OpenMP threads spinning
        # beside them steal the cores the JVM and the other tasks need.
        .config("spark.executorEnv.OMP_NUM_THREADS", "1")
    )
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session


class StandaloneCluster:
    """A Spark standalone master and one worker from the pyspark installation, on loopback,
    with pid files and logs under ``root`` (default ``<state_dir>/spark``): the engine on a
    real cluster URL without installing Spark."""

    def __init__(
        self,
        settings: Settings,
        master_port: int,
        *,
        root: Path | None = None,
        worker_cores: int = 1,
        worker_memory: str = "1g",
    ) -> None:
        self.settings = settings
        self.master_port = master_port
        self.worker_cores = worker_cores
        self.worker_memory = worker_memory
        self.root = root or settings.state_dir / "spark"

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.master_port}"

    def start(self) -> None:
        pyspark_version()
        import pyspark

        spark_class = str(Path(pyspark.__file__).parent / "bin" / "spark-class")
        java = require_java(self.settings.kafka.java)
        env = {
            **os.environ,
            "JAVA_HOME": str(Path(java).resolve().parent.parent),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "PYSPARK_PYTHON": sys.executable,
            "SPARK_WORKER_DIR": str(self.root / "work"),
        }
        (self.root / "work").mkdir(parents=True, exist_ok=True)
        ui = "--webui-port", "0"
        daemons = {
            "spark-master": [
                spark_class, "org.apache.spark.deploy.master.Master",
                "--host", "127.0.0.1", "--port", str(self.master_port), *ui,
            ],
            "spark-worker": [
                spark_class, "org.apache.spark.deploy.worker.Worker", self.url,
                "--host", "127.0.0.1", "--cores", str(self.worker_cores),
                "--memory", self.worker_memory, *ui,
            ],
        }  # fmt: skip
        for name, argv in daemons.items():
            spawn(
                argv,
                pid_file=self.root / f"{name}.pid",
                log_file=self.root / f"{name}.log",
                address=self.url,
                env=env,
            )
            if name == "spark-master":
                wait_until(
                    lambda: port_in_use("127.0.0.1", self.master_port),
                    timeout_s=self.settings.start_timeout_s,
                    what=f"the Spark master on {self.url}",
                    log_file=self.root / f"{name}.log",
                )
        wait_until(
            self._worker_registered,
            timeout_s=self.settings.start_timeout_s,
            what="the Spark worker to register with its master",
            log_file=self.root / "spark-worker.log",
        )

    def _worker_registered(self) -> bool:
        log = self.root / "spark-worker.log"
        return log.exists() and "Successfully registered with master" in log.read_text(
            errors="replace"
        )

    def stop(self) -> None:
        for name in ("spark-worker", "spark-master"):
            stop(self.root / f"{name}.pid", timeout_s=30)

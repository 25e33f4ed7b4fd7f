"""The one settings tree, and the only place (with cli.py) that reads the environment.

Values come, highest precedence first, from command-line overrides (``--set kafka.port=9095``),
``FRAUDSTREAM_…`` environment variables (nested with ``__``), and an optional TOML config file.
Unknown keys and bad values fail at start with a message naming the key and what is allowed.
"""

from __future__ import annotations

import difflib
import os
import shutil
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "ENV_PREFIX",
    "ApiSettings",
    "DatabaseSettings",
    "EngineSettings",
    "KafkaSettings",
    "MetricsSettings",
    "ModelSettings",
    "PolicySettings",
    "PrivacySettings",
    "Settings",
    "SettingsError",
    "SimulatorSettings",
    "TopicSettings",
    "env_name",
    "load_settings",
    "setting_paths",
]

ENV_PREFIX = "FRAUDSTREAM_"
ENV_DELIMITER = "__"
CONFIG_FILE_ENV = f"{ENV_PREFIX}CONFIG"
"""Names the TOML config file; it is not itself a setting."""

_CONFIG_FILE: ContextVar[Path | None] = ContextVar("fraudstream_config_file", default=None)

Port = int


class SettingsError(ValueError):
    """A setting is unknown or has a bad value; the message names it and what is allowed."""


def _default_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        return str(Path(java_home) / "bin" / "java")
    return shutil.which("java") or "java"


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fraudstream"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TopicSettings(_Section):
    """Names of the topics the system uses, so that a shared cluster can prefix them."""

    transactions: str = "transactions"
    labels: str = "labels"
    alerts: str = "alerts"
    dlq: str = "transactions.dlq"
    labels_dlq: str = "labels.dlq"
    decisions: str = "decisions"  # the engines' answers to the decision API (docs/adr/0007)

    def all(self) -> list[str]:
        return [
            self.transactions, self.labels, self.alerts, self.dlq, self.labels_dlq,
            self.decisions,
        ]  # fmt: skip


class KafkaSettings(_Section):
    """The broker: a managed local KRaft node, or an external cluster (bootstrap_servers)."""

    bootstrap_servers: str | None = Field(
        default=None,
        description="External cluster (host:port,…); when unset, fraudstream runs its own broker.",
    )
    host: str = Field(default="127.0.0.1", description="Address the managed broker binds to.")
    port: Port = Field(default=9092, ge=1, le=65535)
    controller_port: Port = Field(default=9093, ge=1, le=65535)
    version: str = Field(
        default="4.1.1",
        pattern=r"^4\.\d+\.\d+$",
        description="Apache Kafka 4.x release whose jars are resolved from Maven Central.",
    )
    heap: str = Field(
        default="512m", pattern=r"^\d+[mMgG]$", description="JVM -Xmx for the broker."
    )
    partitions: int = Field(default=4, ge=1, le=1024)
    max_message_bytes: int = Field(
        default=1_048_576,
        ge=65_536,
        le=64 * 1_048_576,
        description="Largest message the topics accept and the producers send (one limit for "
        "both, so anything the broker took can be dead-lettered).",
    )
    replication_factor: int = Field(default=1, ge=1, le=16)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    java: str = Field(
        default_factory=_default_java,
        description="Java 17+ executable (defaults to $JAVA_HOME/bin/java, else java on PATH).",
    )
    maven: str = Field(default="mvn", description="Maven executable used to resolve the jars.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: Path | None = None

    @property
    def managed(self) -> bool:
        """True when fraudstream runs the broker itself."""
        return self.bootstrap_servers is None

    @property
    def loopback(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1")

    @property
    def scram(self) -> bool:
        """Clients authenticate with SASL/SCRAM (and a managed broker requires it of them)."""
        return self.security_protocol.startswith("SASL") and (self.sasl_mechanism or "").startswith(
            "SCRAM"
        )

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"kafka.security_protocol {self.security_protocol} needs kafka.sasl_mechanism, "
                f"kafka.sasl_username and kafka.sasl_password ({env_name('kafka.sasl_password')})"
            )
        if self.managed and self.security_protocol not in ("PLAINTEXT", "SASL_PLAINTEXT"):
            raise ValueError(
                "the managed broker speaks PLAINTEXT or SASL_PLAINTEXT (SCRAM); TLS is for an "
                "external cluster (kafka.bootstrap_servers)"
            )
        if self.managed and self.security_protocol == "SASL_PLAINTEXT" and not self.scram:
            raise ValueError("the managed broker authenticates with SCRAM-SHA-256 or -512 only")
        return self

    @property
    def bootstrap(self) -> str:
        return self.bootstrap_servers or f"{self.host}:{self.port}"

    def client_config(self) -> dict[str, str]:
        """librdkafka settings shared by every producer, consumer and admin client."""
        config = {"bootstrap.servers": self.bootstrap, "security.protocol": self.security_protocol}
        if self.sasl_mechanism:
            config["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            config["sasl.username"] = self.sasl_username
        if self.sasl_password:
            config["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location:
            config["ssl.ca.location"] = str(self.ssl_ca_location)
        return config


class DatabaseSettings(_Section):
    """PostgreSQL: a managed embedded server, or an external one when url is set."""

    url: SecretStr | None = Field(
        default=None,
        description="External PostgreSQL (postgresql://user:pass@host/db); unset runs our own.",
    )
    host: str = Field(default="127.0.0.1", description="Address the managed server binds to.")
    port: Port = Field(default=5432, ge=1, le=65535)
    name: str = Field(default="fraudstream", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    user: str = Field(default="fraudstream", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    password: SecretStr | None = Field(
        default=None,
        description="Password of the managed server's user; generated and kept in the state "
        "directory (mode 0600) when unset.",
    )
    system_user: str = Field(
        default="fraudstream",
        pattern=r"^[a-z_][a-z0-9_-]{0,31}$",
        description="Unprivileged OS account the managed server runs as when started by root.",
    )
    connect_timeout_s: float = Field(default=5.0, gt=0, le=300)

    @property
    def managed(self) -> bool:
        return self.url is None


class PrivacySettings(_Section):
    token_key: SecretStr | None = Field(
        default=None,
        description="Secret key of the keyed hash that turns card numbers into tokens (at least "
        "16 characters); needed to replay datasets that contain card numbers.",
    )

    def tokenizer_key(self) -> bytes | None:
        return self.token_key.get_secret_value().encode() if self.token_key else None


class SimulatorSettings(_Section):
    preset: Literal["default", "handbook"] = "default"
    seed: int = Field(default=0, ge=0)
    rate: float = Field(default=1000.0, gt=0, le=10_000_000, description="Live transactions/s.")
    live_rate: float = Field(
        default=20.0,
        ge=0,
        le=10_000_000,
        description="Transactions/s once an accelerated run (`up`'s simulator) reaches the "
        "present, event time the send time; 0 keeps the simulation's own pace there.",
    )
    label_delay_days: float = Field(
        default=7.0, ge=0, le=365, description="Report delay given to labels of outside datasets."
    )


class ModelSettings(_Section):
    dir: Path | None = Field(
        default=None, description="Model registry (default <state_dir>/models)."
    )
    backend: Literal["xgboost", "lightgbm"] = Field(
        default="xgboost", description="Gradient-boosting library used for training."
    )
    review_cards_per_day: int = Field(
        default=100, ge=1, le=1_000_000, description="Alert budget: cards a day analysts review."
    )
    decline_precision: float = Field(
        default=0.9, gt=0, le=1, description="Precision required before the model declines."
    )
    seed: int = Field(default=0, ge=0)
    newcomer_share: float = Field(
        default=0.05, ge=0, le=0.5,
        description="Share of training rows also shown as a new card's first transaction "
        "(half of them at a terminal with no past), so that the model has seen newcomers: "
        "without, the first model sent half of new cards' first transactions to review.",
    )  # fmt: skip
    bootstrap_customers: int = Field(
        default=5_000, ge=50, le=1_000_000, description="Card holders in the first model's history."
    )
    bootstrap_days: int = Field(
        default=90, ge=80, le=3650,
        description="Days of history the first model is trained on: 37 days for the longest "
        "feature windows to fill, then its 4 test folds (42 days).",
    )  # fmt: skip
    retrain_every_hours: float | None = Field(
        default=None, gt=0, le=24 * 365,
        description="Retrain a challenger on matured labels this often, then run the gate "
        "(the `learner` service of `up`); off when unset.",
    )  # fmt: skip
    gate_min_days: int = Field(
        default=7, ge=1, le=365,
        description="Matured days of shadow scores before the gate may promote a challenger.",
    )  # fmt: skip
    gate_alpha: float = Field(
        default=0.05, gt=0, lt=1,
        description="Significance the challenger's CP@k gain must reach (paired bootstrap).",
    )  # fmt: skip
    rollback_floor: float | None = Field(
        default=None, ge=0, le=1,
        description="Roll back to the previous champion when the current one's CP@k over "
        "the last rollback_days measured days falls below this; off when unset.",
    )  # fmt: skip
    rollback_days: int = Field(default=7, ge=1, le=365)


class EngineSettings(_Section):
    kind: Literal["local", "spark"] = Field(
        default="local", description="Which engine `fraudstream score` runs (engines/base.py)."
    )
    group_id: str = Field(default="fraudstream-engine", min_length=1, max_length=200)
    batch_max_messages: int = Field(default=5000, ge=1, le=1_000_000)
    batch_max_ms: int = Field(
        default=50,
        ge=1,
        le=60_000,
        description="Longest wait for a first message when none is there; a batch is what "
        "arrived meanwhile (no wait to fill it: small when traffic is light, larger under a "
        "backlog).",
    )
    snapshot_interval_s: float = Field(
        default=30.0, gt=0, le=3600,
        description="How often each partition checkpoints its card state (the rows appended "
        "since the last checkpoint; sooner when 500,000 are waiting).",
    )  # fmt: skip
    card_cache_mib: int = Field(
        default=256, ge=16, le=1_048_576,
        description="Card histories kept in memory, across the engine's partitions; the rest "
        "are read from the card store on local disk (<state_dir>/cards).",
    )  # fmt: skip
    status_interval_s: float = Field(default=5.0, gt=0, le=3600)
    model_check_interval_s: float = Field(default=2.0, gt=0, le=3600)
    rules_check_interval_s: float = Field(
        default=2.0, gt=0, le=3600,
        description="How often the rule book and the live lists are checked for a change.",
    )  # fmt: skip
    quality_interval_s: float = Field(
        default=600.0, gt=0, le=86_400, description="How often matured days are measured."
    )
    quality_maturity_days: int = Field(
        default=7, ge=0, le=365, description="Days after which a day's labels count as final."
    )
    engine_id: str | None = Field(default=None, description="Default: host name and pid.")
    database_url: SecretStr | None = Field(
        default=None,
        description="The engines' own PostgreSQL user (writes only what engines write); the "
        "managed server provides one, an external database should too.",
    )
    allowed_lateness_s: float = Field(
        default=3600.0,
        ge=0,
        le=86_400,
        description="How far behind its partition's newest event time a transaction may be and "
        "still count in terminal activity (later ones are scored, flagged late, not counted).",
    )


class SparkSettings(_Section):
    """The Spark engine (`fraudstream score --engine spark`)."""

    master: str = Field(
        default="local[2]", min_length=1, description="local[N], or spark://host:port."
    )
    trigger_interval_s: float = Field(
        default=1.0, gt=0, le=3600, description="Micro-batch trigger interval."
    )
    max_offsets_per_trigger: int = Field(default=50_000, ge=1, le=100_000_000)
    state_partitions: int = Field(
        default=2,
        ge=1,
        le=10_000,
        description="Partitions of the card state (Spark's shuffle partitions): about the "
        "executor cores. Fixed in the checkpoint when a query first starts.",
    )
    checkpoint_dir: Path | None = Field(
        default=None, description="Query checkpoints; default <state_dir>/spark/checkpoints."
    )
    ui: bool = Field(default=False, description="Serve the Spark UI (on 127.0.0.1:4040).")


class DashboardSettings(_Section):
    """The Streamlit dashboard (`fraudstream dashboard`, and the `dashboard` service of `up`)."""

    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Address to serve on; anything but loopback requires named users "
        "(`fraudstream users create`), who sign in.",
    )
    port: Port = Field(default=8501, ge=1, le=65535)
    refresh_s: float = Field(default=2.0, ge=0.5, le=3600, description="Live pages' refresh.")
    sla_minutes: tuple[PositiveInt, PositiveInt, PositiveInt] = Field(
        default=(60, 240, 1440),
        description="Time to resolve a case of priority 1, 2 and 3 (minutes from its first "
        "alert); past it the case is overdue.",
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="The dashboard's own PostgreSQL user (read, and insert labels and reviews "
        "only); the managed server provides one, an external database should too.",
    )

    @property
    def loopback(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1")


class ApiSettings(_Section):
    """The decision API (`fraudstream api`, and the `api` service of `up`): docs/api.md."""

    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Address to serve on; anything but loopback requires api.tls_certfile and "
        "api.tls_keyfile, or api.insecure_beyond_loopback.",
    )
    port: Port = Field(default=8000, ge=1, le=65535)
    budget_ms: float = Field(
        default=50.0,
        ge=5,
        le=10_000,
        description="Time a request may take; past it the answer is the fallback decision, "
        "marked degraded.",
    )
    fallback_floor_amount: float = Field(
        default=100.0,
        ge=0,
        description="Degraded answers approve up to this amount (unless a rule fires) and send "
        "larger ones to review.",
    )
    rate_per_key: float = Field(
        default=2000.0, gt=0, le=1_000_000, description="Requests per second allowed per API key."
    )
    burst_per_key: int = Field(
        default=4000, ge=1, le=10_000_000, description="Requests a key may send at once."
    )
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    insecure_beyond_loopback: bool = Field(
        default=False,
        description="Serve plain HTTP on a non-loopback address (behind a TLS-terminating "
        "proxy only).",
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="The API's own PostgreSQL user (reads decisions and keys, records degraded "
        "answers); the managed server provides one.",
    )
    workers: int = Field(default=1, ge=1, le=64, description="Server processes.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="warning", description="The HTTP server's log level (no access log)."
    )

    @property
    def loopback(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1")

    @property
    def tls(self) -> bool:
        return self.tls_certfile is not None and self.tls_keyfile is not None

    @model_validator(mode="after")
    def _tls_pair(self) -> ApiSettings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("api.tls_certfile and api.tls_keyfile go together: give both")
        return self


class PolicySettings(_Section):
    rules_file: Path | None = Field(
        default=None, description="Decision rules (TOML); default built in."
    )
    explore_share: float = Field(
        default=0.0, ge=0, le=0.2,
        description="Share of the model's would-be declines sent to review instead, to learn "
        "their outcome (selective labels, docs/model.md); 0: off.",
    )  # fmt: skip
    explore_max_amount: float = Field(
        default=200.0, gt=0, description="Only declines of at most this amount are explored."
    )


class MetricsSettings(_Section):
    """Prometheus metrics of the long-running services (docs/operations.md)."""

    enabled: bool = Field(default=True, description="Serve /metrics from each service.")
    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Address the metrics endpoints listen on (a container: 0.0.0.0, for "
        "Prometheus on the compose network).",
    )
    engine_port: Port = Field(default=9464, ge=1, le=65535)
    api_port: Port = Field(default=9465, ge=1, le=65535)
    simulator_port: Port = Field(default=9466, ge=1, le=65535)
    dashboard_port: Port = Field(default=9467, ge=1, le=65535)

    def port_of(self, service: str) -> int:
        port: int = getattr(self, f"{service}_port")
        return port

    def url_of(self, service: str) -> str | None:
        """Where ``service``'s metrics are served (as configured), or None when off or when
        the service serves none (Kafka, PostgreSQL, the learner)."""
        if not self.enabled or f"{service}_port" not in type(self).model_fields:
            return None
        wildcard = self.host in ("0.0.0.0", "::")  # noqa: S104 - reached through loopback
        host = "127.0.0.1" if wildcard else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port_of(service)}/metrics"


class Settings(BaseSettings):
    """Everything fraudstream can be told; frozen once loaded."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    state_dir: Path = Field(
        default=Path(".fraudstream"),
        description="Where the managed services keep their data, logs and pid files.",
    )
    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="Where downloaded jars are cached and reused across state directories.",
    )
    start_timeout_s: float = Field(default=90.0, gt=0, le=3600)
    pipeline: bool = Field(
        default=True,
        description="`up` also starts the engine and the simulator (training a first model if "
        "none exists); false runs only Kafka and PostgreSQL.",
    )
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    simulator: SimulatorSettings = Field(default_factory=SimulatorSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    @property
    def models_dir(self) -> Path:
        return (self.model.dir or self.state_dir / "models").expanduser().absolute()

    @field_validator("state_dir", "cache_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _CONFIG_FILE.get()
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)


def setting_paths(model: type[BaseModel] = Settings, prefix: str = "") -> dict[str, Any]:
    """Every leaf setting as a dotted path (``kafka.port``) mapped to its field info."""
    paths: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths.update(setting_paths(annotation, f"{prefix}{name}."))
        else:
            paths[f"{prefix}{name}"] = field
    return paths


def secret_paths() -> frozenset[str]:
    """The settings that hold secrets (passwords, URLs with a password, keys)."""
    return frozenset(
        path for path, field in setting_paths().items() if "SecretStr" in str(field.annotation)
    )


def env_name(path: str) -> str:
    """The environment variable that sets a dotted setting path."""
    return ENV_PREFIX + path.replace(".", ENV_DELIMITER).upper()


def _unknown(shown: str, path: str) -> str:
    known = list(setting_paths())
    close = difflib.get_close_matches(path.lower(), known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown setting {shown}: {hint}(`fraudstream config` lists every setting)"


def _reject_unknown_env(environ: Mapping[str, str]) -> None:
    known = {env_name(path) for path in setting_paths()} | {CONFIG_FILE_ENV}
    for key in environ:
        upper = key.upper()
        if upper.startswith(ENV_PREFIX) and upper not in known:
            path = upper[len(ENV_PREFIX) :].replace(ENV_DELIMITER, ".").lower()
            raise SettingsError(_unknown(f"{key} (environment)", path))


def _nest(flat: Mapping[str, str], source: str) -> dict[str, Any]:
    """``{"kafka.port": "1"}`` → ``{"kafka": {"port": "1"}}``, rejecting unknown paths."""
    known = setting_paths()
    nested: dict[str, Any] = {}
    for path, value in flat.items():
        if path not in known:
            raise SettingsError(_unknown(f"{path!r} ({source})", path))
        node = nested
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _describe(
    error: ValidationError, file: Path | None, overridden: frozenset[str] = frozenset()
) -> str:
    """Each bad value with where it came from: ``--set`` (which wins), else the environment
    variable or the config file."""
    lines = []
    for issue in error.errors():
        path = ".".join(str(part) for part in issue["loc"])
        if issue["type"] == "extra_forbidden":
            lines.append(_unknown(f"{path!r}" + (f" (in {file})" if file else ""), path))
            continue
        if isinstance(issue.get("input"), dict):  # a rule over several of a section's values
            message = str(issue["msg"]).removeprefix("Value error, ")
            lines.append(f"{path or 'settings'}: {message}")
            continue
        if path in overridden:
            where = f"{path} (from --set)"
        else:
            where = f"{path} (env {env_name(path)}" + (f", or in {file}" if file else "") + ")"
        secret = any(word in path for word in ("password", "url", "key"))
        shown = "" if secret else f" got {issue.get('input')!r}:"
        lines.append(f"bad value for {where}:{shown} {issue['msg']}")
    return "invalid settings:\n  " + "\n  ".join(lines)


def load_settings(
    *, config_file: Path | None = None, overrides: Mapping[str, str] | None = None
) -> Settings:
    """Build the settings tree from flags, environment and config file, or raise SettingsError.

    Precedence: ``overrides`` (the CLI's ``--set key=value``) over ``FRAUDSTREAM_…`` variables
    over the TOML file named by ``config_file`` or ``FRAUDSTREAM_CONFIG``.
    """
    _reject_unknown_env(os.environ)
    if config_file is None and os.environ.get(CONFIG_FILE_ENV):
        config_file = Path(os.environ[CONFIG_FILE_ENV])
    if config_file is not None and not config_file.is_file():
        raise SettingsError(f"config file {config_file} does not exist")
    token = _CONFIG_FILE.set(config_file)
    try:
        return Settings(**_nest(dict(overrides or {}), "from --set"))
    except ValidationError as error:
        raise SettingsError(_describe(error, config_file, frozenset(overrides or {}))) from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"config file {config_file} is not valid TOML: {error}") from None
    finally:
        _CONFIG_FILE.reset(token)

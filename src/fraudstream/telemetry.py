"""Prometheus metrics of the long-running services (engine, decision API, simulator,
dashboard), served by ``prometheus-client`` on a loopback port each (``metrics.*``).

Every series is named here, so that the Grafana dashboard and the alert rules under
``deploy/`` can be checked against one list. Per-row figures of the engine are fed a batch
at a time (``BatchHistogram``): one Python call per row would cost a few per cent of a
batch for a number nobody reads per row."""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

if TYPE_CHECKING:
    from fraudstream.config import MetricsSettings

__all__ = [
    "LATENCY_BUCKETS_S",
    "BatchHistogram",
    "read_samples",
    "reason_kind",
    "scrape",
    "serve_metrics",
    "serve_worker_metrics",
]

log = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
"""From a millisecond (an API decision) to a minute (an engine behind a backlog)."""


class BatchHistogram(Collector):
    """A histogram observed an array at a time, exposed as ``prometheus_client`` exposes its
    own (``_bucket``, ``_sum``, ``_count``)."""

    def __init__(
        self, name: str, documentation: str, buckets: Iterable[float] = LATENCY_BUCKETS_S,
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:  # fmt: skip
        self.name, self.documentation = name, documentation
        self._bounds = np.array(sorted(buckets), dtype=np.float64)
        self._counts = np.zeros(len(self._bounds) + 1, dtype=np.int64)  # the last: +Inf
        self._sum = 0.0
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        values = values[~np.isnan(values)]
        if not len(values):
            return
        # A value goes to the first bucket whose bound it does not exceed ("le").
        counts = np.bincount(
            np.searchsorted(self._bounds, values, side="left"), minlength=len(self._counts)
        )
        with self._lock:
            self._counts += counts
            self._sum += float(values.sum())

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        bounds = [_bound(b) for b in self._bounds.tolist()]
        yield HistogramMetricFamily(
            self.name, self.documentation,
            buckets=[*zip(bounds, cumulative[:-1], strict=True), ("+Inf", cumulative[-1])],
            sum_value=total,
        )  # fmt: skip

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation)


def _bound(value: float) -> str:
    return repr(float(value))


_REASON_KINDS = (  # (where the reason starts, what it contains) → kind; the first match wins
    ("replay:", "", "replay"),
    ("duplicate tx_id with different content", "", "conflict"),
    ("not valid JSON", "", "not_json"),
    ("payload of", "", "too_large"),
    ("event_time ", "is outside", "event_time_out_of_range"),
    ("invalid ", "looks like a card number", "card_number"),
    ("invalid ", "contains a NUL character", "nul_character"),
    ("invalid transaction", "", "invalid_field"),
    ("invalid label", "", "invalid_field"),
    ("features failed", "", "features_failed"),
    ("scoring failed", "", "scoring_failed"),
    ("PostgreSQL cannot store the row", "", "refused_by_database"),
)


def reason_kind(reason: str) -> str:
    """The few kinds a dead letter's reason falls into: a label of bounded values for the
    dead-letter counter (the reason itself, with ids and offsets, is in ``dlq_events``)."""
    for start, contains, kind in _REASON_KINDS:
        if reason.startswith(start) and contains in reason:
            return kind
    return "other"


# --- the engines (one per process: Prometheus's instance label tells them apart) ------------

ENGINE_INFO = Gauge("fraudstream_engine_info", "The engine this process runs (1).", ["engine"])
ENGINE_TRANSACTIONS = Counter(
    "fraudstream_engine_transactions",
    "Transactions scored and stored (each once, whatever the redeliveries).",
)  # fmt: skip
ENGINE_DECISIONS = Counter(
    "fraudstream_engine_decisions", "Stored decisions, by decision.", ["decision"]
)
ENGINE_ALERTS = Counter("fraudstream_engine_alerts", "Alerts published (review and decline).")
ENGINE_DEAD_LETTERS = Counter(
    "fraudstream_engine_dead_letters",
    "Messages refused to a dead-letter topic, by source topic and kind of reason.",
    ["source", "reason"],
)  # fmt: skip
ENGINE_LATE = Counter(
    "fraudstream_engine_late_transactions",
    "Transactions scored behind their partition's watermark (not counted for terminals).",
)  # fmt: skip
ENGINE_LAG = Gauge(
    "fraudstream_engine_consumer_lag",
    "Messages between the engine's position and the log end, per owned partition.",
    ["partition"],
)  # fmt: skip
ENGINE_PARTITIONS = Gauge(
    "fraudstream_engine_partitions", "Partitions of the transactions topic owned."
)
ENGINE_BATCH_SECONDS = Histogram(
    "fraudstream_engine_batch_seconds",
    "Time to process one batch (decode to handed to the writer).", buckets=LATENCY_BUCKETS_S,
)  # fmt: skip
ENGINE_END_TO_END = BatchHistogram(
    "fraudstream_engine_end_to_end_seconds",
    "Kafka append to stored in PostgreSQL, per transaction.",
)
ENGINE_CHECKPOINT_SECONDS = Histogram(
    "fraudstream_engine_checkpoint_seconds",
    "Time of a PostgreSQL transaction that stored card-state changes with the offsets.",
    buckets=LATENCY_BUCKETS_S,
)  # fmt: skip
ENGINE_LAST_CHECKPOINT = Gauge(
    "fraudstream_engine_last_checkpoint_timestamp_seconds",
    "When card state was last checkpointed (Unix time).",
)  # fmt: skip
ENGINE_MODEL = Gauge(
    "fraudstream_engine_model_info",
    "The model the engine scores with (1), by role (champion, challenger).", ["role", "version"],
)  # fmt: skip
ENGINE_CARDS = Gauge(
    "fraudstream_engine_cards_in_memory", "Cards whose histories are held in memory."
)
ENGINE_STATE_BYTES = Gauge(
    "fraudstream_engine_card_store_bytes",
    "Card state's size: on local disk (RocksDB's estimate of its live data) for the local "
    "engine, in the state store's memory for Spark.",
)  # fmt: skip


def count_dead_letters(source: str, reasons: Iterable[str]) -> None:
    for reason in reasons:
        ENGINE_DEAD_LETTERS.labels(source, reason_kind(reason)).inc()


def show_model(champion: str, challenger: str | None) -> None:
    """Set the model series to exactly these versions."""
    ENGINE_MODEL.clear()
    ENGINE_MODEL.labels("champion", champion).set(1)
    if challenger:
        ENGINE_MODEL.labels("challenger", challenger).set(1)


def show_lag(lag: dict[int, int]) -> None:
    """Set the lag series to exactly the owned partitions."""
    ENGINE_LAG.clear()
    for partition, behind in sorted(lag.items()):
        ENGINE_LAG.labels(str(partition)).set(behind)
    ENGINE_PARTITIONS.set(len(lag))


# --- the decision API ------------------------------------------------------------------------

API_REQUESTS = Counter(
    "fraudstream_api_requests", "Requests to POST /v1/decisions, by HTTP status.", ["status"]
)
API_DECISION_SECONDS = Histogram(
    "fraudstream_api_decision_seconds",
    "The server's time to answer POST /v1/decisions (any status).", buckets=LATENCY_BUCKETS_S,
)  # fmt: skip
API_DECISIONS = Counter(
    "fraudstream_api_decisions", "Decisions answered, by decision and whether degraded.",
    ["decision", "degraded"],
)  # fmt: skip
API_DEGRADED = Counter(
    "fraudstream_api_degraded_answers",
    "Fallback decisions answered within the budget, by why the full one was not there.",
    ["reason"],
)  # fmt: skip

# --- the simulator ---------------------------------------------------------------------------

SIMULATOR_SENT = Counter(
    "fraudstream_simulator_transactions_sent", "Transactions handed to the producer."
)
SIMULATOR_LABELS = Counter(
    "fraudstream_simulator_labels_sent", "Fraud labels handed to the producer."
)
SIMULATOR_RATE = Gauge(
    "fraudstream_simulator_rate", "Transactions sent per second over the last 10 seconds."
)
SIMULATOR_TARGET = Gauge(
    "fraudstream_simulator_target_rate", "The rate the simulator holds (transactions/s)."
)
SIMULATOR_CAUGHT_UP = Gauge(
    "fraudstream_simulator_caught_up",
    "1 once the accelerated history reached the present (the stream then runs in real time).",
)  # fmt: skip

# --- the dashboard ---------------------------------------------------------------------------

DASHBOARD_VIEWS = Counter(
    "fraudstream_dashboard_page_views", "Page runs (each refresh counts), by page.", ["page"]
)
DASHBOARD_SIGN_INS = Counter(
    "fraudstream_dashboard_sign_ins", "Sign-in attempts, by outcome.", ["outcome"]
)
DASHBOARD_PAGE_SECONDS = Histogram(
    "fraudstream_dashboard_page_seconds", "Time to run a page's script, by page.", ["page"],
    buckets=LATENCY_BUCKETS_S,
)  # fmt: skip


# --- serving ---------------------------------------------------------------------------------

_served: dict[str, str] = {}
_serving = threading.Lock()


def serve_metrics(
    settings: MetricsSettings, service: str, registry: CollectorRegistry = REGISTRY
) -> str | None:
    """Serve ``registry`` on ``metrics.<service>_port`` (once per process) and return the
    URL; None when metrics are off. A port already taken (a second engine on the host) gives
    way to a free one, named in the log: metrics never stop a service."""
    if not settings.enabled:
        return None
    with _serving:
        if service in _served:
            return _served[service]
        port = settings.port_of(service)
        try:
            server, _thread = start_http_server(port, addr=settings.host, registry=registry)
        except OSError as error:
            server, _thread = start_http_server(0, addr=settings.host, registry=registry)
            log.warning(
                "metrics port %d is taken (%s); serving %s metrics on port %d instead",
                port, error.strerror, service, server.server_port,
            )  # fmt: skip
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        url = f"http://{host}:{server.server_port}/metrics"
        _served[service] = url
        log.info("%s metrics on %s", service, url)
        return url


def serve_worker_metrics(settings: MetricsSettings, service: str, directory: Path) -> None:
    """Before a server forks workers: have each worker write its metrics under
    ``directory`` (prometheus-client's multiprocess mode) and serve their sum from here.

    The workers are started afterwards, with the environment set now, so their
    ``prometheus_client`` counts to files; this process only reads them."""
    if not settings.enabled:
        return
    shutil.rmtree(directory, ignore_errors=True)  # a previous run's dead workers
    directory.mkdir(parents=True, mode=0o700)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    serve_metrics(settings, service, registry)


def read_samples(url: str, timeout_s: float = 1.0) -> list[Sample]:
    """The samples a metrics endpoint serves now; empty when it does not answer."""
    import urllib.error
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - ours
            text = response.read().decode()
    except (OSError, urllib.error.URLError):
        return []
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def scrape(url: str, timeout_s: float = 1.0) -> dict[str, float]:
    """A metrics endpoint's samples, each name summed over its labels (what `status` shows);
    empty when the endpoint does not answer."""
    totals: dict[str, float] = {}
    for sample in read_samples(url, timeout_s):
        totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals

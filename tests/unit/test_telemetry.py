"""The engine's batch-fed histogram exposes what prometheus-client's own would, value by
value; the metrics server gives way when its port is taken."""

import socket

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from fraudstream import telemetry
from fraudstream.config import MetricsSettings
from fraudstream.telemetry import LATENCY_BUCKETS_S, BatchHistogram, scrape, serve_metrics


def test_a_batch_fed_histogram_matches_one_observed_value_by_value() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate([
        rng.exponential(0.05, 5_000), np.array(LATENCY_BUCKETS_S), [0.0, 1e6, np.nan]
    ])  # fmt: skip
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batched = BatchHistogram("latency_seconds", "doc", registry=ours)
    single = Histogram("latency_seconds", "doc", buckets=LATENCY_BUCKETS_S, registry=theirs)
    for chunk in np.array_split(values, 7):
        batched.observe_many(chunk)
    for value in values[~np.isnan(values)]:
        single.observe(float(value))

    def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
        return {
            (s.name, s.labels.get("le", "")): s.value
            for family in registry.collect() for s in family.samples
            if not s.name.endswith("_created")
        }  # fmt: skip

    expected = samples(theirs)
    got = samples(ours)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert abs(got[key] - value) <= 1e-9 * max(1.0, abs(value)), key
    assert got[("latency_seconds_count", "")] == len(values) - 1  # the NaN is not counted
    assert b"latency_seconds_bucket" in generate_latest(ours)


def test_a_taken_port_gives_way_to_a_free_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "_served", {})  # as in a fresh process
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        url = serve_metrics(MetricsSettings(engine_port=port), "engine")
        assert url is not None and f":{port}/" not in url
        assert "process_cpu_seconds_total" in scrape(url)
        assert serve_metrics(MetricsSettings(), "engine") == url  # once per process
    assert serve_metrics(MetricsSettings(enabled=False), "simulator") is None

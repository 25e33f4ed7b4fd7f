"""The monitoring shipped under deploy/: Prometheus's configuration and alert rules (checked
and unit-tested by promtool, from Debian's prometheus package) and the Grafana dashboard,
both held to the series the services actually export (fraudstream.telemetry)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from fraudstream import telemetry
from fraudstream.config import MetricsSettings

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "fraudstream.json"
SERVICES = ("engine", "api", "simulator", "dashboard")
_SERIES = re.compile(r"\b(fraudstream_[a-z0-9_]+)")
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def _exported() -> set[str]:
    """Every series name the services can export: each family of the registry with the
    suffixes its type adds (a labelled family lists no sample before its first use)."""
    names = set()
    for family in telemetry.REGISTRY.collect():
        if family.name.startswith("fraudstream_"):
            names |= {family.name + suffix for suffix in _SUFFIXES[family.type]}
    return names


def _promtool(*arguments: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: `make test` installs Debian's prometheus package"
    return subprocess.run(
        [tool, *arguments], cwd=PROMETHEUS, capture_output=True, text=True, check=False
    )


def test_prometheus_configuration_and_rules_pass_promtool() -> None:
    for arguments in (("check", "config", "prometheus.yml"), ("check", "rules", "alerts.yml")):
        checked = _promtool(*arguments)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_alert_rules_fire_on_a_spike_and_only_then() -> None:
    """alerts.test.yml: the alert-rate spike fires after a fraud wave has lasted 5 minutes,
    never on a steady day or on a quiet night's few transactions; lag alerts too."""
    tested = _promtool("test", "rules", "alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_prometheus_scrapes_every_service_on_its_metrics_port() -> None:
    config = YAML(typ="safe").load((PROMETHEUS / "prometheus.yml").read_text())
    scraped = {
        job["job_name"]: (sd["names"], sd["port"])
        for job in config["scrape_configs"]
        for sd in job["dns_sd_configs"]
    }
    defaults = MetricsSettings()
    assert scraped == {
        f"fraudstream-{service}": ([service], defaults.port_of(service)) for service in SERVICES
    }


def test_rules_and_dashboard_use_only_exported_series() -> None:
    exported = _exported()
    rules = YAML(typ="safe").load((PROMETHEUS / "alerts.yml").read_text())
    recorded = {rule["record"] for group in rules["groups"] for rule in group["rules"]
                if "record" in rule}  # fmt: skip
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    expressions += [target["expr"] for panel in panels for target in panel["targets"]]
    used = {name for expression in expressions for name in _SERIES.findall(expression)}
    assert used, "no fraudstream series found"
    assert used <= exported, used - exported
    for expression in expressions:
        for name in re.findall(r"\b(fraudstream:[a-z0-9_:]+)", expression):
            assert name in recorded, f"{name} is not a recording rule of alerts.yml"
    # Every metric a service exports is on the dashboard, in some form.
    families = {name.rsplit("_", 1)[0] if name.endswith(("_total", "_bucket")) else name
                for name in used}  # fmt: skip
    for family in telemetry.REGISTRY.collect():
        if family.name.startswith("fraudstream_") and family.name not in (
            "fraudstream_engine_info",
            "fraudstream_dashboard_page_views",
            "fraudstream_dashboard_sign_ins",
            "fraudstream_simulator_caught_up",
            "fraudstream_simulator_labels_sent",
            "fraudstream_api_decisions",
            "fraudstream_engine_alerts",
            "fraudstream_engine_late_transactions",
        ):
            assert family.name in families, f"{family.name} is on no panel"


def test_the_grafana_dashboard_is_provisioned_from_prometheus() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "fraudstream" and dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    datasource = YAML(typ="safe").load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"]
    for first, second in _pairs(dashboard["panels"]):
        assert not _overlap(first["gridPos"], second["gridPos"]), (first["title"], second["title"])
    provider = YAML(typ="safe").load(
        (GRAFANA / "provisioning" / "dashboards" / "fraudstream.yml").read_text()
    )["providers"][0]
    assert provider["options"]["path"] == "/etc/grafana/dashboards"


def _pairs(panels: list[dict[str, object]]) -> list[tuple[dict, dict]]:  # type: ignore[type-arg]
    return [(a, b) for i, a in enumerate(panels) for b in panels[i + 1 :]]


def _overlap(a: dict[str, int], b: dict[str, int]) -> bool:
    return (
        a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]
    )  # fmt: skip


_VALID = {"tx_id": "t1", "event_time": "2026-01-02T03:04:05Z", "card_id": "c1",
          "terminal_id": "m1", "amount": 12.5}  # fmt: skip


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (b"not json", "not_json"),
        (b"{" + b" " * 70_000 + b"}", "too_large"),
        (json.dumps({**_VALID, "event_time": "1999-01-01T00:00:00Z"}).encode(),
         "event_time_out_of_range"),
        (json.dumps({**_VALID, "card_id": "4111111111111111"}).encode(), "card_number"),
        (json.dumps({**_VALID, "channel": "a\u0000b"}).encode(), "nul_character"),
        (json.dumps({**_VALID, "amount": "12"}).encode(), "invalid_field"),
        (json.dumps({k: v for k, v in _VALID.items() if k != "card_id"}).encode(),
         "invalid_field"),
    ],
)  # fmt: skip
def test_the_decoders_reasons_fall_into_their_kinds(payload: bytes, kind: str) -> None:
    from datetime import datetime, timezone

    from fraudstream.schema import Invalid, decode_transaction

    refused = decode_transaction(payload, now=datetime(2026, 1, 3, tzinfo=timezone.utc))
    assert isinstance(refused, Invalid)
    assert telemetry.reason_kind(refused.reason) == kind, refused.reason


def test_the_engines_reasons_fall_into_their_kinds() -> None:
    from fraudstream.engines.step import duplicate_reason
    from fraudstream.records import StoredId

    before = StoredId(content_hash=1, partition=0, offset=7)
    assert telemetry.reason_kind(duplicate_reason("t", 1, 1, 9, before) or "") == "replay"
    assert telemetry.reason_kind(duplicate_reason("t", 2, 1, 9, before) or "") == "conflict"
    for reason, kind in [
        ("features failed: ValueError: bad", "features_failed"),
        ("scoring failed: XGBoostError: bad", "scoring_failed"),
        ("PostgreSQL cannot store the row: numeric field overflow", "refused_by_database"),
        ("something new", "other"),
    ]:
        assert telemetry.reason_kind(reason) == kind

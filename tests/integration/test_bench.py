"""`fraudstream bench --quick`: every benchmark runs once at a tiny size (figures are not
asserted: speed is measured by the benchmark, not by tests)."""

import re

import pytest

from bench.profile import can_sample

from ..conftest import overrides_env, run_cli


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One `fraudstream bench --quick` (every benchmark) for the tests of this module: the
    report it updated, which began with a section of someone else's."""
    root = tmp_path_factory.mktemp("bench")
    report = root / "benchmarks.md"
    report.write_text("# Benchmarks\n\n<!-- bench:other -->\nkept\n<!-- /bench:other -->\n")
    result = run_cli(
        "bench", "--quick", "--out", str(report),
        env=overrides_env({"state_dir": str(root / "state")}), timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return report.read_text()


@pytest.mark.timeout(1800)
def test_bench_runs_every_benchmark_and_updates_only_its_sections(quick_report: str) -> None:
    text = quick_report
    assert "kept" in text
    assert "## Simulator" in text and "## Features and scoring" in text
    assert "features + scoring (one core)" in text and "rows/s" in text
    # The end-to-end engine section: its own broker and database, real rows measured.
    assert "## Local engine, end to end" in text
    assert "catch-up: one engine drains a backlog" in text and "3,000 transactions" in text
    assert "sustained: lag flat" in text and "latency at 500 tx/s" in text
    assert "sustained: lag flat, 2 engine processes" in text
    # py-spy (a dev dependency) sampled the engine during its catch-up, where it may attach.
    if can_sample():
        profile = text[text.index("## Local engine profile (catch-up)") :]
        assert "samples of the engine process" in profile and "| our function" in profile
    else:
        assert "## Local engine profile" not in text
    # The decision API beside the streaming path, and its kill run: real requests answered.
    api = text[text.index("## Decision API, beside the streaming path") :]
    assert "API decision time at 200 req/s" in api and "degraded answers at 200 req/s" in api
    # Counted among the measured requests' answers (a count by answer time could exceed them).
    degraded = re.search(
        r"degraded answers at 200 req/s \| \*\*([\d,]+) answers\*\* \|[^|]*\| of ([\d,]+) measured "
        r"requests per run \(after \d+ s of warm-up\), as their answers said; recorded in "
        r"degraded_decisions",
        api,
    )
    assert degraded, api
    assert int(degraded[1].replace(",", "")) <= int(degraded[2].replace(",", ""))
    assert "latency at 500 tx/s, append → stored" in api
    assert "engine kill -9 during 200 req/s" in api and "errors none" in api
    # The server's own time per answer, read from each answer's decision_ms, beside the client's.
    assert re.search(r"own decision time \(its decision_ms\) p99 \d+\.\d ms, max \d+\.\d ms", api)
    # The Spark engine's section (pyspark is installed by the test set-up), measured the same way.
    spark = text[text.index("## Spark engine (local[2]), end to end") :]
    assert "catch-up: one engine drains a backlog" in spark and "3,000 transactions" in spark
    assert "sustained: lag flat" in spark and "latency at 500 tx/s" in spark
    assert "over 0 rows" not in text
    # The dashboard's queries over a (here tiny) stored table, and its freshness.
    assert "## Dashboard queries" in text and "20,000 predictions stored" in text
    assert "dashboard query — Cases: queue and the totals of every view" in text
    assert "dashboard freshness: stored → returned by the Live query" in text
    assert "rules backtest: the shipped rules + an aggregate expression + a list" in text
    # The per-message baseline and the growth benchmarks (each has its own test below).
    assert "## Baseline: one message at a time, beside the local engine" in text
    assert "## Growth: cards and stored rows" in text


def _rows(text: str, section: str) -> dict[str, float]:
    """The section's measurements: name → median (the bold figure)."""
    body = text[text.index(f"<!-- bench:{section} -->") : text.index(f"<!-- /bench:{section} -->")]
    found = re.findall(r"^\| (.+?) \| \*\*([\d,.]+) [^*]+\*\* \|", body, re.M)
    return {name: float(value.replace(",", "")) for name, value in found}


@pytest.mark.timeout(1800)
def test_bench_baseline_measures_a_per_message_consumer_beside_the_engine(
    quick_report: str,
) -> None:
    text = quick_report
    assert "## Baseline: one message at a time, beside the local engine" in text
    rows = _rows(text, "baseline")
    assert set(rows) == {
        "baseline: one message at a time, one INSERT each (autocommit)",
        "local engine on the same backlog, same run",
        "local engine ÷ baseline",
        "I/O ceiling: decode and COPY only, same backlog, same run",
        "peer: the same job in quix-streams (RocksDB state, same model)",
        "local engine ÷ quix-streams peer",
        "local engine ÷ I/O ceiling",
    }
    assert all(value > 0 for value in rows.values())
    assert "all 3,000 transactions of the backlog" in text
    baseline = text[text.index("<!-- bench:baseline -->") : text.index("<!-- /bench:baseline -->")]
    # Each drain says what every process spent: the engine (or ceiling, or peer), the broker
    # and PostgreSQL.
    for process in ("engine", "consumer", "peer", "broker", "PostgreSQL"):
        assert re.search(rf"\b{process} \d+\.\d{{3}}\b", baseline), process


@pytest.mark.timeout(1800)
def test_bench_growth_measures_cards_in_the_state_and_rows_in_the_table(
    quick_report: str,
) -> None:
    rows = _rows(quick_report, "growth")
    for cards in ("1,000", "5,000"):
        assert rows[f"catch-up with {cards} cards in the state"] > 0
        assert rows[f"engine peak RSS with {cards} cards in the state"] > 0
        assert f"restart with {cards} cards on local disk" in rows  # seconds: may round to 0
    for stored in ("0", "20,000"):
        assert rows[f"sink: 1,000-row batches into a table of {stored} rows"] > 0
    assert len(rows) == 8

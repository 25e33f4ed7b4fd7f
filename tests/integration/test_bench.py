"""`fraudstream bench --quick`: every benchmark runs once at a tiny size (figures are not
asserted: speed is measured by the benchmark, not by tests)."""

from pathlib import Path

from ..conftest import overrides_env, run_cli


def test_bench_runs_every_benchmark_and_updates_only_its_sections(tmp_path: Path) -> None:
    report = tmp_path / "benchmarks.md"
    report.write_text("# Benchmarks\n\n<!-- bench:other -->\nkept\n<!-- /bench:other -->\n")
    result = run_cli(
        "bench", "--quick", "--out", str(report),
        env=overrides_env({"state_dir": str(tmp_path / "state")}), timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    text = report.read_text()
    assert "kept" in text
    assert "## Simulator" in text and "## Features and scoring" in text
    assert "features + scoring (one core)" in text and "rows/s" in text
    # The end-to-end engine section: its own broker and database, real rows measured.
    assert "## Local engine, end to end" in text
    assert "catch-up: one engine drains a backlog" in text and "3,000 transactions" in text
    assert "sustained: lag flat" in text and "latency at 500 tx/s" in text
    # The Spark engine's section (pyspark is installed by the test set-up), measured the same way.
    spark = text[text.index("## Spark engine (local[2]), end to end") :]
    assert "catch-up: one engine drains a backlog" in spark and "3,000 transactions" in spark
    assert "sustained: lag flat" in spark and "latency at 500 tx/s" in spark
    assert "over 0 rows" not in text
    # The dashboard's queries over a (here tiny) stored table, and its freshness.
    assert "## Dashboard queries" in text and "20,000 predictions stored" in text
    assert "dashboard query — Review: open cases" in text
    assert "dashboard freshness: stored → returned by the Live query" in text

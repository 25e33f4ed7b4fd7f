from pathlib import Path

from ..conftest import overrides_env, run_cli


def test_bench_runs_and_updates_only_its_sections(tmp_path: Path) -> None:
    report = tmp_path / "benchmarks.md"
    report.write_text("# Benchmarks\n\n<!-- bench:other -->\nkept\n<!-- /bench:other -->\n")
    result = run_cli("bench", "--quick", "--out", str(report), env=overrides_env({}), timeout=600)
    assert result.returncode == 0, result.stderr
    text = report.read_text()
    assert "kept" in text
    assert "## Simulator" in text and "## Features and scoring" in text
    assert "features + scoring (one core)" in text and "rows/s" in text

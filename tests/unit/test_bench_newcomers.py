"""``python -m bench.newcomers`` runs (its figures are in docs/model.md, not asserted here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import newcomers


def test_the_newcomers_benchmark_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FRAUDSTREAM_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("FRAUDSTREAM_MODEL__BOOTSTRAP_CUSTOMERS", "1000")
    newcomers.main(["0", "0.05"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["newcomers 0%", "newcomers 5%"]
    assert all(
        "as the card's first" in line and "history day 1" in line and "day 8" in line
        for line in lines
    )
    assert (tmp_path / "newcomers" / "features.parquet").exists()  # cached for the next run
    with pytest.raises(SystemExit, match=r"between 0 and 0\.5"):
        newcomers.main(["0.7"])

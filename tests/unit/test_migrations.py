from fraudstream.store.migrations import migrations


def test_migrations_are_numbered_from_one_without_gaps() -> None:
    found = migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))


def test_core_tables_are_created_by_the_first_migration() -> None:
    first = migrations()[0].sql
    for table in (
        "fraud_predictions",
        "labels",
        "review_decisions",
        "model_versions",
        "stream_checkpoints",
        "rollup_minute",
        "quality_daily",
    ):
        assert f"CREATE TABLE {table} (" in first
    assert "tx_id            text PRIMARY KEY" in first


def test_checksums_identify_content() -> None:
    first = migrations()[0]
    assert len(first.checksum) == 64
    assert first.checksum == migrations()[0].checksum

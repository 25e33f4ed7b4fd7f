"""Dataset adapters on small files the tests write in each format."""

from __future__ import annotations

import csv
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from fraudstream.privacy import CardTokenizer, looks_like_card_number
from fraudstream.simulator.adapters import DatasetError, load_dataset
from fraudstream.simulator.generator import generate_blocks, preset
from fraudstream.simulator.history import write_history

TOKENIZER = CardTokenizer(b"unit-test-key-0123456789")
CARDS = ["4111111111111111", "5500005555555559", "340000000000009"]


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


SPARKOV_HEADER = [
    "", "trans_date_trans_time", "cc_num", "merchant", "category", "amt", "first", "last",
    "gender", "street", "city", "state", "zip", "lat", "long", "city_pop", "job", "dob",
    "trans_num", "unix_time", "merch_lat", "merch_long", "is_fraud",
]  # fmt: skip


def _sparkov_row(i: int, **changes: object) -> list[object]:
    row: dict[str, object] = {
        "": i, "trans_date_trans_time": f"2019-01-01 00:0{i}:18", "cc_num": CARDS[i % 3],
        "merchant": f"fraud_Shop {i % 2}", "category": "grocery_pos", "amt": 10.5 + i,
        "first": "Jennifer", "last": "Banks", "gender": "F", "street": "561 Perry Cove",
        "city": "Moravian Falls", "state": "NC", "zip": 28654, "lat": 36.0788, "long": -81.1781,
        "city_pop": 3495, "job": "Psychologist", "dob": "1988-03-09", "trans_num": f"tn{i:04d}",
        "unix_time": 1325376018, "merch_lat": 36.011293, "merch_long": -82.048315,
        "is_fraud": 1 if i == 2 else 0,
    }  # fmt: skip
    row.update(changes)
    return [row[name] for name in SPARKOV_HEADER]


def test_sparkov_rows_are_mapped_and_card_numbers_tokenised(tmp_path: Path) -> None:
    path = _write_csv(
        tmp_path / "fraudTest.csv", SPARKOV_HEADER, [_sparkov_row(i) for i in range(5)]
    )
    dataset = load_dataset(path, tokenizer=TOKENIZER)
    assert dataset.format == "sparkov" and dataset.rows_read == 5 and not dataset.bad_rows
    txs = dataset.transactions
    assert list(txs["tx_id"]) == [f"tn{i:04d}" for i in range(5)]
    assert txs["card_id"].iloc[0] == TOKENIZER.token(CARDS[0])
    assert txs["card_id"].iloc[3] == txs["card_id"].iloc[0]  # same card, same token
    assert txs["amount"].iloc[1] == 11.5 and txs["terminal_lat"].iloc[0] == 36.011293
    assert str(txs["event_time"].iloc[0]) == "2019-01-01 00:00:18+00:00"
    assert list(dataset.labels["tx_id"]) == ["tn0002"]
    assert dataset.labels["reported_at"].iloc[0] == txs["event_time"].iloc[2] + timedelta(days=7)
    everything = txs.to_csv() + dataset.labels.to_csv()
    assert not any(number in everything for number in CARDS)
    assert not looks_like_card_number(everything)
    for personal in ("Jennifer", "Banks", "Perry Cove", "1988-03-09"):
        assert personal not in everything


def test_sparkov_without_a_token_key_is_refused(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "s.csv", SPARKOV_HEADER, [_sparkov_row(0)])
    with pytest.raises(DatasetError, match="FRAUDSTREAM_PRIVACY__TOKEN_KEY"):
        load_dataset(path, tokenizer=None)


def test_bad_rows_are_reported_counted_and_skipped(tmp_path: Path) -> None:
    rows = [
        _sparkov_row(0),
        _sparkov_row(1, amt="ten"),
        _sparkov_row(2, trans_date_trans_time="31/31/2019 25:00"),
        _sparkov_row(3, amt=-4),
        _sparkov_row(4, trans_num=""),
        _sparkov_row(5, is_fraud="maybe"),
        _sparkov_row(6, cc_num="4111-oops"),
        _sparkov_row(7),
    ]
    path = _write_csv(tmp_path / "bad.csv", SPARKOV_HEADER, rows)
    with path.open("a") as handle:
        handle.write("8,2019-01-01 00:08:18,4111111111111111,too,few\n")
    dataset = load_dataset(path, tokenizer=TOKENIZER)
    problems = {(bad.row, bad.field): bad.reason for bad in dataset.bad_rows}
    assert problems == {
        (2, "amt"): "not a number: 'ten'",
        (3, "trans_date_trans_time"): "unparseable time '31/31/2019 25:00'",
        (4, "amt"): "negative amount -4",
        (5, "trans_num"): "missing value",
        (6, "is_fraud"): "expected 0 or 1, got 'maybe'",
        (7, "cc_num"): "not a card number (8 to 19 digits)",
        (9, "(line)"): "5 fields, expected 23",
    }
    assert dataset.rows_read == 9 and dataset.rows_skipped == 7
    assert list(dataset.transactions["tx_id"]) == ["tn0000", "tn0007"]
    assert not any("4111" in str(bad) for bad in dataset.bad_rows)


HANDBOOK_HEADER = [
    "TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT",
    "TX_TIME_SECONDS", "TX_TIME_DAYS", "TX_FRAUD", "TX_FRAUD_SCENARIO",
]  # fmt: skip


def test_handbook_format(tmp_path: Path) -> None:
    rows = [
        [0, "2018-04-01 00:00:31", 596, 3156, 57.16, 31, 0, 0, 0],
        [1, "2018-04-01 00:02:10", 4961, 3412, 81.51, 130, 0, 0, 0],
        [2, "2018-04-01 00:07:56", 2, 1365, 246.0, 476, 0, 1, 1],
        [3, "2018-04-01 00:09:29", 4128, 8737, "", 569, 0, 0, 0],
    ]
    path = _write_csv(tmp_path / "2018-04-01.csv", HANDBOOK_HEADER, rows)
    dataset = load_dataset(path, tokenizer=None, label_delay=timedelta(days=7))
    assert dataset.format == "handbook"
    assert list(dataset.transactions["card_id"]) == ["C596", "C4961", "C2"]
    assert list(dataset.transactions["terminal_id"]) == ["T3156", "T3412", "T1365"]
    assert [str(b) for b in dataset.bad_rows] == ["row 4, TX_AMOUNT: missing value"]
    label = dataset.labels.iloc[0]
    assert (label["tx_id"], label["scenario"], label["source"]) == (
        "2",
        "amount_threshold",
        "dataset",
    )


def test_handbook_parquet(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "TRANSACTION_ID": [0, 1],
            "TX_DATETIME": pd.to_datetime(["2018-04-01 00:00:31", "2018-04-01 00:02:10"]),
            "CUSTOMER_ID": [5, 6], "TERMINAL_ID": [7, 8], "TX_AMOUNT": [1.0, 2.0],
            "TX_FRAUD": [0, 1],
        }
    )  # fmt: skip
    frame.to_parquet(tmp_path / "hb.parquet")
    dataset = load_dataset(tmp_path / "hb.parquet", tokenizer=None)
    assert (
        dataset.format == "handbook" and len(dataset.transactions) == 2 and len(dataset.labels) == 1
    )


def test_our_history_round_trips_with_its_labels(tmp_path: Path) -> None:
    params = preset("default", days=14, n_customers=200, n_terminals=400)
    path = tmp_path / "history.parquet"
    write_history(generate_blocks(params), path, params)
    dataset = load_dataset(path, tokenizer=None)
    source = pd.read_parquet(path)
    assert dataset.format == "history" and len(dataset.transactions) == len(source)
    reported = source["is_fraud"] & source["label_reported_at"].notna()
    assert len(dataset.labels) == reported.sum() > 0
    assert dataset.labels["reported_at"].is_monotonic_increasing
    assert "scenario" not in dataset.transactions and "is_fraud" not in dataset.transactions


def test_unknown_files_are_refused(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "x.csv", ["a", "b"], [[1, 2]])
    with pytest.raises(DatasetError, match="unrecognised columns"):
        load_dataset(path, tokenizer=None)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DatasetError, match=r"expected a \.csv"):
        load_dataset(tmp_path / "x.json", tokenizer=None)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope.csv", tokenizer=None)

"""Outside datasets mapped onto the canonical transaction and label records.

Formats: fraudstream history files (Parquet), the Fraud Detection Handbook's simulated data
(TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT, TX_FRAUD, …) and the Kaggle
"credit card transactions" CSV made by the Sparkov generator (trans_num, cc_num, amt, …).
Card numbers are replaced by keyed tokens here, before anything else sees them. A bad row is
reported (row number, field, reason), counted and skipped; the rest of the file is used.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from fraudstream.privacy import CardTokenizer
from fraudstream.simulator.history import history_metadata, labels_from_history

if TYPE_CHECKING:
    from fraudstream.config import Settings

__all__ = [
    "FORMATS",
    "BadRow",
    "Dataset",
    "DatasetError",
    "detect_format",
    "load_configured_dataset",
    "load_dataset",
]

FORMATS = ("history", "handbook", "sparkov")
TRANSACTION_COLUMNS = (
    "tx_id", "event_time", "card_id", "terminal_id", "amount", "currency", "merchant_category",
    "channel", "customer_x", "customer_y", "terminal_x", "terminal_y",
    "customer_lat", "customer_lon", "terminal_lat", "terminal_lon",
)  # fmt: skip
LABEL_COLUMNS = ("tx_id", "is_fraud", "reported_at", "source", "card_id", "scenario")

_HANDBOOK = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_FRAUD")
_SPARKOV = ("trans_num", "trans_date_trans_time", "cc_num", "merchant", "amt", "is_fraud")
_SPARKOV_OPTIONAL = ("category", "lat", "long", "merch_lat", "merch_long")
_HISTORY = ("tx_id", "event_time", "card_id", "terminal_id", "amount", "is_fraud")
_MISSING = {"", "nan", "NaN", "None", "NaT", "null", "NULL"}
_SENSITIVE = {"cc_num"}
_HANDBOOK_SCENARIOS = {
    "1": "amount_threshold",
    "2": "compromised_terminal",
    "3": "compromised_card",
}


class DatasetError(ValueError):
    """The file as a whole cannot be used (unknown format, missing column, missing key)."""


@dataclass(frozen=True)
class BadRow:
    row: int  # 1-based data row (the header is not counted)
    field: str
    reason: str

    def __str__(self) -> str:
        return f"row {self.row}, {self.field}: {self.reason}"


@dataclass
class Dataset:
    format: str
    rows_read: int
    transactions: pd.DataFrame  # TRANSACTION_COLUMNS, event-time order
    labels: pd.DataFrame  # LABEL_COLUMNS, report-time order
    bad_rows: list[BadRow] = field(default_factory=list)

    @property
    def rows_skipped(self) -> int:
        return len({bad.row for bad in self.bad_rows})


def detect_format(columns: list[str]) -> str:
    present = set(columns)
    for name, required in (("history", _HISTORY), ("handbook", _HANDBOOK), ("sparkov", _SPARKOV)):
        if present.issuperset(required):
            return name
    raise DatasetError(
        "unrecognised columns: expected a fraudstream history, the Handbook's format "
        f"({', '.join(_HANDBOOK)}) or the Sparkov/Kaggle format ({', '.join(_SPARKOV)})"
    )


def load_dataset(
    path: Path,
    *,
    tokenizer: CardTokenizer | None,
    label_delay: timedelta = timedelta(days=7),
    file_format: str = "auto",
) -> Dataset:
    """Read, validate and map a dataset file. Labels of outside datasets are taken to be
    reported ``label_delay`` after the transaction (the Handbook's assumption: 7 days)."""
    if not path.is_file():
        raise DatasetError(f"{path} does not exist")
    if file_format not in ("auto", *FORMATS):
        raise DatasetError(
            f"unknown format {file_format!r}: choose from auto, {', '.join(FORMATS)}"
        )
    ours = path.suffix == ".parquet" and file_format in ("auto", "history")
    if ours and history_metadata(path) is not None:  # written by us: valid by construction
        return _history(pd.read_parquet(path))
    raw, bad_lines = _read(path)
    chosen = detect_format(list(raw.columns)) if file_format == "auto" else file_format
    mapper: Callable[[_Rows, timedelta, CardTokenizer | None], Dataset]
    mapper = {"history": _history_rows, "handbook": _handbook, "sparkov": _sparkov}[chosen]
    dataset = mapper(_Rows(raw), label_delay, tokenizer)
    dataset.bad_rows = sorted(bad_lines + dataset.bad_rows, key=lambda bad: bad.row)
    dataset.rows_read += len(bad_lines)
    return dataset


def load_configured_dataset(path: Path, settings: Settings, file_format: str = "auto") -> Dataset:
    """``load_dataset`` with the configured card tokenizer (privacy.tokenizer_key, when set)
    and label delay (simulator.label_delay_days)."""
    key = settings.privacy.tokenizer_key()
    return load_dataset(
        path, tokenizer=CardTokenizer(key) if key else None, file_format=file_format,
        label_delay=timedelta(days=settings.simulator.label_delay_days),
    )  # fmt: skip


# --- reading ------------------------------------------------------------------------------


def _read(path: Path) -> tuple[pd.DataFrame, list[BadRow]]:
    """All columns as text, so that type errors can be reported per row."""
    if path.suffix == ".parquet":
        frame = pq.read_table(path).to_pandas()
        return frame.astype(str).reset_index(drop=True), []
    if not (path.suffix == ".csv" or path.name.endswith(".csv.gz")):
        raise DatasetError(f"{path.name}: expected a .csv, .csv.gz or .parquet file")
    # pandas pads short lines silently, so lines with the wrong field count are found first.
    skip, bad = _malformed_lines(path)
    try:
        return _read_csv(path, skip=skip), bad
    except pd.errors.ParserError as error:
        raise DatasetError(f"{path.name} is not readable CSV: {error}") from None


def _read_csv(path: Path, skip: list[int]) -> pd.DataFrame:
    frame = pd.read_csv(
        path, dtype=str, keep_default_na=False, na_filter=False, skiprows=skip or None
    )
    unnamed = [c for c in frame.columns if c.startswith("Unnamed:")]  # Kaggle's index column
    frame = frame.drop(columns=unnamed)
    if skip:
        frame.index = _data_rows_without(len(frame), skip)
    return frame


def _data_rows_without(count: int, skipped_lines: list[int]) -> pd.Index:
    """Original 0-based data-row numbers of the rows kept after skipping some file lines."""
    skipped = {line - 1 for line in skipped_lines}  # file line (0 = header) → data row
    kept = [row for row in range(count + len(skipped)) if row not in skipped]
    return pd.Index(kept[:count])


def _malformed_lines(path: Path) -> tuple[list[int], list[BadRow]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    skip: list[int] = []
    bad: list[BadRow] = []
    with opener(path, "rt", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        for line_index, fields in enumerate(reader, start=1):
            if len(fields) != len(header):
                skip.append(line_index)
                bad.append(
                    BadRow(line_index, "(line)", f"{len(fields)} fields, expected {len(header)}")
                )
    return skip, bad


# --- validation -------------------------------------------------------------------------


class _Rows:
    """Vectorised checks over text columns; each failure marks its rows bad with a reason."""

    def __init__(self, raw: pd.DataFrame) -> None:
        self.raw = raw
        self.bad = np.zeros(len(raw), dtype=bool)
        self.problems: list[BadRow] = []

    def _flag(self, mask: np.ndarray, name: str, reason: Callable[[str], str]) -> None:
        for position in np.flatnonzero(mask & ~self.bad):
            value = self.raw[name].iat[position]
            shown = "" if name in _SENSITIVE else value
            self.problems.append(
                BadRow(int(self.raw.index[position]) + 1, name, reason(shown[:40]))
            )
        self.bad |= mask

    def _present(self, name: str) -> pd.Series:
        column = self.raw[name].str.strip()
        missing = column.isin(_MISSING).to_numpy()
        self._flag(missing, name, lambda _v: "missing value")
        return column

    def text(self, name: str) -> pd.Series:
        column = self._present(name)
        too_long = (column.str.len() > 128).to_numpy()
        self._flag(too_long, name, lambda _v: "longer than 128 characters")
        return column

    def optional_text(self, name: str) -> pd.Series | None:
        if name not in self.raw:
            return None
        column = self.raw[name].str.strip().str.slice(0, 64)
        return column.where(~column.isin(_MISSING), None)

    def time(self, name: str) -> pd.Series:
        column = self._present(name)
        parsed = pd.to_datetime(column, errors="coerce", utc=True, format="ISO8601")
        self._flag(parsed.isna().to_numpy(), name, lambda v: f"unparseable time {v!r}")
        return parsed

    def number(self, name: str, *, minimum: float | None = None) -> pd.Series:
        column = self._present(name)
        parsed = pd.to_numeric(column, errors="coerce")
        self._flag(parsed.isna().to_numpy(), name, lambda v: f"not a number: {v!r}")
        if minimum is not None:
            self._flag((parsed < minimum).to_numpy(), name, lambda v: f"negative amount {v}")
        return parsed

    def optional_number(self, name: str, low: float, high: float) -> pd.Series | None:
        if name not in self.raw:
            return None
        parsed = pd.to_numeric(self.raw[name], errors="coerce")
        out_of_range = (parsed < low) | (parsed > high)
        self._flag(out_of_range.to_numpy(), name, lambda v: f"{v} outside [{low}, {high}]")
        return parsed

    def flag(self, name: str) -> pd.Series:
        column = self._present(name).str.lower()
        truth = column.map(
            {"1": True, "0": False, "true": True, "false": False, "1.0": True, "0.0": False}
        )
        self._flag(truth.isna().to_numpy(), name, lambda v: f"expected 0 or 1, got {v!r}")
        return truth.fillna(False).astype(bool)

    def keep(self) -> np.ndarray:
        return ~self.bad


def _finish(
    rows: _Rows,
    name: str,
    columns: dict[str, pd.Series | str | None],
    is_fraud: pd.Series,
    scenario: pd.Series | None,
    label_delay: timedelta,
) -> Dataset:
    """Keep the valid rows in canonical columns, event-time order; derive the label events."""
    keep = rows.keep()
    data: dict[str, object] = {}
    for column in TRANSACTION_COLUMNS:
        value = columns.get(column)
        data[column] = value.to_numpy()[keep] if isinstance(value, pd.Series) else value
    frame = pd.DataFrame(data)
    frame["_fraud"] = is_fraud.to_numpy()[keep]
    frame["_scenario"] = scenario.to_numpy()[keep] if scenario is not None else None
    frame = frame.sort_values("event_time", kind="stable").reset_index(drop=True)
    frauds = frame[frame["_fraud"]]
    labels = pd.DataFrame(
        {
            "tx_id": frauds["tx_id"].to_numpy(),
            "is_fraud": True,
            "reported_at": (frauds["event_time"] + label_delay).to_numpy(),
            "source": "dataset",
            "card_id": frauds["card_id"].to_numpy(),
            "scenario": frauds["_scenario"].to_numpy(),
        },
        columns=list(LABEL_COLUMNS),
    )
    transactions = frame.drop(columns=["_fraud", "_scenario"])
    return Dataset(name, len(rows.raw), transactions, labels, rows.problems)


def _handbook(rows: _Rows, label_delay: timedelta, _tokenizer: CardTokenizer | None) -> Dataset:
    scenario = rows.optional_text("TX_FRAUD_SCENARIO")
    columns: dict[str, pd.Series | str | None] = {
        "tx_id": rows.text("TRANSACTION_ID"),
        "event_time": rows.time("TX_DATETIME"),
        "card_id": "C" + rows.text("CUSTOMER_ID"),
        "terminal_id": "T" + rows.text("TERMINAL_ID"),
        "amount": rows.number("TX_AMOUNT", minimum=0),
    }
    is_fraud = rows.flag("TX_FRAUD")
    named = (
        scenario.map(lambda v: _HANDBOOK_SCENARIOS.get(str(v).split(".")[0]))
        if scenario is not None
        else None
    )
    return _finish(rows, "handbook", columns, is_fraud, named, label_delay)


def _sparkov(rows: _Rows, label_delay: timedelta, tokenizer: CardTokenizer | None) -> Dataset:
    if tokenizer is None:
        raise DatasetError(
            "this file holds card numbers (cc_num), which must be tokenised on the way in: "
            "set FRAUDSTREAM_PRIVACY__TOKEN_KEY to a long random secret (keep it: the same key "
            "gives the same tokens)"
        )
    numbers = rows.text("cc_num")
    card_ok = numbers.str.fullmatch(r"\d{8,19}").to_numpy()
    rows._flag(~card_ok, "cc_num", lambda _v: "not a card number (8 to 19 digits)")
    cards = pd.Series(
        [tokenizer.token(n) if ok else "" for n, ok in zip(numbers, card_ok, strict=True)],
        index=numbers.index,
    )
    columns: dict[str, pd.Series | str | None] = {
        "tx_id": rows.text("trans_num"),
        "event_time": rows.time("trans_date_trans_time"),
        "card_id": cards,
        "terminal_id": rows.text("merchant"),
        "amount": rows.number("amt", minimum=0),
        "currency": "USD",
        "merchant_category": rows.optional_text("category"),
        "customer_lat": rows.optional_number("lat", -90, 90),
        "customer_lon": rows.optional_number("long", -180, 180),
        "terminal_lat": rows.optional_number("merch_lat", -90, 90),
        "terminal_lon": rows.optional_number("merch_long", -180, 180),
    }
    return _finish(rows, "sparkov", columns, rows.flag("is_fraud"), None, label_delay)


def _history_rows(rows: _Rows, label_delay: timedelta, _tokenizer: CardTokenizer | None) -> Dataset:
    """A history-shaped CSV (or a Parquet file without our metadata): validated like the rest."""
    columns: dict[str, pd.Series | str | None] = {
        "tx_id": rows.text("tx_id"),
        "event_time": rows.time("event_time"),
        "card_id": rows.text("card_id"),
        "terminal_id": rows.text("terminal_id"),
        "amount": rows.number("amount", minimum=0),
        "currency": rows.optional_text("currency"),
        "merchant_category": rows.optional_text("merchant_category"),
        "channel": rows.optional_text("channel"),
    }
    for axis in ("customer_x", "customer_y", "terminal_x", "terminal_y"):
        columns[axis] = rows.optional_number(axis, -1e6, 1e6)
    return _finish(
        rows, "history", columns, rows.flag("is_fraud"), rows.optional_text("scenario"), label_delay
    )


def _history(frame: pd.DataFrame) -> Dataset:
    """A history file written by ``fraudstream simulate``: already valid, labels included."""
    transactions = frame.reindex(columns=list(TRANSACTION_COLUMNS))
    labels = labels_from_history(frame).sort_values("reported_at", kind="stable")
    return Dataset("history", len(frame), transactions, labels.reset_index(drop=True))

"""A step's valid records as columns: NumPy arrays built straight from the decoded records.

A pandas frame costs about a millisecond to build and tens of microseconds for each column
read back, whatever its size. Most steps of a live stream hold one or a few records, and a
payment waiting on the decision API pays each of those costs (ADR 14, docs/api.md), so the
step works on arrays and builds a frame only where one is still wanted (``frame``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd

from fraudstream.policy.expressions import TEXT_FIELDS
from fraudstream.records import BATCH_COLUMNS
from fraudstream.schema import Transaction

__all__ = ["NO_TIME", "RecordColumns", "micros", "objects", "row_views", "utc_micros"]

NO_TIME = np.iinfo(np.int64).min
"""Microseconds of a time that is not known (NaT once in a frame)."""

_OPTIONAL_TEXT = frozenset({"currency", "merchant_category", "channel"})


def micros(stamp: datetime) -> int:
    """A timezone-aware time as microseconds since the epoch."""
    return (stamp - _EPOCH) // _MICROSECOND


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


def utc_micros(values: np.ndarray) -> pd.api.extensions.ExtensionArray:
    """Microseconds since the epoch as a UTC time column (``NO_TIME`` is NaT)."""
    return pd.array(values.view("datetime64[us]"), dtype="datetime64[us, UTC]")


@dataclass(frozen=True)
class RecordColumns:
    """Valid records (log order per partition) with where each came from, its content digest
    and whether it is late. The columns every step reads are arrays from the start; the
    optional fields are taken from the records when first asked for (``column``)."""

    records: Sequence[Transaction]
    tx_id: np.ndarray  # object
    card_id: np.ndarray  # object
    terminal_id: np.ndarray  # object
    amount: np.ndarray  # float
    event_us: np.ndarray  # int64, µs since the epoch (UTC)
    kafka_partition: np.ndarray  # int32
    kafka_offset: np.ndarray  # int64
    kafka_time_us: np.ndarray  # int64: the broker's append time, NO_TIME when not given
    content_hash: np.ndarray  # int64
    late: np.ndarray  # bool
    _taken: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(
        cls,
        records: Sequence[Transaction],
        *,
        event_us: np.ndarray,
        partitions: np.ndarray,
        offsets: np.ndarray,
        appended_ms: np.ndarray,
        digests: Sequence[int],
        late: np.ndarray,
    ) -> RecordColumns:
        """``appended_ms``: the broker's append time per record, 0 when it gave none."""
        n = len(records)
        return cls(
            records=records,
            tx_id=objects([r.tx_id for r in records]),
            card_id=objects([r.card_id for r in records]),
            terminal_id=objects([r.terminal_id for r in records]),
            amount=np.fromiter((r.amount for r in records), float, n),
            event_us=np.asarray(event_us, dtype=np.int64).reshape(n),
            kafka_partition=np.asarray(partitions, dtype=np.int32).reshape(n),
            kafka_offset=np.asarray(offsets, dtype=np.int64).reshape(n),
            kafka_time_us=np.where(appended_ms > 0, appended_ms * 1000, NO_TIME).astype(np.int64),
            content_hash=np.array(digests, dtype=np.int64).reshape(n),
            late=np.asarray(late, dtype=bool).reshape(n),
        )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, name: str) -> np.ndarray:
        """A column of ``BATCH_COLUMNS`` by name (times as UTC datetime64)."""
        if name == "event_time":
            return self.event_us.view("datetime64[us]")
        if name == "kafka_time":
            return self.kafka_time_us.view("datetime64[us]")
        if name in _FIXED:
            value: np.ndarray = getattr(self, name)
            return value
        return self.column(name)

    def column(self, name: str) -> np.ndarray:
        """An optional field of the records: text as objects (None where absent), numbers as
        floats (NaN where absent)."""
        if name not in self._taken:
            if name not in _OPTIONAL:
                raise KeyError(name)
            values = [getattr(record, name) for record in self.records]
            if name in _OPTIONAL_TEXT:
                self._taken[name] = objects(values)
            else:
                self._taken[name] = np.array(
                    [np.nan if v is None else v for v in values], dtype=float
                ).reshape(len(values))
        return self._taken[name]

    @property
    def texts(self) -> Mapping[str, np.ndarray]:
        """The text fields the rules may read (``expressions.TEXT_FIELDS``), each taken when a
        rule first reads it."""
        return _Texts(self)

    def take(self, rows: np.ndarray) -> RecordColumns:
        """The records at positions ``rows``, in that order."""
        return RecordColumns(
            records=[self.records[int(row)] for row in rows],
            tx_id=self.tx_id[rows],
            card_id=self.card_id[rows],
            terminal_id=self.terminal_id[rows],
            amount=self.amount[rows],
            event_us=self.event_us[rows],
            kafka_partition=self.kafka_partition[rows],
            kafka_offset=self.kafka_offset[rows],
            kafka_time_us=self.kafka_time_us[rows],
            content_hash=self.content_hash[rows],
            late=self.late[rows],
            _taken={name: values[rows] for name, values in self._taken.items()},
        )

    def frame(self) -> pd.DataFrame:
        """The records as one frame: the canonical columns and ``BATCH_SOURCE_COLUMNS``."""
        columns: dict[str, object] = {
            name: self.column(name) if name in _OPTIONAL else getattr(self, name)
            for name in Transaction.__struct_fields__
            if name != "event_time"
        }
        columns["event_time"] = utc_micros(self.event_us)
        columns["kafka_partition"] = self.kafka_partition
        columns["kafka_offset"] = self.kafka_offset
        columns["kafka_time"] = utc_micros(self.kafka_time_us)
        columns["content_hash"] = self.content_hash
        columns["late"] = self.late
        return pd.DataFrame({name: columns[name] for name in BATCH_COLUMNS})


_FIXED = frozenset(
    {
        "tx_id", "card_id", "terminal_id", "amount", "kafka_partition", "kafka_offset",
        "content_hash", "late",
    }
)  # fmt: skip
_OPTIONAL = frozenset(Transaction.__struct_fields__) - _FIXED - {"event_time"}


def objects(values: Sequence[object]) -> np.ndarray:
    """Values as an object array, element for element (even when the elements are lists,
    which ``np.array`` would turn into a second dimension)."""
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def row_views(matrix: np.ndarray) -> np.ndarray:
    """A 2-D array as an object array of its rows (views, not copies): a column of vectors
    that the sink turns back into one block without a Python float per value."""
    rows = np.empty(len(matrix), dtype=object)
    for i, row in enumerate(matrix):
        rows[i] = row
    return rows


class _Texts(Mapping[str, np.ndarray]):
    def __init__(self, columns: RecordColumns) -> None:
        self._columns = columns

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in TEXT_FIELDS:
            raise KeyError(name)
        return self._columns[name]

    def __iter__(self) -> Iterator[str]:
        return iter(TEXT_FIELDS)

    def __len__(self) -> int:
        return len(TEXT_FIELDS)

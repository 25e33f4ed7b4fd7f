"""Card state beyond memory: every history on local disk (RocksDB), the recently written in
memory, checkpoints in proportion to what changed.

The disk holds a partition's state as of one stored checkpoint (its ``sequence`` is written
in the same RocksDB batch), never anything newer: the cards a step changes stay in memory
until the checkpoint that carries their rows is committed in PostgreSQL, then go to disk
(``persist``). What PostgreSQL keeps per checkpoint is only the rows appended since the one
before (``CardChanges``), so a checkpoint costs in proportion to the transactions, not to the
cards. A restarting engine opens its disk and replays only the checkpoints it lacks; a lost
or foreign disk is rebuilt from all of them (ADR 0011).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import struct
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rocksdict import (
    BlockBasedOptions,
    Cache,
    DBCompressionType,
    Options,
    Rdict,
    WriteBatch,
    WriteBufferManager,
)

from fraudstream.features.card import CardChanges, CardState, append_changes

__all__ = ["DiskCardState", "StoredCards", "open_cards"]

log = logging.getLogger("fraudstream.engine")

_CARD = b"c"  # key prefixes: a card's history, and the checkpoint the disk holds
_MARKER = b"m"
_MARKER_FORMAT = "<q16s"  # sequence, features version
_ENTRY_BYTES = 200  # a cached card's own cost beyond its rows: array header, key, dict slot
_REPLAY_FLUSH_ROWS = 1_000_000  # a rebuild writes to disk at least this often
_ROCKSDB_BYTES = 128 * 2**20  # block cache and memtables, all stores of the process
_NO_CHECKPOINT = 0
_DELETED = object()
_LITTLE_ENDIAN = sys.byteorder == "little"


class DiskCardState(CardState):
    """A partition's card histories: on disk, and the recently written ones in memory (at
    most about ``cache_bytes``; a card changed since the last checkpoint always stays)."""

    def __init__(self, db: Rdict, path: Path, cache_bytes: int, sequence: int) -> None:
        super().__init__(changes=CardChanges())
        self.db = db
        self.path = path
        self.cache_bytes = cache_bytes
        self.cached_bytes = 0
        self.sequence = sequence  # the checkpoint the disk holds
        self.taken = sequence  # the last checkpoint taken
        # Cards taken by a checkpoint not yet committed: sequence, card → rows (None: gone).
        self.pending: list[tuple[int, dict[str, np.ndarray | None]]] = []

    def disk_bytes(self) -> int:
        """RocksDB's estimate of the live data on disk (for the metrics)."""
        return int(self.db.property_int_value("rocksdb.estimate-live-data-size") or 0)

    def histories(self, cards: np.ndarray) -> list[np.ndarray | None]:
        found: list[np.ndarray | None] = []
        missing = []
        for index, card in enumerate(cards):
            rows: np.ndarray | object | None = self.cards.get(card)
            if rows is None and self.pending:
                rows = self._pending(card)
            if rows is None:
                missing.append(index)
            found.append(rows if isinstance(rows, np.ndarray) else None)
        if missing:
            stored = self.db.get([_CARD + cards[i].encode() for i in missing]) or []
            for index, value in zip(missing, stored, strict=True):
                if value is not None:
                    found[index] = np.frombuffer(value, "<i8").reshape(-1, 6)
        return found

    def _pending(self, card: str) -> np.ndarray | object | None:
        for _sequence, taken in reversed(self.pending):
            if card in taken:
                rows = taken[card]
                return _DELETED if rows is None else rows
        return None

    def keep(self, cards: np.ndarray, histories: list[np.ndarray]) -> None:
        size = self.cached_bytes
        for card, rows in zip(cards, histories, strict=True):
            old = self.cards.pop(card, None)  # re-inserted: the dict's order is recency
            if old is not None:
                size -= old.nbytes + _ENTRY_BYTES
            self.cards[card] = rows
            size += rows.nbytes + _ENTRY_BYTES
        self.cached_bytes = size
        self.dirty.update(cards)
        if size > self.cache_bytes:
            self._evict(int(self.cache_bytes * 0.9))

    def _evict(self, target: int) -> None:
        """Drop the least recently written cards that are on disk (or about to be)."""
        victims = []
        size = self.cached_bytes
        for card, rows in self.cards.items():
            if size <= target:
                break
            if card not in self.dirty:
                victims.append(card)
                size -= rows.nbytes + _ENTRY_BYTES
        for card in victims:
            del self.cards[card]
        self.cached_bytes = size

    def expire(self, now_us: int) -> int:
        """Forget the cached cards idle for longer than the TTL (gone from disk at the next
        checkpoint; ``expire_idle`` measures from the newest cached card, which the last
        written ones always are). Idle cards only on disk stay there: a card older than every window
        gives the features of a card never seen, so keeping it changes no result."""
        forgotten = super().expire(now_us)  # marks them dirty: deleted from disk
        if forgotten:
            self.cached_bytes = sum(r.nbytes + _ENTRY_BYTES for r in self.cards.values())
        return forgotten

    def take(self, sequence: int | None = None) -> tuple[int, bytes, int | None]:
        """The next checkpoint (or ``sequence``): its number, the rows appended since the
        last one (empty bytes when none: the number stays, nothing new is stored) and the
        newest time among them. Its cards go to disk once it is committed (``persist``);
        until then they are read from here."""
        changes, self.changes = self.changes or CardChanges(), CardChanges()
        if sequence is None:
            sequence = self.taken + 1 if len(changes) else self.taken
        self.taken = sequence
        self.pending.append((sequence, {card: self.cards.get(card) for card in self.dirty}))
        self.dirty = set()
        return sequence, changes.to_bytes() if len(changes) else b"", changes.newest_us()

    def persist(self, sequence: int, features_version: str) -> None:
        """Checkpoint ``sequence`` is committed: its cards (and earlier ones') go to disk."""
        batch = WriteBatch(raw_mode=True)
        put, delete = batch.put, batch.delete  # a call per changed card: kept lean
        written = False
        while self.pending and self.pending[0][0] <= sequence:
            _sequence, taken = self.pending.pop(0)
            for card, rows in taken.items():
                if rows is None:
                    delete(_CARD + card.encode())
                elif _LITTLE_ENDIAN:  # histories are int64: their bytes are "<i8" already
                    put(_CARD + card.encode(), rows.tobytes())
                else:
                    put(_CARD + card.encode(), rows.astype("<i8").tobytes())
            written = True
        if written or sequence != self.sequence:
            batch.put(_MARKER, _marker(sequence, features_version))
            self.db.write(batch)
            self.sequence = sequence
        if self.cached_bytes > self.cache_bytes:  # what was pinned until now may go
            self._evict(int(self.cache_bytes * 0.9))

    def close(self) -> None:
        self.db.close()
        if self.path.name.endswith(f"-{os.getpid()}"):  # a private store: nobody reopens it
            Rdict.destroy(str(self.path))


@dataclass(frozen=True)
class StoredCards:
    """What PostgreSQL holds of a partition's cards: the last checkpoint's sequence, an
    optional whole-state base (valid before checkpoint 1), and a reader of the checkpoints'
    changes after a given sequence (in order: sequence, ``CardChanges`` bytes)."""

    sequence: int
    base: bytes | None
    changes_after: Callable[[int], Iterable[tuple[int, bytes]]]


def open_cards(
    path: Path, stored: StoredCards, *, cache_bytes: int, features_version: str
) -> DiskCardState:
    """The partition's card state as of ``stored.sequence``: the disk at ``path`` brought up
    to date, or, when it holds another state (lost, foreign, newer, other features), rebuilt
    from PostgreSQL."""
    db, path = _open_db(path)
    held = _read_marker(db, features_version)
    if held is None or held > stored.sequence:
        if db.get(_MARKER) is not None:  # a store of another run, or of other features
            log.info("card store %s holds another state: rebuilding it from the checkpoints", path)
        db.close()
        Rdict.destroy(str(path))
        db, path = _open_db(path)
        held = None
    state = DiskCardState(db, path, cache_bytes, held or _NO_CHECKPOINT)
    if held == stored.sequence:
        return state
    state.changes = None  # replayed rows are already stored
    replayed = 0
    if held is None and stored.base is not None:
        append_changes(state, CardChanges.of_snapshot(stored.base))
        replayed += len(state.dirty)
    expected = (held or _NO_CHECKPOINT) + 1
    for sequence, blob in stored.changes_after(held or _NO_CHECKPOINT):
        if sequence > stored.sequence:
            break
        if held is not None and sequence != expected:  # pruned under this disk: start over
            state.db.close()
            Rdict.destroy(str(path))
            return open_cards(
                path, stored, cache_bytes=cache_bytes, features_version=features_version
            )
        changes = CardChanges.from_bytes(blob)
        append_changes(state, changes)
        replayed += len(changes)
        expected = sequence + 1
        if replayed >= _REPLAY_FLUSH_ROWS:  # bounded memory, whatever the history
            state.take(sequence)
            state.persist(sequence, features_version)
            state.changes, replayed = None, 0
    state.take(stored.sequence)
    state.persist(stored.sequence, features_version)
    state.changes = CardChanges()
    return state


def _open_db(path: Path) -> tuple[Rdict, Path]:
    """RocksDB at ``path``; if another live process holds it, a private one beside it."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        return Rdict(str(path), _options()), path
    except Exception as error:  # rocksdict raises plain Exception; locked: an owner alive
        if "lock" not in str(error).lower():
            raise
        private = path.with_name(f"{path.name}-{os.getpid()}")
        log.warning("card store %s is in use (%s): using %s", path, error, private)
        shutil.rmtree(private, ignore_errors=True)
        private.mkdir(parents=True)
        return Rdict(str(private), _options()), private


@functools.cache
def _memory() -> tuple[Cache, WriteBufferManager]:
    """One block cache and one memtable budget for every store of the process, charged to
    that cache: RocksDB's memory stays about ``_ROCKSDB_BYTES`` whatever the partitions."""
    cache = Cache(_ROCKSDB_BYTES)
    return cache, WriteBufferManager.new_write_buffer_manager_with_cache(
        _ROCKSDB_BYTES // 2, False, cache
    )


def _options() -> Options:
    cache, memtables = _memory()
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_compression_type(DBCompressionType.lz4())
    options.set_write_buffer_size(16 * 2**20)
    options.set_write_buffer_manager(memtables)
    table = BlockBasedOptions()
    table.set_block_cache(cache)
    options.set_block_based_table_factory(table)
    return options


def _marker(sequence: int, features_version: str) -> bytes:
    return struct.pack(_MARKER_FORMAT, sequence, features_version.encode()[:16])


def _read_marker(db: Rdict, features_version: str) -> int | None:
    """The checkpoint the disk holds, or None (empty, or another feature set's)."""
    value = db.get(_MARKER)
    if value is None:
        return None
    sequence, version = struct.unpack(_MARKER_FORMAT, value)
    if version.rstrip(b"\0") != features_version.encode()[:16]:
        return None
    return int(sequence)

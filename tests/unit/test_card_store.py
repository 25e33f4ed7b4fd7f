"""The card store on local disk: the same features as all cards in memory, whatever the
cache size, and a restart from its disk, from a lost disk or from a foreign one gives the
state of the last committed checkpoint exactly (PostgreSQL's part is a list here)."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fraudstream.engines.card_store import DiskCardState, StoredCards, open_cards
from fraudstream.features import CardState
from fraudstream.features.card import card_features

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
VERSION = "1"


def _stream(n: int, cards: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "tx_id": [f"t{i}" for i in range(n)],
            "event_time": pd.Timestamp(T0)
            + pd.to_timedelta(np.sort(rng.integers(0, 45 * 86_400, n)), unit="s"),
            "card_id": rng.choice([f"c{i}" for i in range(cards)], n),
            "terminal_id": rng.choice([f"T{i}" for i in range(60)], n),
            "amount": np.round(rng.gamma(2, 30, n), 2),
            "terminal_x": rng.uniform(0, 100, n),
            "terminal_y": rng.uniform(0, 100, n),
            "customer_x": rng.uniform(0, 100, n),
            "customer_y": rng.uniform(0, 100, n),
        }
    )
    late = rng.choice(n, n // 20, replace=False)  # some arrive days late
    frame.loc[late, "event_time"] -= pd.Timedelta(days=2)
    return frame


class Postgres:
    """What the engine's sink keeps: each committed checkpoint's changes, in order."""

    def __init__(self) -> None:
        self.changes: list[tuple[int, bytes]] = []

    def stored(self) -> StoredCards:
        through = self.changes[-1][0] if self.changes else 0
        return StoredCards(through, None, lambda after: [c for c in self.changes if c[0] > after])


def _run(
    cards: DiskCardState, stream: pd.DataFrame, db: Postgres, *, batch: int, every: int
) -> list[dict[str, np.ndarray]]:
    """Score ``stream`` in batches, checkpointing every ``every`` batches as the engine does:
    taken after a batch, committed (and persisted) with the next one."""
    out, taken = [], None
    for index, start in enumerate(range(0, len(stream), batch)):
        out.append(card_features(cards, stream.iloc[start : start + batch]))
        if taken is not None:
            db.changes.append(taken[:2])
            cards.persist(taken[0], VERSION)
            taken = None
        if index % every == 0:
            taken = cards.take()
    return out


def _columns(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _same(left: dict[str, np.ndarray], right: dict[str, np.ndarray]) -> None:
    assert left.keys() == right.keys()
    for name in left:
        np.testing.assert_array_equal(left[name], right[name], err_msg=name)


def _open(path: Path, db: Postgres, cache_bytes: int = 1 << 20) -> DiskCardState:
    return open_cards(path, db.stored(), cache_bytes=cache_bytes, features_version=VERSION)


def test_features_are_those_of_every_card_in_memory_whatever_the_cache(tmp_path: Path) -> None:
    stream = _stream(12_000)
    whole = card_features(CardState(), stream)
    for cache_bytes in (16 * 2**10, 1 << 30):  # a few dozen cards, or all of them
        db = Postgres()
        cards = _open(tmp_path / str(cache_bytes), db, cache_bytes)
        _same(_columns(_run(cards, stream, db, batch=500, every=3)), whole)
        if cache_bytes < 1 << 20:
            assert cards.cached_bytes < 2 * cache_bytes + 100 * 48 * 200  # dirty cards stay
            assert len(cards.cards) < 400
        cards.close()


def test_a_restart_resumes_from_disk_and_replays_only_what_it_lacks(tmp_path: Path) -> None:
    stream = _stream(9_000, seed=1)
    whole = card_features(CardState(), stream)
    db = Postgres()
    cards = _open(tmp_path / "p0", db)
    head = _run(cards, stream.iloc[:6_000], db, batch=400, every=2)
    # Killed: the last checkpoint taken was never committed, nothing after it persisted.
    cards.close()
    through = db.changes[-1][0]
    on_disk = db.changes[:-2]  # and the disk missed the last two commits' persists
    reopened = _open(tmp_path / "p0", Postgres())  # an empty PostgreSQL: disk is ahead
    assert reopened.sequence == 0 and len(reopened.histories(np.array(["c1"]))) == 1
    reopened.close()
    # Rebuild the disk as it was two checkpoints earlier, then restart against the full list.
    shutil.rmtree(tmp_path / "p0")
    early = Postgres()
    early.changes = on_disk
    _open(tmp_path / "p0", early).close()
    restarted = _open(tmp_path / "p0", db)
    assert restarted.sequence == through
    resume_at = _resume_row(head, db, stream)
    tail = _run(restarted, stream.iloc[resume_at:], db, batch=400, every=2)
    _same(_columns(tail), {k: v[resume_at:] for k, v in whole.items()})


def _resume_row(head: list[dict[str, np.ndarray]], db: Postgres, stream: pd.DataFrame) -> int:
    """The row after the last committed checkpoint: checkpoint k is taken after batch
    2(k-1) (every second batch, from the first)."""
    k = db.changes[-1][0]
    return min((2 * (k - 1) + 1) * 400, len(stream))


@pytest.mark.parametrize("how", ["lost", "foreign"])
def test_a_lost_or_foreign_disk_is_rebuilt_from_the_checkpoints(tmp_path: Path, how: str) -> None:
    stream = _stream(6_000, seed=2)
    db = Postgres()
    cards = _open(tmp_path / "p", db)
    _run(cards, stream, db, batch=300, every=2)
    cards.close()
    if how == "lost":
        shutil.rmtree(tmp_path / "p")
    else:  # a disk from another run, at a later checkpoint than PostgreSQL holds
        db.changes = db.changes[:-1]
    expected = _replayed(db)  # the state of the last checkpoint PostgreSQL holds
    assert len(expected) > 300
    rebuilt = _open(tmp_path / "p", db)
    assert rebuilt.sequence == db.changes[-1][0]
    got = _everything(rebuilt)
    assert got.keys() == expected.keys()
    for card, rows in expected.items():
        np.testing.assert_array_equal(got[card], rows, err_msg=card)


def _replayed(db: Postgres) -> dict[str, np.ndarray]:
    from fraudstream.features.card import CardChanges, append_changes

    state = CardState()
    for _sequence, blob in db.changes:
        append_changes(state, CardChanges.from_bytes(blob))
    return state.cards


def _everything(cards: DiskCardState) -> dict[str, np.ndarray]:
    names = np.array([f"c{i}" for i in range(400)], object)
    return {str(n): r for n, r in zip(names, cards.histories(names), strict=True) if r is not None}


def test_idle_cards_leave_memory_and_disk_and_no_feature_changes(tmp_path: Path) -> None:
    early = _stream(2_000, cards=50, seed=4)  # 45 days from T0
    recent = early.iloc[:10].assign(
        tx_id=[f"r{i}" for i in range(10)], card_id="c-active",
        event_time=pd.Timestamp(T0) + pd.Timedelta(days=95),
    )  # fmt: skip
    returning = early.iloc[:40].assign(
        tx_id=[f"back{i}" for i in range(40)],
        event_time=pd.Timestamp(T0) + pd.Timedelta(days=96) + pd.to_timedelta(range(40), "s"),
    )
    kept = CardState()
    db = Postgres()
    disk = _open(tmp_path / "p", db)
    for state in (kept, disk):
        card_features(state, early)
        card_features(state, recent)
    sequence, blob, _newest = disk.take()
    disk.persist(sequence, VERSION)
    db.changes.append((sequence, blob))
    assert disk.expire_idle() == len({*early["card_id"]})  # idle for 50+ days
    sequence, blob, _newest = disk.take()
    disk.persist(sequence, VERSION)
    db.changes.append((sequence, blob))
    disk.close()
    reopened = _open(tmp_path / "p", db)
    names = np.array(sorted({*early["card_id"]}), object)
    assert reopened.histories(names) == [None] * len(names)  # gone from disk too
    assert reopened.histories(np.array(["c-active"], object))[0] is not None
    _same(card_features(kept, returning), card_features(reopened, returning))
    reopened.close()


def test_a_whole_state_snapshot_from_before_incremental_checkpoints_is_the_base(
    tmp_path: Path,
) -> None:
    """A database migrated from whole-state snapshots keeps the last one as the base; the
    checkpoints after it replay over it."""
    stream = _stream(4_000, seed=6)
    before = CardState()
    card_features(before, stream.iloc[:2_500])
    db = Postgres()
    disk = open_cards(
        tmp_path / "p", StoredCards(0, before.to_bytes(), lambda after: []),
        cache_bytes=1 << 20, features_version=VERSION,
    )  # fmt: skip
    tail = card_features(disk, stream.iloc[2_500:])
    _same(tail, card_features(before, stream.iloc[2_500:]))
    sequence, blob, _newest = disk.take()
    disk.persist(sequence, VERSION)
    db.changes.append((sequence, blob))
    disk.close()
    shutil.rmtree(tmp_path / "p")  # lost: rebuilt from the base and the checkpoint after it
    base = CardState()
    card_features(base, stream.iloc[:2_500])
    rebuilt = open_cards(
        tmp_path / "p", StoredCards(sequence, base.to_bytes(), db.stored().changes_after),
        cache_bytes=1 << 20, features_version=VERSION,
    )  # fmt: skip
    names = np.array(sorted(before.cards), object)
    for card, rows in zip(names, rebuilt.histories(names), strict=True):
        assert rows is not None
        np.testing.assert_array_equal(rows, before.cards[card], err_msg=card)
    rebuilt.close()


def test_a_checkpoint_with_nothing_appended_keeps_its_number_and_stores_nothing(
    tmp_path: Path,
) -> None:
    """An idle partition checkpoints every interval; without new rows that must not add a
    stored row each time (they would pile up: the age pruning reads their rows' times)."""
    cards = _open(tmp_path / "p", Postgres())
    card_features(cards, _stream(300, seed=7))
    first, blob, newest = cards.take()
    assert first == 1 and blob and newest is not None
    again, empty, none = cards.take()
    assert (again, empty, none) == (1, b"", None)
    cards.persist(again, VERSION)
    assert cards.sequence == 1
    cards.close()

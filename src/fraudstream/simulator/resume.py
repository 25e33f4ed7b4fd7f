"""Where the live simulator stopped, kept in the state directory so that the next run with the
same settings continues the stream (the next transaction ids, time going on) instead of
repeating it: a repeated stream is deduplicated to nothing by the sink and doubles every card's
history in the engines' state.

One simulator at a time owns a stream's resume point (a lock held while it runs); any other run
(a second simulator with the same settings beside it, or ``--from-start``) starts a new stream,
whose ids carry a namespace of their own, so two runs never send the same transaction id.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

from fraudstream.simulator.generator import SimulationParams, new_stream
from fraudstream.simulator.publish import ResumePoint

__all__ = ["LiveStart", "ResumeFile", "start_live"]


class ResumeFile:
    """``<state_dir>/simulator/live-<fingerprint>.json``, one per stream definition, with its
    lock ``live-<fingerprint>.lock``."""

    def __init__(self, state_dir: Path, params: SimulationParams, accelerated: bool) -> None:
        definition = json.dumps(
            {"params": repr(params), "accelerated": accelerated}, sort_keys=True
        ).encode()
        fingerprint = hashlib.sha256(definition).hexdigest()[:16]
        self.path = state_dir / "simulator" / f"live-{fingerprint}.json"
        self._lock: IO[str] | None = None

    def claim(self) -> bool:
        """Own the resume point until ``release`` or the end of the process (a crash included);
        False when a running simulator owns it."""
        if self._lock is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.with_suffix(".lock").open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._lock = handle
        return True

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None

    def load(self) -> ResumePoint | None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        return ResumePoint(
            sent=int(data["sent"]),
            origin_wall=datetime.fromisoformat(data["origin_wall"]),
            origin_sim=datetime.fromisoformat(data["origin_sim"]),
            # A point saved before streams had namespaces: its ids were the same in every
            # state directory, so it goes on under a new one.
            stream=data.get("stream") or new_stream(),
        )

    def save(self, point: ResumePoint) -> None:
        """Atomically: a crash mid-write leaves the previous point."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "sent": point.sent,
            "origin_wall": point.origin_wall.isoformat(),
            "origin_sim": point.origin_sim.isoformat(),
            "stream": point.stream,
        }
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(data))
        os.replace(temporary, self.path)


@dataclass(frozen=True)
class LiveStart:
    """How a live run begins: the stream it sends, the point it continues from (None: the
    stream's beginning) and where its checkpoints go (None: nowhere, another simulator that is
    running owns this stream's resume point). ``release`` gives up the resume point."""

    stream: str
    resume: ResumePoint | None
    checkpoint: Callable[[ResumePoint], None] | None
    release: Callable[[], None]


def start_live(
    state_dir: Path, params: SimulationParams, accelerated: bool, *, from_start: bool = False
) -> LiveStart:
    """Continue the last stream with these settings, unless ``from_start`` or a simulator that
    is running owns it: then a new stream (a new id namespace)."""
    resume_file = ResumeFile(state_dir, params, accelerated)
    if not resume_file.claim():
        return LiveStart(new_stream(), None, None, resume_file.release)
    resume = None if from_start else resume_file.load()
    stream = resume.stream if resume is not None else new_stream()
    return LiveStart(stream, resume, resume_file.save, resume_file.release)

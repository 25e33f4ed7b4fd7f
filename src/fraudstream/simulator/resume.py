"""Where the live simulator stopped, kept in the state directory so that the next run with the
same settings continues the stream (new transaction ids, time going on) instead of repeating
it: a repeated stream is deduplicated to nothing by the sink and doubles every card's history
in the engines' state."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime
from pathlib import Path

from fraudstream.simulator.generator import SimulationParams
from fraudstream.simulator.publish import ResumePoint

__all__ = ["ResumeFile"]


class ResumeFile:
    """``<state_dir>/simulator/live-<fingerprint>.json``, one per stream definition."""

    def __init__(self, state_dir: Path, params: SimulationParams, accelerated: bool) -> None:
        definition = json.dumps(
            {"params": repr(params), "accelerated": accelerated}, sort_keys=True
        ).encode()
        fingerprint = hashlib.sha256(definition).hexdigest()[:16]
        self.path = state_dir / "simulator" / f"live-{fingerprint}.json"

    def load(self) -> ResumePoint | None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        return ResumePoint(
            sent=int(data["sent"]),
            origin_wall=datetime.fromisoformat(data["origin_wall"]),
            origin_sim=datetime.fromisoformat(data["origin_sim"]),
        )

    def save(self, point: ResumePoint) -> None:
        """Atomically: a crash mid-write leaves the previous point."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "sent": point.sent,
            "origin_wall": point.origin_wall.isoformat(),
            "origin_sim": point.origin_sim.isoformat(),
        }
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(data))
        os.replace(temporary, self.path)

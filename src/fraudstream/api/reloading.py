"""A thread that reloads something from PostgreSQL every few seconds, so that a request
never waits for the database: a reload that fails keeps what was loaded last."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["Reloader"]

log = logging.getLogger("fraudstream.api")


class Reloader:
    def __init__(self, what: str, reload: Callable[[], None], every_s: float) -> None:
        self.what, self._reload, self.every_s = what, reload, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._often, name=what, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _often(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self._reload()
            except Exception as error:  # the database away or refusing: keep what is known
                log.warning("reloading %s: %s", self.what, error)

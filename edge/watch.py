"""Long polls for the edge state: agents wait for the next version instead of polling.

One thread per process reads the state's version item while anyone waits (``interval``
seconds apart, whatever the number of agents), so a change made by another control replica
reaches waiting agents within ``interval``; a change made here wakes them at once. Nobody
waiting: no reads at all. A replica that stops (:meth:`VersionWatch.drain`) answers its waiting
agents at once and holds no request any more, so its stop is not held up by a long poll.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)


class VersionWatch:
    def __init__(self, read_version: Callable[[], str | None], interval: float = 0.5) -> None:
        self._read = read_version
        self._interval = interval
        self._condition = threading.Condition()
        self._version: str | None = None
        self._waiting = 0
        self._poller: threading.Thread | None = None
        self._closed = False
        self._draining = False

    @property
    def waiting(self) -> int:
        """Long polls held right now (a gauge on /metrics)."""
        return self._waiting

    @property
    def draining(self) -> bool:
        """The replica is stopping: a long poll would outlast it (the API refuses one)."""
        return self._draining

    def drain(self) -> None:
        """The replica stops: the agents waiting are answered now (with what they have or
        the change), and a later :meth:`wait` returns at once."""
        with self._condition:
            self._draining = True
            self._condition.notify_all()

    def close(self) -> None:
        """The store is closing: the poller stops before its next read (no "closed database"
        error from a thread outliving it), and waiting agents are answered at once."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        poller = self._poller
        if poller is not None and poller is not threading.current_thread():
            poller.join(timeout=self._interval * 4)

    def changed(self, version: str) -> None:
        """This process committed ``version``: wake the agents waiting on an older one."""
        with self._condition:
            self._version = version
            self._condition.notify_all()

    def wait(self, have: str, timeout: float) -> None:
        """Return once the version is not ``have`` any more, or after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._condition:
            self._waiting += 1
            if not self._closed and (self._poller is None or not self._poller.is_alive()):
                self._version = None  # unknown until the poller's first read
                self._poller = threading.Thread(target=self._poll, name="edge-watch",
                                                daemon=True)
                self._poller.start()
            try:
                while (self._version in (None, have) and not (self._closed or self._draining)
                       and time.monotonic() < deadline):
                    self._condition.wait(min(deadline - time.monotonic(), self._interval))
            finally:
                self._waiting -= 1

    def _poll(self) -> None:
        while True:
            with self._condition:
                if self._waiting == 0 or self._closed:
                    self._poller = None
                    return
            try:
                version = self._read()
            except Exception:  # the store is down: waiting agents time out and ask again
                log.warning("reading the edge state version failed", exc_info=True)
                version = None
            if version is not None:
                self.changed(version)
            with self._condition:
                self._condition.wait_for(lambda: self._closed, self._interval)

"""dynalite as the chaos tests run it: restarted whenever it dies (it dies when a client is
killed in the middle of a request), and taken down on purpose for an outage."""
from __future__ import annotations

import threading
import time
from pathlib import Path

from kit.procs import ManagedProcess, free_port, wait_for_port
from tests.conftest import dynalite_command


class SupervisedDynalite:
    """dynalite on one port, started again (same data) whenever it dies; ``outage()`` keeps
    it down on purpose for a while."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.restarts = 0  # crashes of its own, restarted by the watcher
        self._directory = directory
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._paused = False
        self.down = threading.Event()
        """Set while ``outage()`` keeps it down."""
        self._process = self._start()
        wait_for_port(self.port, process=self._process)
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _start(self) -> ManagedProcess:
        return ManagedProcess("dynalite", dynalite_command(self.port, self._directory / "db"),
                              self._directory / "dynalite.log")

    def _watch(self) -> None:
        while not self._stopped.wait(0.1):
            with self._lock:
                if self._paused or self._process.poll() is None:
                    continue
                self.restarts += 1
                self._process.stop()
                self._process = self._start()

    def outage(self, seconds: float) -> None:
        with self._lock:
            self._paused = True
            self._process.stop()
            self.down.set()
        time.sleep(seconds)
        with self._lock:
            self._process = self._start()
            self.down.clear()
            self._paused = False
        wait_for_port(self.port, timeout=30)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(10)
        with self._lock:
            self._process.stop()

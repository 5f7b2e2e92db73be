"""The background loop of `edgectl serve`: drives domains forward every few seconds."""
from __future__ import annotations

import logging
import threading

from domains.lifecycle import Lifecycle

log = logging.getLogger(__name__)


def run_worker(lifecycle: Lifecycle, interval: float, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            lifecycle.tick()
        except Exception:  # a bad round must not kill the loop; the next one retries
            log.exception("worker round failed")
        stop.wait(interval)


def start_worker(lifecycle: Lifecycle, interval: float, stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(target=run_worker, args=(lifecycle, interval, stop),
                              name="edge-worker", daemon=True)
    thread.start()
    return thread

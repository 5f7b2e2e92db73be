"""What an edge node (edge/node.py) and a shard router (edge/router.py) share about the hot
changes they journal beside the files HAProxy reads."""
from __future__ import annotations

import logging
import time

from edge.errors import EdgeError
from edge.haproxy import HAProxy

log = logging.getLogger(__name__)


class Journaled:
    """What an edge node and a shard router (edge/router.py) share about the hot changes they
    journal beside the files HAProxy reads: how many wait to be folded into the files, when the
    last came, and when to fold them (:meth:`compact`, each its own)."""

    def __init__(self, compact_after: int) -> None:
        self.compact_after = compact_after
        self._journaled = 0
        """Changes in the journal, not yet folded into the files."""
        self.last_change = time.monotonic()

    haproxy: HAProxy

    def start(self) -> None:
        """Serve the files HAProxy reads (each its own)."""
        raise NotImplementedError

    def start_if_down(self) -> None:
        """HAProxy died (a crash, an OOM kill): serve the files again, as the control service
        may be away for a while. A start that fails is logged; the agent reports it."""
        if self.haproxy.running:
            return
        try:
            self.start()
        except EdgeError as exc:
            log.warning("%s", exc)

    def compact(self) -> bool:
        """Fold the journal into the files; True if there was anything to fold."""
        raise NotImplementedError

    def _noted(self, changes: int) -> None:
        self._journaled += changes
        self.last_change = time.monotonic()

    def _compact_if_long(self) -> None:
        """Past ``compact_after`` changes, a restart would replay too long a journal."""
        if self._journaled > self.compact_after:
            self.compact()

    def compact_if_idle(self, idle: float = 10.0) -> bool:
        """Fold the journal once no change came for ``idle`` seconds (debounced)."""
        if self._journaled and time.monotonic() - self.last_change >= idle:
            return self.compact()
        return False

"""What one control replica can tell about the others from the store they share."""
from __future__ import annotations

import logging
import time
from typing import Sequence

from edge.state_store import EdgeStateStore

log = logging.getLogger(__name__)


class LoneReplica:
    """``control_servers`` unset: this replica publishes its own address alone. A second
    replica on the same store doing the same makes the edge state flip between the two every
    round (a reload of every node each time). Said, naming the setting, once the published
    list is seen to be another's (a worker step; one read every ``every`` seconds).

    A warning rather than a list learnt from the replicas' heartbeats: the address a replica
    listens on (``0.0.0.0``, a port behind NAT) is not always one the edge can reach, and a
    learnt list would change, and reload every node, at each replica's start and stop, where
    the list set once stays while a replica restarts (HAProxy's health checks take it out)."""

    def __init__(self, edge_state: EdgeStateStore, own: Sequence[str],
                 every: float = 10.0) -> None:
        self._edge_state = edge_state
        self._own = tuple(own)
        self._every = every
        self._next = 0.0
        self._said: set[tuple[str, ...]] = set()

    def tick(self) -> None:
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self._every
        config = (self._edge_state.meta() or {}).get("config") or {}
        published = tuple(config.get("control_servers") or ())
        if published and published != self._own and published not in self._said:
            self._said.add(published)
            log.warning("control_servers (EDGE_CONTROL_SERVERS) is not set, so this replica "
                        "publishes only itself (%s) to the edge, but another replica on this "
                        "store published %s: set control_servers to every replica, the same "
                        "list on each, or the edge reloads every round", ", ".join(self._own),
                        ", ".join(published))

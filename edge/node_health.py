"""Whether an edge node serves a whole state, as its shard routers' health check reads it.

A node listens long before it serves what its shard holds: a cold start begins with a slice of
the routes and streams the other certificates in (edge/node.py), so a TCP check would let a
router send it visitors whose certificates it lacks. The node's HTTP binds therefore answer
``GET /_edge/health`` (haproxy.cfg.j2, when the node has a PROXY bind): 200 once the node
serves a whole state, 503 before. HAProxy reads the answer from a one-line map
(``health.map`` beside the releases: ``state ready``, or empty), written on every change and
set hot through the runtime API, so a restart or a reload answers as before.

A node that is behind its feed (a change refused, the control service away) stays ready: it
serves the last whole state it applied, and every node of a shard that refuses the same
change would otherwise take the shard's hostnames offline together.
"""
from __future__ import annotations

import logging
from pathlib import Path

from edge.runtime import RuntimeAPI, RuntimeCommandFailed
from kit.files import PUBLIC, write_atomic

log = logging.getLogger(__name__)

HEALTH_PATH = "/_edge/health"
KEY = "state"
READY = "ready"


class NodeHealth:
    def __init__(self, path: Path, runtime: RuntimeAPI, served: bool, checked: bool) -> None:
        """``served``: the node's files hold a state already (a node from before the health
        map counts as ready: what it serves is whole; a new one is not); ``checked``: its
        haproxy.cfg answers the check (it has a PROXY bind), so the map changes hot too."""
        self.path = path
        self._runtime = runtime
        self._checked = checked
        if not path.exists():
            write_atomic(path, f"{KEY} {READY}\n" if served else "", PUBLIC)
        self._ready: bool | None = None

    @property
    def ready(self) -> bool:
        if self._ready is None:
            self._ready = self.path.read_text().split() == [KEY, READY]
        return self._ready

    def mark(self, ready: bool, running: bool) -> None:
        """Answer ``ready`` from now on: in the file, and hot in a ``running`` HAProxy (one
        whose config has no health check refuses the map: its next reload reads the file)."""
        if ready == self.ready:
            return
        write_atomic(self.path, f"{KEY} {READY}\n" if ready else "", PUBLIC)
        self._ready = ready
        if not (running and self._checked):
            return
        batch = self._runtime.batch()
        batch.del_map(self.path, KEY, missing_ok=True)
        if ready:
            batch.add_map(self.path, KEY, READY)
        try:
            batch.send()
        except (RuntimeCommandFailed, OSError) as exc:
            log.info("health map not changed hot (the next reload reads it): %s", exc)
        log.info("edge node now answers its health check: %s",
                 "ready" if ready else "not ready")

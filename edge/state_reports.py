"""The edge nodes' reports to the control service: what each serves, and which visit reports
it already counted."""
from __future__ import annotations

import time
from typing import Any, Callable

from edge.protocol import OLDEST, meta_version
from store import ABSENT, ConflictError, Table, TableSpec, all_items

EDGE_NODES = TableSpec("edge_nodes", key="node_id")
EDGE_VISIT_REPORTS = TableSpec("edge_visit_reports", key="report_id", expiring=True)
"""Report ids already counted: an agent that resends a report after a lost answer counts once.
Each is remembered ``report_memory`` seconds."""


class StateReports:
    def __init__(self, nodes: Table, reports: Table, desired: Callable[[], dict[str, Any] | None],
                 report_memory: float = 7 * 86400.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.nodes = nodes
        self.reports = reports
        self._desired = desired
        """The version item: what the nodes are compared with."""
        self._report_memory = report_memory
        self._clock = clock

    def first_report(self, report_id: str) -> bool:
        """True the first time a visit report id is seen (within ``report_memory``)."""
        try:
            self.reports.put({"report_id": report_id,
                              "expires_at": self._clock() + self._report_memory},
                             expected_version=ABSENT)
            return True
        except ConflictError:
            return False

    def report(self, node_id: str, applied: str | None, error: str | None,
               running: bool, shard: str | None = None, revision: int | None = None) -> None:
        """``shard``: the node's, recorded unless it is the default one; ``revision``: a
        router's, the router map's revision it applied (its version is a digest)."""
        self.nodes.put({"node_id": node_id, "applied_version": applied, "error": error,
                        "haproxy_running": running, "reported_at": self._clock(),
                        **({"shard": shard} if shard else {}),
                        **({"applied_revision": revision} if revision is not None else {})})

    def list_nodes(self) -> list[dict[str, Any]]:
        meta = self._desired()
        now = self._clock()
        nodes = []
        for node in all_items(self.nodes):
            in_sync = meta is not None and node.get("applied_version") in (  # either form
                meta["edge_version"], meta_version(meta, OLDEST))
            lag = 0.0 if in_sync or meta is None else now - meta["published_at"]
            nodes.append({**node, "in_sync": in_sync, "lag_seconds": round(lag, 3),
                          "last_seen_seconds": round(now - node["reported_at"], 3)})
        return nodes

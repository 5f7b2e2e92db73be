"""The desired edge state as the control service stores it, in three parts over the same tables:
how it changes (edge/state_changes.py: the version item, its outbox and the route, redirect
and certificate items), what agents read of it (edge/state_feed.py: deltas, snapshots,
certificates) and the nodes' reports (edge/state_reports.py).
"""
from __future__ import annotations

import time
from typing import Any, Callable

from edge.protocol import PROTOCOL
from edge.state import DesiredState, EdgeConfig, Redirect
from edge.state_changes import (CHUNK, EDGE_CERTS, EDGE_REDIRECTS, EDGE_ROUTES, EDGE_STATE, FEED,
                                RedirectChange, RouteChange, StateChanges)
from edge.state_feed import StateFeed
from edge.state_reports import EDGE_NODES, EDGE_VISIT_REPORTS, StateReports
from kit.vault import KeyVault
from store import Table

__all__ = ["EDGE_CERTS", "EDGE_NODES", "EDGE_REDIRECTS", "EDGE_ROUTES", "EDGE_STATE",
           "EDGE_VISIT_REPORTS", "FEED", "EdgeStateStore", "RedirectChange", "RouteChange"]


class EdgeStateStore:
    """The one object callers hold: each method is its part's (see the module docstring)."""

    def __init__(self, state: Table, routes: Table, certs: Table, nodes: Table,
                 vault: KeyVault, reports: Table, report_memory: float = 7 * 86400.0,
                 clock: Callable[[], float] = time.time,
                 redirects: Table | None = None) -> None:
        self.state = state
        self.routes = routes
        self.certs = certs
        self.nodes = nodes
        self.reports = reports
        self.redirects = redirects
        self._vault = vault
        self.changes = StateChanges(state, routes, certs, vault, redirects, clock)
        self.feed = StateFeed(self.changes, routes, certs, vault, redirects)
        self.node_reports = StateReports(nodes, reports, self.changes.meta, report_memory,
                                         clock)
        self.watch = self.changes.watch
        """Agents waiting for the next version (a long poll) wait here."""

    # --- changing the state (StateChanges) -------------------------------------------------

    def change(self, routes: dict[str, RouteChange], config: EdgeConfig | None = None,
               redirects: dict[str, RedirectChange] | None = None) -> bool:
        return self.changes.change(routes, config, redirects)

    def save(self, desired: DesiredState) -> bool:
        return self.changes.save(desired)

    def reconcile(self, routes: dict[str, str | tuple[str, str]],
                  pem_of: Callable[[str], str | None], config: EdgeConfig,
                  since: int | None = None) -> bool:
        return self.changes.reconcile(routes, pem_of, config, since)

    def reconcile_redirects(self, desired: dict[str, Redirect],
                            since: int | None = None) -> bool:
        return self.changes.reconcile_redirects(desired, since)

    def mark(self) -> int:
        return self.changes.mark()

    def due_redirects(self, now: float, limit: int = CHUNK) -> list[str]:
        return self.changes.due_redirects(now, limit)

    def force(self, version: str) -> bool:
        return self.changes.force(version)

    def reencrypt(self) -> int:
        return self.changes.reencrypt()

    def meta(self) -> dict[str, Any] | None:
        return self.changes.meta()

    def current_version(self) -> str | None:
        return self.changes.current_version()

    # --- what agents read (StateFeed) -----------------------------------------------------

    def changes_since(self, since: int, protocol: int = PROTOCOL) -> dict[str, Any] | None:
        return self.feed.changes_since(since, protocol)

    def load(self, protocol: int = PROTOCOL) -> dict[str, Any] | None:
        return self.feed.load(protocol)

    def current_form(self, have: str | None, protocol: int) -> str | None:
        return self.feed.current_form(have, protocol)

    def certificate(self, hostname: str, cert_sha256: str | None = None
                    ) -> dict[str, str] | None:
        return self.feed.certificate(hostname, cert_sha256)

    def certificates(self, wanted: list[tuple[str, str]]
                     ) -> tuple[list[dict[str, str]], list[tuple[str, str]]]:
        return self.feed.certificates(wanted)

    # --- nodes and their reports (StateReports) -------------------------------------------

    def first_report(self, report_id: str) -> bool:
        return self.node_reports.first_report(report_id)

    def report(self, node_id: str, applied: str | None, error: str | None,
               running: bool, shard: str | None = None, revision: int | None = None) -> None:
        self.node_reports.report(node_id, applied, error, running, shard, revision)

    def list_nodes(self) -> list[dict[str, Any]]:
        return self.node_reports.list_nodes()

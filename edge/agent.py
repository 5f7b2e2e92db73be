"""`edgectl agent`: beside each HAProxy node, pull the desired state, apply it, report back."""
from __future__ import annotations

import logging
import socket
import threading

import requests

from edge.node import EdgeNode
from edge.state import DesiredState

log = logging.getLogger(__name__)


class EdgeAgent:
    def __init__(self, node: EdgeNode, control_url: str, token: str,
                 node_id: str | None = None, session: requests.Session | None = None) -> None:
        self.node = node
        self._url = control_url.rstrip("/")
        self._session = session or requests.Session()
        self._session.headers["Authorization"] = f"Bearer {token}"
        self.node_id = node_id or socket.gethostname()

    def sync(self) -> bool:
        """One round: fetch, apply if changed, report. True if something new was applied."""
        params = {"have": self.node.applied_version} if self.node.haproxy.running else {}
        response = self._session.get(f"{self._url}/api/v1/edge/state", params=params, timeout=30)
        if response.status_code in (304, 404):
            self.node.start()
            self._report()
            return False
        response.raise_for_status()
        try:
            changed = self.node.apply(DesiredState.from_json(response.json()))
        finally:
            self._report()
        return changed

    def _report(self) -> None:
        self._session.post(f"{self._url}/api/v1/edge/nodes/{self.node_id}", timeout=10, json={
            "applied_version": self.node.applied_version, "error": self.node.last_error})

    def run(self, interval: float, stop: threading.Event) -> None:
        self.node.start()
        while not stop.is_set():
            try:
                self.sync()
            except Exception as exc:  # keep serving the last good state whatever happens
                log.warning("edge sync failed: %s", exc)
            stop.wait(interval)

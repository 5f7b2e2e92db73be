"""The control service's side of the edge: the desired state agents pull, and their reports."""
from __future__ import annotations

import json
import re
import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from certs.keys import KeyVault
from control.auth import require_token
from edge.state import DesiredState
from store import Table, TableSpec

EDGE_STATE = TableSpec("edge_state", key="name")
EDGE_NODES = TableSpec("edge_nodes", key="node_id")
_NODE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class EdgeStateStore:
    """The desired state, encrypted at rest (it holds every route's private key)."""

    def __init__(self, state: Table, nodes: Table, vault: KeyVault) -> None:
        self.state = state
        self.nodes = nodes
        self._vault = vault

    def save(self, desired: DesiredState) -> bool:
        """Store ``desired`` if it differs from what is stored; True if it changed."""
        current = self.state.get("desired")
        if current is not None and current["edge_version"] == desired.version:
            return False
        doc = json.dumps(desired.to_json()).encode()
        self.state.put({"name": "desired", "edge_version": desired.version,
                        "doc_enc": self._vault.encrypt(doc)})
        return True

    def load(self) -> dict[str, Any] | None:
        current = self.state.get("desired")
        return None if current is None else dict(json.loads(self._vault.decrypt(current["doc_enc"])))

    def report(self, node_id: str, applied: str | None, error: str | None) -> None:
        self.nodes.put({"node_id": node_id, "applied_version": applied, "error": error,
                        "reported_at": time.time()})

    def list_nodes(self) -> list[dict[str, Any]]:
        return self.nodes.scan(limit=1000).items


bp = Blueprint("edge_api", __name__, url_prefix="/api/v1/edge")


def _store() -> EdgeStateStore:
    store: EdgeStateStore = current_app.extensions["edge.state"]
    return store


@bp.get("/state")
@require_token
def desired_state() -> Response | tuple[Response, int]:
    doc = _store().load()
    if doc is None:
        return jsonify(error="no edge state has been published yet"), 404
    if request.args.get("have") == doc["version"]:
        return Response(status=304)
    return jsonify(doc)


@bp.post("/nodes/<node_id>")
@require_token
def report(node_id: str) -> tuple[Response, int]:
    if not _NODE_ID.fullmatch(node_id):
        return jsonify(error="node id must be 1-64 letters, digits, '.', '_' or '-'"), 400
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return jsonify(error="a JSON object is required"), 400
    applied, error = body.get("applied_version"), body.get("error")
    if not all(v is None or (isinstance(v, str) and len(v) < 4000) for v in (applied, error)):
        return jsonify(error="applied_version and error must be short strings"), 400
    _store().report(node_id, applied, error)
    return jsonify(ok=True), 200


@bp.get("/nodes")
@require_token
def nodes() -> Response:
    desired = _store().load()
    version = desired["version"] if desired else None
    return jsonify(nodes=[{**n, "in_sync": n.get("applied_version") == version}
                          for n in _store().list_nodes()], desired_version=version)

"""The control service's side of the edge: the desired state agents pull, the certificates
they download, and their reports (storage in ``edge/state_store.py``)."""
from __future__ import annotations

import dataclasses
import re
from typing import Callable

from flask import Blueprint, Response, jsonify, request

from edge.state_store import EdgeStateStore
from kit.auth import require_edge_token, require_platform_token
from kit.web import use

_REPORT_ID = re.compile(r"[0-9a-f]{32}")
_NODE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_VISIT_KEY = re.compile(r"[a-z0-9.*-]{1,253}/[A-Za-z0-9_-]{1,64}")
MAX_VISIT_KEYS = 5000
_VERSION = re.compile(r"[0-9a-f]{16}")
MAX_WAIT = 30.0


@dataclasses.dataclass(frozen=True)
class VisitSink:
    """Where the visits HAProxy counted for hot links go: ``add({"host/slug": n})`` returns
    how many were added (the short-link service keeps the counts; wired in ``control/``)."""

    add: Callable[[dict[str, int]], int]


bp = Blueprint("edge_api", __name__, url_prefix="/api/v1/edge")


def _store() -> EdgeStateStore:
    return use(EdgeStateStore)


@bp.get("/state")
@require_edge_token
def desired_state() -> Response | tuple[Response, int]:
    """``have``: the version the node serves (304 while unchanged); ``wait``: seconds to hold
    the request until the version moves (a long poll, at most 30); ``since``: the revision the
    agent holds, for a delta of the routes changed after it (else, or when too old, a full
    snapshot)."""
    have = request.args.get("have")
    try:
        wait = min(max(float(request.args.get("wait", "0")), 0.0), MAX_WAIT)
        since = int(request.args["since"]) if "since" in request.args else None
    except ValueError:
        return jsonify(error="wait is a number of seconds and since a revision number"), 400
    store = _store()
    if have and wait:
        store.watch.wait(have, wait)
    version = store.current_version()
    if version is None:
        return jsonify(error="no edge state has been published yet"), 404
    if have == version:
        return Response(status=304)
    doc = (store.changes_since(since) if since is not None else None) or store.load()
    return jsonify(doc)


@bp.get("/certs/<hostname>")
@require_edge_token
def certificate(hostname: str) -> Response | tuple[Response, int]:
    cert = _store().certificate(hostname)
    if cert is None:
        return jsonify(error=f"no certificate for {hostname}"), 404
    response = jsonify(cert)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/nodes/<node_id>")
@require_edge_token
def report(node_id: str) -> tuple[Response, int]:
    if not _NODE_ID.fullmatch(node_id):
        return jsonify(error="node id must be 1-64 letters, digits, '.', '_' or '-'"), 400
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return jsonify(error="a JSON object is required"), 400
    applied, error = body.get("applied_version"), body.get("error")
    running = body.get("haproxy_running", False)
    if not all(v is None or (isinstance(v, str) and len(v) < 4000) for v in (applied, error)):
        return jsonify(error="applied_version and error must be short strings"), 400
    if not isinstance(running, bool):
        return jsonify(error="haproxy_running must be true or false"), 400
    _store().report(node_id, applied, error, running)
    return jsonify(ok=True), 200


@bp.post("/visits")
@require_edge_token
def visits() -> tuple[Response, int]:
    """Visits of hot links HAProxy answered by itself, ``{"report_id", "visits": {"host/slug":
    n}}``; handed to the sink the app registered (the short-link service adds them to its own
    counts) once per report id. The id is recorded first: a crash in between loses that report
    rather than counting it twice."""
    body = request.get_json(silent=True)
    report_id = body.get("report_id") if isinstance(body, dict) else None
    if not isinstance(report_id, str) or not _REPORT_ID.fullmatch(report_id):
        return jsonify(error="send a report_id of 32 hex digits with the visits"), 400
    counts = body.get("visits") if isinstance(body, dict) else None
    if not isinstance(counts, dict) or len(counts) > MAX_VISIT_KEYS or not all(
            isinstance(k, str) and _VISIT_KEY.fullmatch(k) and type(v) is int
            and 0 < v < 2**31 for k, v in counts.items()):
        return jsonify(error=f"send {{\"visits\": {{\"host/slug\": count}}}} with at most "
                             f"{MAX_VISIT_KEYS} positive counts"), 400
    if not _store().first_report(report_id):
        return jsonify(added=0, duplicate=True), 200
    added = use(VisitSink).add(counts)
    return jsonify(added=added), 200


@bp.get("/nodes")
@require_platform_token
def nodes() -> Response:
    meta = _store().meta()
    return jsonify(nodes=_store().list_nodes(),
                   desired_version=meta["edge_version"] if meta else None)


@bp.post("/force")
@require_platform_token
def force() -> tuple[Response, int]:
    body = request.get_json(silent=True)
    version = body.get("version") if isinstance(body, dict) else None
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        return jsonify(error="send {\"version\": <the desired version to force>}"), 400
    if not _store().force(version):
        return jsonify(error=f"{version} is not the desired version any more"), 409
    return jsonify(forced=version), 200

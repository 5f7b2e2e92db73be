"""The control service's side of the edge: the desired state agents pull, and their reports.

Storage is one item per route (publication and certificate fingerprint), one item per
certificate (PEM with its key, encrypted), and one small ``desired`` item carrying the version,
so no item grows with the number of domains (DynamoDB caps items at 400 KB).
"""
from __future__ import annotations

import dataclasses
import re
import threading
import time
from typing import Any, Callable

from flask import Blueprint, Response, jsonify, request

from edge.state import DesiredState, Redirect, RouteRef, version_of
from kit.auth import require_edge_token, require_platform_token
from kit.vault import KeyVault
from kit.web import use
from store import ABSENT, ConflictError, Table, TableSpec, all_items, rewrite_field

EDGE_STATE = TableSpec("edge_state", key="name")
EDGE_ROUTES = TableSpec("edge_routes", key="hostname")
EDGE_CERTS = TableSpec("edge_certs", key="hostname")
EDGE_NODES = TableSpec("edge_nodes", key="node_id")
EDGE_REDIRECTS = TableSpec("edge_redirects", key="key")
EDGE_VISIT_REPORTS = TableSpec("edge_visit_reports", key="report_id")
"""Report ids already counted: an agent that resends a report after a lost answer counts once."""
REPORT_MEMORY_SECONDS = 7 * 86400.0
_REPORT_ID = re.compile(r"[0-9a-f]{32}")
_NODE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_VISIT_KEY = re.compile(r"[a-z0-9.*-]{1,253}/[A-Za-z0-9_-]{1,64}")
MAX_VISIT_KEYS = 5000
_VERSION = re.compile(r"[0-9a-f]{16}")


@dataclasses.dataclass(frozen=True)
class VisitSink:
    """Where the visits HAProxy counted for hot links go: ``add({"host/slug": n})`` returns
    how many were added (the short-link service keeps the counts; wired in ``control/``)."""

    add: Callable[[dict[str, int]], int]


class EdgeStateStore:
    def __init__(self, state: Table, routes: Table, certs: Table, nodes: Table,
                 vault: KeyVault, redirects: Table, reports: Table) -> None:
        self.state = state
        self.reports = reports
        self.routes = routes
        self.redirects = redirects
        self.certs = certs
        self.nodes = nodes
        self._vault = vault
        self._cache: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def _all(self, table: Table) -> list[dict[str, Any]]:
        return all_items(table)

    def reencrypt(self) -> int:
        """Re-encrypt every stored certificate key under the newest encryption key."""
        return rewrite_field(self.certs, "pem_enc", self._vault.rotate)

    def save(self, desired: DesiredState) -> bool:
        """Make the stored state ``desired``, writing only what changed; True if anything did."""
        meta = self.state.get("desired")
        if meta is not None and meta["edge_version"] == desired.version:
            return False
        stored = {item["hostname"]: item for item in self._all(self.routes)}
        for route in desired.routes:
            ref = route.ref
            old = stored.pop(route.hostname, None)
            if old is None or old["cert_sha256"] != ref.cert_sha256:
                self.certs.put({"hostname": route.hostname, "cert_sha256": ref.cert_sha256,
                                "pem_enc": self._vault.encrypt(route.pem.encode())})
            if old is None or (old["publication_id"], old["cert_sha256"]) != \
                    (ref.publication_id, ref.cert_sha256):
                self.routes.put({"hostname": route.hostname,
                                 "publication_id": ref.publication_id,
                                 "cert_sha256": ref.cert_sha256})
        for hostname in stored:
            self.routes.delete(hostname)
            self.certs.delete(hostname)
        self._save_redirects(desired)
        forced = meta.get("forced_version") if meta else None
        # Conditional: a replica that published meanwhile wins; the caller republishes from
        # fresh data (ConflictError), so a stale route list cannot silently stand.
        self.state.put({"name": "desired", "edge_version": desired.version,
                        "app_servers": list(desired.app_servers),
                        "control_servers": list(desired.control_servers),
                        "sso_keys": list(desired.sso_keys),
                        "short_domains": sorted(desired.short_domains),
                        "shortlink_servers": list(desired.shortlink_servers),
                        "published_at": time.time(), "forced_version": forced},
                       expected_version=meta["version"] if meta else ABSENT)
        return True

    def _save_redirects(self, desired: DesiredState) -> None:
        stored = {item["key"]: item for item in self._all(self.redirects)}
        for redirect in desired.redirects:
            old = stored.pop(redirect.key, None)
            if old is None or (old["code"], old["target"]) != (redirect.code, redirect.target):
                self.redirects.put({"key": redirect.key, **dataclasses.asdict(redirect)})
        for key in stored:
            self.redirects.delete(key)

    def first_report(self, report_id: str) -> bool:
        """True the first time a visit report id is seen; it is remembered for a week."""
        try:
            self.reports.put({"report_id": report_id,
                              "expires_at": time.time() + REPORT_MEMORY_SECONDS},
                             expected_version=ABSENT)
            return True
        except ConflictError:
            return False

    def meta(self) -> dict[str, Any] | None:
        return self.state.get("desired")

    def load(self) -> dict[str, Any] | None:
        """The wire form (no keys), rebuilt from the route items only when the version moved."""
        meta = self.meta()
        if meta is None:
            return None
        with self._lock:
            if self._cache is None or self._cache["version"] != meta["edge_version"]:
                refs = [RouteRef(i["hostname"], i["publication_id"], i["cert_sha256"])
                        for i in self._all(self.routes)]
                servers = tuple(meta["app_servers"]), tuple(meta["control_servers"])
                redirects = tuple(sorted((Redirect(i["host"], i["slug"], i["code"], i["target"])
                                          for i in self._all(self.redirects)),
                                         key=lambda r: r.key))
                sso_keys = tuple(meta.get("sso_keys") or ())
                short = (tuple(meta.get("short_domains") or ()),
                         tuple(meta.get("shortlink_servers") or ()))
                summary = {"version": version_of(refs, *servers, redirects, sso_keys, *short),
                           "routes": [vars(r) for r in sorted(refs, key=lambda r: r.hostname)],
                           "app_servers": list(servers[0]),
                           "control_servers": list(servers[1]),
                           "redirects": [dataclasses.asdict(r) for r in redirects],
                           "sso_keys": list(sso_keys),
                           "short_domains": list(short[0]),
                           "shortlink_servers": list(short[1])}
                if summary["version"] != meta["edge_version"]:
                    return summary  # caught mid-publish: do not cache, the next poll catches up
                self._cache = summary
            return {**self._cache, "force": meta.get("forced_version") == meta["edge_version"]}

    def certificate(self, hostname: str) -> dict[str, str] | None:
        item = self.certs.get(hostname)
        if item is None:
            return None
        return {"hostname": hostname, "cert_sha256": item["cert_sha256"],
                "pem": self._vault.decrypt(item["pem_enc"]).decode()}

    def force(self, version: str) -> bool:
        """Let nodes apply ``version`` even if its plan looks unsafe (an operator's decision)."""
        meta = self.meta()
        if meta is None or meta["edge_version"] != version:
            return False
        try:
            self.state.put({**meta, "forced_version": version}, expected_version=meta["version"])
        except ConflictError:
            return False
        return True

    def report(self, node_id: str, applied: str | None, error: str | None,
               running: bool) -> None:
        self.nodes.put({"node_id": node_id, "applied_version": applied, "error": error,
                        "haproxy_running": running, "reported_at": time.time()})

    def list_nodes(self) -> list[dict[str, Any]]:
        meta = self.meta()
        now = time.time()
        nodes = []
        for node in self._all(self.nodes):
            in_sync = meta is not None and node.get("applied_version") == meta["edge_version"]
            lag = 0.0 if in_sync or meta is None else now - meta["published_at"]
            nodes.append({**node, "in_sync": in_sync, "lag_seconds": round(lag, 3),
                          "last_seen_seconds": round(now - node["reported_at"], 3)})
        return nodes


bp = Blueprint("edge_api", __name__, url_prefix="/api/v1/edge")


def _store() -> EdgeStateStore:
    return use(EdgeStateStore)


@bp.get("/state")
@require_edge_token
def desired_state() -> Response | tuple[Response, int]:
    doc = _store().load()
    if doc is None:
        return jsonify(error="no edge state has been published yet"), 404
    if request.args.get("have") == doc["version"]:
        return Response(status=304)
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

"""The control service's side of the edge: the desired state agents pull, the certificates
they download, and their reports (storage in ``edge/state_store.py``)."""
from __future__ import annotations

import dataclasses
import gzip
import json
import re
from typing import Annotated, Any, Callable

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, ConfigDict, Field

from edge import protocol as edge_protocol
from edge import router_feed
from edge.router_feed import ROUTER
from edge.sharded_state import ShardedState
from edge.shards import DEFAULT_SHARD, SHARD_NAME
from edge.state_store import EdgeStateStore
from edge.watch import VersionWatch
from kit.api import QueryModel, RequestModel, operation
from kit.auth import require_edge_token, require_platform_token
from kit.web import api_error, use

_NODE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
VISIT_KEY = r"^[a-z0-9.*-]{1,253}/[A-Za-z0-9_-]{1,64}$"
MAX_VISIT_KEYS = 5000
MAX_WAIT = 30.0


class ShardQuery(QueryModel):
    shard: str = Field(DEFAULT_SHARD, pattern=SHARD_NAME.pattern,
                       description="The edge shard the node serves (docs/shards.md)")


class PollQuery(QueryModel):
    have: str | None = Field(None, max_length=64, description="The version the node serves "
                             "(304 while unchanged)")
    wait: float = Field(0.0, allow_inf_nan=False, description="Seconds to hold the request "
                        "until the version moves (a long poll; at most 30 are used)")
    since: int | None = Field(None, description="The revision the agent holds, for a delta")


class StateQuery(PollQuery, ShardQuery):
    pass


class CertificateQuery(ShardQuery):
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                               description="The fingerprint the route names (else its current)")


class WantedCertificate(RequestModel):
    hostname: str = Field(min_length=1, max_length=253, pattern=r"^(\*\.)?[a-z0-9.-]+$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="The fingerprint the route names")


class CertificateBatchRequest(RequestModel):
    """Certificates by hostname and fingerprint, in a batch format this service reads."""

    format: int = Field(ge=1, le=edge_protocol.CERT_BATCH,
                        description="The batch format the agent asks in (edge/protocol.py)")
    certs: list[WantedCertificate] = Field(min_length=1,
                                           max_length=edge_protocol.CERT_BATCH_MAX)


class NodeReport(RequestModel):
    applied_version: str | None = Field(None, max_length=3999)
    error: str | None = Field(None, max_length=3999)
    haproxy_running: bool = False
    applied_revision: int | None = Field(None, ge=0, lt=2**53)
    """A router's: the router map's revision it applied (a shard move drops a hostname from
    its old shard once every router is at least at the revision that switched it)."""


class VisitReport(RequestModel):
    """Visits of hot links HAProxy answered by itself, once per report id."""

    report_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    visits: dict[Annotated[str, Field(pattern=VISIT_KEY)],
                 Annotated[int, Field(gt=0, lt=2**31)]] = Field(max_length=MAX_VISIT_KEYS)


class ForcePlan(RequestModel):
    version: str = Field(pattern=r"^[0-9a-f]{16}$")


class EdgeState(BaseModel):
    """A full snapshot (``routes``) or, with ``delta``, the routes changed since a revision
    (``changes``; a removed one is ``{"hostname", "removed": true}``), plus the edge's config
    (server lists, short domains, SSO keys)."""

    model_config = ConfigDict(extra="allow")
    version: str
    revision: int
    force: bool
    routes: list[dict[str, Any]] | None = None
    delta: bool | None = None
    since: int | None = None
    changes: list[dict[str, Any]] | None = None


class RouterMap(BaseModel):
    """Which shard holds each hostname off the default shard (null: the entry is gone), all
    of them or, with ``delta``, those changed since a revision; and where each shard's nodes
    are. A hostname without an entry goes to ``default_shard``."""

    format: int = Field(description="The form of this answer: the one the agent's "
                        "Router-Format header names (edge/router_feed.py)")
    version: str
    revision: int
    delta: bool
    hosts: dict[str, str | None]
    shards: dict[str, list[dict[str, Any]]]
    default_shard: str


class EdgeCertificate(BaseModel):
    hostname: str
    cert_sha256: str
    pem: str = Field(description="Chain and private key, PEM")


class CertificateBatch(BaseModel):
    format: int
    certs: list[EdgeCertificate]
    missing: list[WantedCertificate] = Field(description="Asked for and not stored (any more)")


class Accepted(BaseModel):
    ok: bool


class VisitsAdded(BaseModel):
    added: int
    duplicate: bool | None = None


class EdgeNodes(BaseModel):
    nodes: list[dict[str, Any]]
    desired_version: str | None


class Forced(BaseModel):
    forced: str


@dataclasses.dataclass(frozen=True)
class VisitSink:
    """Where the visits HAProxy counted for hot links go: ``add({"host/slug": n})`` returns
    how many were added (the short-link service keeps the counts; wired in ``control/``)."""

    add: Callable[[dict[str, int]], int]


bp = Blueprint("edge_api", __name__, url_prefix="/api/v1/edge")


def _store(shard: str = DEFAULT_SHARD) -> EdgeStateStore:
    return use(ShardedState).store(shard)


def _unknown(shard: str) -> tuple[Response, int] | None:
    """A 404 for a shard the edge does not have (a node configured for another edge)."""
    if use(ShardedState).known(shard):
        return None
    return api_error(f"this edge has no shard named {shard}", 404, field="shard")


def _held(watch: VersionWatch, have: str, wait: float) -> tuple[Response, int] | None:
    """Hold a long poll until the version moves from ``have``; a 503 while the replica
    stops."""
    if watch.draining:  # this replica stops: wait on another one
        refused, status = api_error("this control replica is stopping; ask another", 503)
        refused.headers["Retry-After"] = "1"
        return refused, status
    watch.wait(have, wait)
    return None


@bp.get("/state")
@require_edge_token
@operation(summary="The desired edge state an agent pulls", auth="edge", query=StateQuery,
           responses={200: EdgeState, 304: None, 404: None, 426: None})
def desired_state(query: StateQuery) -> Response | tuple[Response, int]:
    """A delta of the routes changed after ``since`` when the store still has them, else a
    full snapshot, in the form of the agent's ``Edge-Protocol`` (edge/protocol.py); 404 until
    a state is published. While the replica stops, a long poll is answered at once and a new
    one gets 503."""
    try:
        protocol = edge_protocol.parse(request.headers.get(edge_protocol.HEADER))
    except edge_protocol.ProtocolRefused as exc:
        return api_error(str(exc), exc.status, "upgrade_required" if exc.status == 426 else None)
    wait = min(max(query.wait, 0.0), MAX_WAIT)
    if (unknown := _unknown(query.shard)) is not None:
        return unknown
    store = _store(query.shard)
    have = store.current_form(query.have, protocol)
    if have and wait and (refused := _held(store.watch, have, wait)) is not None:
        return refused
    version = store.current_version()
    if version is None:
        return api_error("no edge state has been published yet", 404)
    if have == version:
        return Response(status=304)
    doc = (store.changes_since(query.since, protocol) if query.since is not None else None) \
        or store.load(protocol)
    if doc is None:  # removed between the version read and this one
        return api_error("no edge state has been published yet", 404)
    return jsonify({**doc, edge_protocol.CERT_BATCH_KEY: edge_protocol.batch_offer()})


@bp.get("/router")
@require_edge_token
@operation(summary="Which shard holds each hostname, for router nodes", auth="edge",
           query=PollQuery, responses={200: RouterMap, 304: None, 426: None})
def router_map(query: PollQuery) -> Response | tuple[Response, int]:
    """The router's map as a delta since ``since`` when the feed still has it, else whole
    (edge/router_feed.py); 304 while ``have`` is the version, after a long poll of ``wait``
    seconds. With no shard configured, the map is empty and every name goes to the default
    shard. Answered in the format the agent's ``Router-Format`` names (edge/router_feed.py)."""
    try:
        form = router_feed.parse_format(request.headers.get(router_feed.FORMAT_HEADER))
    except edge_protocol.ProtocolRefused as exc:
        return api_error(str(exc), exc.status, "upgrade_required" if exc.status == 426 else None)
    feed = use(ShardedState).router
    wait = min(max(query.wait, 0.0), MAX_WAIT)
    underlying, version = feed.versions()
    # A router holding the version, from before a compaction (a restore's), takes it again at
    # the revision it has now, which its reports then name (a shard move waits for them).
    held = query.have == version and not (query.since is not None
                                          and query.since < feed.compacted())
    if held and wait:
        if (refused := _held(feed.watch, underlying or "", wait)) is not None:
            return refused
        underlying, version = feed.versions()
    if held and query.have == version:
        return Response(status=304)
    return jsonify(feed.answer(query.since, form))


@bp.get("/certs/<hostname>")
@require_edge_token
@operation(summary="A certificate with its private key", auth="edge", query=CertificateQuery,
           responses={200: EdgeCertificate, 404: None})
def certificate(hostname: str, query: CertificateQuery) -> Response | tuple[Response, int]:
    if (unknown := _unknown(query.shard)) is not None:
        return unknown
    cert = _store(query.shard).certificate(hostname, query.sha256)
    if cert is None:
        return api_error(f"no certificate for {hostname}", 404)
    response = jsonify(cert)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/certs")
@require_edge_token
@operation(summary="Many certificates with their private keys, in one answer", auth="edge",
           body=CertificateBatchRequest, query=ShardQuery,
           responses={200: CertificateBatch, 404: None})
def certificates(body: CertificateBatchRequest,
                 query: ShardQuery) -> Response | tuple[Response, int]:
    """What a joining node downloads: up to ``CERT_BATCH_MAX`` certificates per request
    (edge/protocol.py), answered as ``GET /certs/<hostname>?sha256=`` answers each but read
    in batches from the store (one request per hundred on DynamoDB), gzip'd when the agent
    accepts it. One not stored is listed under ``missing`` rather than failing the batch."""
    if (unknown := _unknown(query.shard)) is not None:
        return unknown
    found, missing = _store(query.shard).certificates(
        [(wanted.hostname, wanted.sha256) for wanted in body.certs])
    data = json.dumps({"format": edge_protocol.CERT_BATCH, "certs": found,
                       "missing": [{"hostname": host, "sha256": sha} for host, sha in missing]},
                      separators=(",", ":")).encode()
    response = Response(data, mimetype="application/json")
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        response.set_data(gzip.compress(data, compresslevel=1))
        response.headers["Content-Encoding"] = "gzip"
    response.headers["Vary"] = "Accept-Encoding"
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/nodes/<node_id>")
@require_edge_token
@operation(summary="An agent reports what its node serves", auth="edge", body=NodeReport,
           query=ShardQuery, responses={200: Accepted, 404: None})
def report(node_id: str, body: NodeReport, query: ShardQuery) -> tuple[Response, int]:
    if not _NODE_ID.fullmatch(node_id):
        return api_error("node id must be 1-64 letters, digits, '.', '_' or '-'", 400,
                         field="node_id")
    if (unknown := _unknown(query.shard)) is not None:
        return unknown
    _store(query.shard).report(node_id, body.applied_version, body.error,
                               body.haproxy_running,
                               shard=None if query.shard == DEFAULT_SHARD else query.shard)
    return jsonify(ok=True), 200


@bp.post("/router/nodes/<node_id>")
@require_edge_token
@operation(summary="A router agent reports the router version it serves", auth="edge",
           body=NodeReport, responses={200: Accepted})
def router_report(node_id: str, body: NodeReport) -> tuple[Response, int]:
    """Kept in the router map's namespace, apart from every shard's nodes: a router serves
    the router feed's version, never a shard's, so it must not count as a shard's node."""
    if not _NODE_ID.fullmatch(node_id):
        return api_error("node id must be 1-64 letters, digits, '.', '_' or '-'", 400,
                         field="node_id")
    use(ShardedState).store(ROUTER).report(node_id, body.applied_version, body.error,
                                           body.haproxy_running, shard=ROUTER,
                                           revision=body.applied_revision)
    return jsonify(ok=True), 200


@bp.post("/visits")
@require_edge_token
@operation(summary="Visits HAProxy counted for hot links", auth="edge", body=VisitReport,
           responses={200: VisitsAdded})
def visits(body: VisitReport) -> tuple[Response, int]:
    """``{"report_id", "visits": {"host/slug": n}}``, handed to the sink the app registered
    (the short-link service adds them to its own counts) once per report id. The id is
    recorded first: a crash in between loses that report rather than counting it twice."""
    if not _store().first_report(body.report_id):
        return jsonify(added=0, duplicate=True), 200
    added = use(VisitSink).add(body.visits)
    return jsonify(added=added), 200


@bp.get("/nodes")
@require_platform_token
@operation(summary="The edge nodes and the version each serves", auth="platform",
           responses={200: EdgeNodes})
def nodes() -> Response:
    """Every shard's nodes (each named with its shard, and in sync with its shard's version,
    once a shard is configured), then the routers (in sync with the router feed's version);
    ``desired_version`` is the default shard's."""
    shards = use(ShardedState)
    meta = _store().meta()
    listed = _store().list_nodes() if shards.shard_set().names == [DEFAULT_SHARD] \
        else shards.list_nodes()
    version = shards.router.versions()[1]
    routers = [{**node, "role": "router", "in_sync": node.get("applied_version") == version,
                "lag_seconds": 0.0 if node.get("applied_version") == version
                else node["lag_seconds"]} for node in shards.store(ROUTER).list_nodes()]
    return jsonify(nodes=listed + routers,
                   desired_version=meta["edge_version"] if meta else None)


@bp.post("/force")
@require_platform_token
@operation(summary="Let nodes apply the desired version even if its plan looks unsafe",
           auth="platform", body=ForcePlan, query=ShardQuery,
           responses={200: Forced, 404: None, 409: None})
def force(body: ForcePlan, query: ShardQuery) -> tuple[Response, int]:
    """In the shard named (the default one if none is)."""
    if (unknown := _unknown(query.shard)) is not None:
        return unknown
    if not _store(query.shard).force(body.version):
        return api_error(f"{body.version} is not the desired version any more", 409)
    return jsonify(forced=body.version), 200

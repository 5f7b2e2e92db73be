"""The edge shards for the operator (``edgectl shards``): list them with their nodes and the
pinned hostnames, add or replace a shard, remove one, pin a hostname to a shard and unpin it;
force the routers to take a version their safety check refuses.
Behind the platform's token. Each change is one compare-and-set of the registry
(edge/shard_registry.py); one that names the ``revision`` it read is refused if another change
landed first, so an operator never overwrites a change they did not see."""
from __future__ import annotations

from flask import Blueprint, Response, abort, jsonify
from pydantic import BaseModel, Field

from admin.web import admin
from dnsops.errors import InvalidHostname
from dnsops.hostnames import normalize_hostname
from edge.shard_registry import MAX_NODES, ShardRefused, ShardRegistry
from edge.shards import ShardNode, ShardSet
from kit.api import RequestModel, operation
from kit.auth import require_platform_token
from kit.web import api_error

bp = Blueprint("shards_api", __name__, url_prefix="/api/v1/ops")
Answer = Response | tuple[Response, int]


class Node(RequestModel):
    host: str = Field(min_length=1, max_length=253, examples=["10.0.1.5"],
                      description="An IP address or a hostname the routers reach the node at")
    https_port: int = Field(ge=1, le=65535, examples=[8443],
                            description="Its TLS bind that accepts the PROXY protocol (v2)")
    http_port: int = Field(ge=1, le=65535, examples=[8080],
                           description="Its plain HTTP bind that accepts the PROXY protocol")


class NodeView(BaseModel):
    host: str
    https_port: int
    http_port: int


class PutShard(RequestModel):
    nodes: list[Node] = Field(min_length=1, max_length=MAX_NODES)
    revision: int | None = Field(None, ge=0, description="The registry revision this change "
                                 "is based on: refused (409) if another change landed since")


class PinHostname(RequestModel):
    shard: str = Field(min_length=1, max_length=64, examples=["eu-1"])
    revision: int | None = Field(None, ge=0, description="As for a shard")


class ShardView(BaseModel):
    name: str
    nodes: list[NodeView]
    pinned: int = Field(description="Hostnames pinned to this shard")
    draining: bool = Field(description="Removed: its hostnames move off, then it goes")
    routes: int | None = Field(description="Hostnames it serves (a kept count; null until a "
                               "reconciliation counted a store from an earlier release)")
    moving_in: int = Field(description="Moves in flight to this shard")
    moving_out: int = Field(description="Moves in flight from this shard")


class ForceRouters(RequestModel):
    version: str = Field(min_length=1, max_length=128, description="The router version to "
                         "force: the one the routers are offered now (a 409 names it)")


class ForcedRouters(BaseModel):
    forced: str


class Override(BaseModel):
    hostname: str
    shard: str


class Shards(BaseModel):
    """The configured shards (none: the one default shard, no router) and the pins."""

    revision: int = Field(description="Moves with every change; pass it back to refuse "
                          "overwriting a change you did not see")
    shards: list[ShardView]
    overrides: list[Override]


def registry() -> ShardRegistry:
    shards = admin().services.shards
    if shards is None:
        abort(503)
    return shards


def view(revision: int, shard_set: ShardSet) -> dict[str, object]:
    """The registry with each shard's size and moves (a read of each shard's version item and
    one of the moves' counts)."""
    pinned: dict[str, int] = {}
    for shard in shard_set.overrides.values():
        pinned[shard] = pinned.get(shard, 0) + 1
    services = admin().services
    moves = services.moves.in_flight() if services.moves is not None else {}
    return {"revision": revision,
            "shards": [{"name": name, "nodes": [node.to_json() for node in nodes],
                        "pinned": pinned.get(name, 0), "draining": name in shard_set.draining,
                        "routes": services.edge_shards.size(name),
                        "moving_in": moves.get(name, {}).get("to", 0),
                        "moving_out": moves.get(name, {}).get("from", 0)}
                       for name, nodes in sorted(shard_set.shards.items())],
            "overrides": [{"hostname": hostname, "shard": shard}
                          for hostname, shard in sorted(shard_set.overrides.items())]}


def refusal(exc: ShardRefused) -> tuple[Response, int]:
    return api_error(str(exc), exc.status, field=exc.field)


@bp.get("/shards")
@require_platform_token
@operation(summary="The edge shards, their nodes and the pinned hostnames", auth="platform",
           responses={200: Shards})
def list_shards() -> Response:
    return jsonify(view(*registry().current()))


@bp.put("/shards/<name>")
@require_platform_token
@operation(summary="Add a shard, or replace its nodes", auth="platform", body=PutShard,
           responses={200: Shards, 409: None})
def put_shard(name: str, body: PutShard) -> Answer:
    nodes = [ShardNode(n.host, n.https_port, n.http_port) for n in body.nodes]
    try:
        return jsonify(view(*registry().put_shard(name, nodes, body.revision)))
    except ShardRefused as exc:
        return refusal(exc)


@bp.delete("/shards/<name>")
@require_platform_token
@operation(summary="Remove a shard: it drains (its hostnames move off), then goes; refused "
           "while hostnames are pinned to it",
           auth="platform", responses={200: Shards, 404: None, 409: None})
def remove_shard(name: str) -> Answer:
    try:
        return jsonify(view(*registry().remove_shard(name)))
    except ShardRefused as exc:
        return refusal(exc)


def hostname_of(raw: str) -> str:
    try:
        return normalize_hostname(raw)
    except InvalidHostname as exc:
        raise ShardRefused(f"{raw[:64]!r} is not a hostname: {exc.reason}", "hostname") from None


@bp.put("/shard-overrides/<hostname>")
@require_platform_token
@operation(summary="Pin a hostname to a shard, whatever the hash says", auth="platform",
           body=PinHostname, responses={200: Shards, 404: None, 409: None})
def pin(hostname: str, body: PinHostname) -> Answer:
    try:
        return jsonify(view(*registry().pin(hostname_of(hostname), body.shard, body.revision)))
    except ShardRefused as exc:
        return refusal(exc)


@bp.delete("/shard-overrides/<hostname>")
@require_platform_token
@operation(summary="Unpin a hostname: the hash assigns it again", auth="platform",
           responses={200: Shards, 404: None, 409: None})
def unpin(hostname: str) -> Answer:
    try:
        return jsonify(view(*registry().unpin(hostname_of(hostname))))
    except ShardRefused as exc:
        return refusal(exc)


@bp.post("/router/force")
@require_platform_token
@operation(summary="Let the routers take the current router version even if it takes off "
           "most of their entries (their safety check refuses that unless forced)",
           auth="platform", body=ForceRouters, responses={200: ForcedRouters, 409: None})
def force_routers(body: ForceRouters) -> Answer:
    router = admin().services.edge_shards.router
    underlying, version = router.versions()
    if underlying is None:
        return api_error("the router map has no entry yet: a router has nothing to take off",
                         409, field="version")
    if not router.force(body.version):
        return api_error(f"{body.version} is not the router version any more (it is "
                         f"{version}): check what the routers refuse again", 409,
                         field="version")
    return jsonify(forced=body.version)

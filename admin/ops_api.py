"""The operator's read-only API (``edgectl status``, ``domains list``, ``certs list``): JSON
views behind the platform's token. Each answer comes from kept counts and ordered indexes, so
its cost follows the answer, never the size of the fleet (the edge nodes are a few items)."""
from __future__ import annotations

import datetime
from importlib import metadata
from typing import Any

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel, Field

from admin.web import admin
from domains.service import STATUSES, public_view
from kit.api import PageQuery, operation
from kit.auth import require_platform_token
from kit.web import api_error

bp = Blueprint("ops_api", __name__, url_prefix="/api/v1/ops")
DAY = 86400.0
EXPIRY_WINDOWS = {"expiring_7d": 7, "expiring_30d": 30}


class DomainCounts(BaseModel):
    by_status: dict[str, int]
    total: int
    failing: int = Field(description="Domains whose last step failed, whatever their status")


class CertificateCounts(BaseModel):
    expired: int
    expiring_7d: int
    expiring_30d: int
    next_expiry: str | None = Field(description="The soonest not-after of any certificate")


class EdgeSummary(BaseModel):
    desired_version: str | None
    nodes: int
    in_sync: int
    haproxy_running: int


class LinkTotals(BaseModel):
    links: int
    disabled: int
    visits: int


class Status(BaseModel):
    """The control service at a glance."""

    version: str
    storage_backend: str
    domains: DomainCounts
    certificates: CertificateCounts
    edge: EdgeSummary
    links: LinkTotals | None = Field(description="None where the store keeps no link totals")


class OpsDomains(PageQuery):
    status: str | None = Field(None, max_length=32, examples=["active"],
                               description="Only this status (an index query)")
    failing: bool = Field(False, description="Only domains whose last step failed, longest "
                          "failing first (no cursor)")


class OpsDomainPage(BaseModel):
    domains: list[dict[str, Any]]
    next_cursor: str | None


class OpsCertificates(PageQuery):
    within_days: float | None = Field(None, gt=0, le=3650, allow_inf_nan=False,
                                      description="Only those whose not-after is within this "
                                      "many days (expired ones too), soonest first")


class OpsCertificate(BaseModel):
    hostname: str
    names: list[str] | None
    not_after: str | None
    days_left: float | None
    issuer: str | None
    key_type: str | None = None


class OpsCertificatePage(BaseModel):
    certificates: list[OpsCertificate]
    next_cursor: str | None


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat(
        timespec="seconds")


def _version() -> str:
    try:
        return metadata.version("edge-router")
    except metadata.PackageNotFoundError:
        return "unknown"


@bp.get("/status")
@require_platform_token
@operation(summary="The control service at a glance: domains, certificates, edge, links",
           auth="platform", responses={200: Status})
def status() -> Response:
    """Kept counts (one read each), one ordered index query for the next 30 days' expiries,
    and the edge nodes' reports."""
    services = admin().services
    now = services.clock()
    by_status = services.domains.by_status()
    soon = [at for _, at in services.certificates.expiring(now + 30 * DAY)]
    next_expiry = soon[0] if soon else services.certificates.next_expiry()
    nodes = services.edge_state.list_nodes()
    meta = services.edge_state.meta()
    totals = services.links.totals.totals() if services.links.totals is not None else None
    return jsonify(
        version=_version(), storage_backend=services.settings.storage_backend,
        domains={"by_status": by_status, "total": sum(by_status.values()),
                 "failing": services.domains.failing()},
        certificates={"expired": sum(1 for at in soon if at < now),
                      **{name: sum(1 for at in soon if at < now + days * DAY)
                         for name, days in EXPIRY_WINDOWS.items()},
                      "next_expiry": _iso(next_expiry) if next_expiry is not None else None},
        edge={"desired_version": meta["edge_version"] if meta else None, "nodes": len(nodes),
              "in_sync": sum(1 for node in nodes if node["in_sync"]),
              "haproxy_running": sum(1 for node in nodes if node.get("haproxy_running"))},
        links=totals)


@bp.get("/domains")
@require_platform_token
@operation(summary="Domains of every publication: of one status, failing, or all, a page at "
           "a time", auth="platform", query=OpsDomains, responses={200: OpsDomainPage})
def domains(query: OpsDomains) -> Response | tuple[Response, int]:
    service = admin().services.domains
    if query.status is not None and query.status not in STATUSES:
        return api_error(f"status must be one of {', '.join(STATUSES)}", 400, field="status")
    if query.failing:
        found, cursor = service.longest_failing(query.limit), None
    else:
        try:
            page = service.browse(query.status, limit=query.limit, cursor=query.cursor)
        except ValueError:
            return api_error("cursor is not one this API gave out", 400, field="cursor")
        found, cursor = page.items, page.next_cursor
    return jsonify(domains=[public_view(domain) for domain in found], next_cursor=cursor)


@bp.get("/certificates")
@require_platform_token
@operation(summary="Stored certificates (never their keys): all, or those expiring soonest",
           auth="platform", query=OpsCertificates, responses={200: OpsCertificatePage})
def certificates(query: OpsCertificates) -> Response | tuple[Response, int]:
    """With ``within_days``, an ordered index query (no cursor: the soonest ``limit``)."""
    services = admin().services
    now = services.clock()
    if query.within_days is not None:
        found = [services.certificates.describe(hostname) for hostname, _ in
                 services.certificates.expiring(now + query.within_days * DAY, query.limit)]
        views, cursor = [view for view in found if view is not None], None
    else:
        try:
            page = services.certificates.browse(limit=query.limit, cursor=query.cursor)
        except ValueError:
            return api_error("cursor is not one this API gave out", 400, field="cursor")
        views, cursor = page.items, page.next_cursor
    return jsonify(certificates=[_certificate(view, now) for view in views], next_cursor=cursor)


def _certificate(view: dict[str, Any], now: float) -> dict[str, Any]:
    not_after = view.get("not_after")
    left = None
    if isinstance(not_after, str):
        left = round((datetime.datetime.fromisoformat(not_after).timestamp() - now) / DAY, 2)
    return {"hostname": view["hostname"], "names": view.get("names"), "not_after": not_after,
            "days_left": left, "issuer": view.get("issuer"), "key_type": view.get("key_type")}

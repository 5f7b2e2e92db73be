"""The publisher API of a takeover (domains/takeover.py, docs/takeover.md): ask for the TXT
record that proves you own a hostname's DNS, then move the hostname to your publication.

The hostname is held by another publication, so these calls never say which one: only whether
its claim is proven and when it expires."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel

from domains.errors import DomainError, DnsError
from domains.takeover import Takeovers
from kit.api import RequestModel, operation
from kit.auth import require_platform_or_publication
from kit.clock import iso
from kit.web import api_error, use
from publisher.api import Domain, PublicationId, _publication, _view
from publisher.call_limits import TooManyCalls, count_call, install, too_many

bp = Blueprint("takeover_api", __name__, url_prefix="/api/v1/domains")
bp.record_once(install)
bp.register_error_handler(TooManyCalls, too_many)


class TakeoverBody(RequestModel):
    """``publication_id``: required with the platform's token; with a publication's token it
    defaults to (and must be) its own."""

    publication_id: PublicationId = None


class TxtRecord(BaseModel):
    type: str
    name: str
    value: str


class Holder(BaseModel):
    """What may be said of the publication holding the hostname (never who it is)."""

    verified: bool
    claim_expires_at: str | None


class TakeoverRequest(BaseModel):
    hostname: str
    publication_id: str
    record: TxtRecord
    valid_until: str
    holder: Holder


@bp.errorhandler(DomainError)
@bp.errorhandler(DnsError)
def refused(exc: DomainError | DnsError) -> tuple[Response, int]:
    return api_error(str(exc), exc.status, getattr(exc, "code", None))


@bp.post("/<hostname>/takeover")
@require_platform_or_publication
@operation(summary="Ask for the TXT record that moves a domain held by another publication",
           auth="platform_or_publication", body=TakeoverBody,
           responses={200: TakeoverRequest, 403: None, 404: None, 409: None, 429: None})
def request_takeover(hostname: str, body: TakeoverBody) -> Response | tuple[Response, int]:
    """The same record until it expires; a new one once the domain changed hands. Counted in
    the publication's budget of DNS checks (429 with Retry-After past it)."""
    publication_id = _publication(body.publication_id)
    if not isinstance(publication_id, str):
        return publication_id
    count_call(publication_id)
    takeovers = use(Takeovers)
    request = takeovers.request(hostname, publication_id)
    return jsonify(_request_view(takeovers, request))


@bp.post("/<hostname>/takeover/verify")
@require_platform_or_publication
@operation(summary="Check the takeover TXT record and move the domain to this publication",
           auth="platform_or_publication", body=TakeoverBody,
           responses={200: Domain, 403: None, 404: None, 409: None, 410: None, 429: None})
def verify_takeover(hostname: str, body: TakeoverBody) -> Response | tuple[Response, int]:
    """Answers the domain, now this publication's and waiting for its DNS records (the
    ownership TXT holds the same token); 403 when the TXT record is not there; 429 (with
    Retry-After) past the publication's budget of DNS checks."""
    publication_id = _publication(body.publication_id)
    if not isinstance(publication_id, str):
        return publication_id
    count_call(publication_id)
    domain = use(Takeovers).take_over(hostname, publication_id, actor="api")
    return jsonify(_view(domain))


def _request_view(takeovers: Takeovers, request: dict[str, Any]) -> dict[str, Any]:
    holder = takeovers.holder_view(request["hostname"], request["publication_id"])
    return {"hostname": request["hostname"], "publication_id": request["publication_id"],
            "record": takeovers.record(request), "valid_until": iso(request["valid_until"]),
            "holder": {"verified": holder["verified"],
                       "claim_expires_at": holder["claim_expires_at"]}}

"""The publisher API: the platform's app servers connect, read and remove custom domains.

A publication's own token (``kit/tokens.py``) works here too, for that publication only:
its connects are for itself, and other publications' domains answer 404 as if absent."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel, BeforeValidator, Field, ValidationInfo
from pydantic_core import PydanticCustomError

from domains import dnsconfig
from domains.errors import DomainError, DomainNotFound
from domains.lifecycle import Lifecycle
from domains.service import DomainService, public_view
from kit import logs
from kit.api import PageQuery, RequestModel, operation
from kit.auth import require_platform_or_publication, scope
from kit.tokens import PUBLICATION_ID, PUBLICATION_ID_RULE
from kit.web import api_error, use
from store import ConflictError

bp = Blueprint("domains_api", __name__, url_prefix="/api/v1/domains")


def _hostname(value: Any, info: ValidationInfo) -> Any:
    """Our hostname rules (domains/hostnames.py), with this deployment's platform domains."""
    normalize = (info.context or {}).get("normalize")
    if normalize is None:
        return value
    try:
        return normalize(value)
    except DomainError as exc:
        raise PydanticCustomError("invalid_hostname", "{reason}", {"reason": str(exc)}) from None


def _publication_id(value: Any) -> Any:
    if value is not None and (not isinstance(value, str) or not PUBLICATION_ID.fullmatch(value)):
        raise PydanticCustomError("invalid_publication_id", "{reason}",
                                  {"reason": f"publication_id must be {PUBLICATION_ID_RULE}"})
    return value


Hostname = Annotated[str, BeforeValidator(_hostname),
                     Field(min_length=1, max_length=1024, examples=["news.example.org"])]
PublicationId = Annotated[str | None, BeforeValidator(_publication_id),
                          Field(json_schema_extra={"pattern": "^" + PUBLICATION_ID.pattern + "$"},
                                examples=["pub_1"])]


class ConnectDomain(RequestModel):
    """Connect a custom domain to a publication. ``publication_id``: required with the
    platform's token; with a publication's token it defaults to (and must be) its own."""

    hostname: Hostname
    publication_id: PublicationId = None


class ListDomains(PageQuery):
    publication_id: PublicationId = None


class DnsRecord(BaseModel):
    type: str
    name: str
    value: str


class Domain(BaseModel):
    """A custom domain as the API shows it (no secrets: the ownership token is in its TXT
    record, which the publisher creates anyway)."""

    hostname: str
    publication_id: str
    status: str = Field(examples=["pending_dns", "verified", "issuing", "awaiting_traffic",
                                  "active", "suspended"])
    dns_records: list[DnsRecord]
    created_at: str
    updated_at: str
    last_error: str | None
    validation_errors: list[dict[str, Any]] | None
    dns_seen: dict[str, Any] | None
    attempts: int | None
    next_attempt_at: str | None
    gave_up: bool | None
    automation: Any
    instructions: str | None = None


class DomainEvent(BaseModel):
    id: str
    hostname: str
    what: str
    actor: str
    why: str
    at: str


class DomainDetail(Domain):
    events: list[DomainEvent]


class DomainCheck(Domain):
    ok: bool
    seen: dict[str, dict[str, list[str]]]


class DnsConflict(BaseModel):
    type: str = Field(examples=["AAAA"])
    name: str
    value: str
    code: str = Field(examples=["stray_aaaa", "cname_mismatch", "a_mismatch",
                                "caa_forbids_issuer", "txt_mismatch"])
    message: str


class DomainConfig(BaseModel):
    """A domain's DNS as we see it now, for programs (domains/dnsconfig.py)."""

    hostname: str
    misconfigured: bool
    configured_by: Literal["CNAME", "A", "AAAA"] | None
    recommended: list[DnsRecord]
    conflicts: list[DnsConflict]
    missing: list[DnsRecord]
    problems: list[dict[str, str]]
    checked_at: str


class DomainPage(BaseModel):
    domains: list[Domain]
    next_cursor: str | None


class DomainRemoved(BaseModel):
    removed: str


def _service() -> DomainService:
    return use(DomainService)


def _rules() -> dict[str, Any]:
    return {"normalize": _service().normalize}


def _own(hostname: str) -> dict[str, Any]:
    """The domain, if the caller may see it (a publication's token: only its own)."""
    domain = _service().get(hostname)
    if scope() is not None and domain["publication_id"] != scope():
        raise DomainNotFound(domain["hostname"])
    logs.bind(hostname=domain["hostname"], publication_id=domain["publication_id"])
    return domain


def _publication(requested: str | None) -> str | tuple[Response, int]:
    """The publication a call is for: the token's own unless the platform names one."""
    publication_id = scope() if requested is None else requested
    if publication_id is None:
        return api_error(f"publication_id must be {PUBLICATION_ID_RULE}", 400, "missing",
                         field="publication_id")
    if scope() is not None and publication_id != scope():
        return api_error("a publication's token acts for that publication only", 403,
                         field="publication_id")
    logs.bind(publication_id=publication_id)
    return publication_id


def _view(domain: dict[str, Any]) -> dict[str, Any]:
    return public_view(domain, _service().cname_target)


@bp.errorhandler(DomainError)
def domain_error(exc: DomainError) -> tuple[Response, int]:
    code = {400: "invalid_hostname", 409: "hostname_taken", 429: "too_many_pending"}
    return api_error(str(exc), exc.status, code.get(exc.status))


@bp.errorhandler(ConflictError)
def conflict(exc: ConflictError) -> tuple[Response, int]:
    return api_error(f"{exc.key} changed while we worked on it; try again", 409)


MINE = {403: None, 409: None, 429: None}


@bp.post("")
@require_platform_or_publication
@operation(summary="Connect a custom domain", auth="platform_or_publication", body=ConnectDomain,
           context=_rules, responses={200: Domain, 201: Domain, **MINE})
def connect(body: ConnectDomain) -> tuple[Response, int]:
    """Answers 201 with the DNS records to create; 200 when the publication already has it."""
    publication_id = _publication(body.publication_id)
    if not isinstance(publication_id, str):
        return publication_id
    domain, created = _service().connect(body.hostname, publication_id)
    return jsonify(_view(domain)), 201 if created else 200


@bp.get("/<hostname>")
@require_platform_or_publication
@operation(summary="A domain, with its timeline", auth="platform_or_publication",
           responses={200: DomainDetail, 404: None})
def show(hostname: str) -> Response:
    domain = _own(hostname)
    return jsonify({**_view(domain), "events": _service().timeline(domain)})


@bp.get("")
@require_platform_or_publication
@operation(summary="A publication's domains, a page at a time", auth="platform_or_publication",
           query=ListDomains, responses={200: DomainPage, 403: None})
def list_domains(query: ListDomains) -> tuple[Response, int] | Response:
    publication_id = _publication(query.publication_id)
    if not isinstance(publication_id, str):
        return publication_id
    try:
        page = _service().list_for(publication_id, limit=query.limit, cursor=query.cursor)
    except ValueError:
        return api_error("cursor is not one this API gave out", 400, field="cursor")
    return jsonify(domains=[_view(d) for d in page.items], next_cursor=page.next_cursor)


@bp.post("/<hostname>/check")
@require_platform_or_publication
@operation(summary="Re-check a domain's DNS now", auth="platform_or_publication",
           responses={200: DomainCheck, 404: None, 409: None})
def check(hostname: str) -> Response:
    """Answers the domain and the records found on each server asked."""
    _own(hostname)
    domain, result = use(Lifecycle).check_now(hostname)
    return jsonify({**_view(domain), "ok": result.ok, "seen": result.seen})


@bp.get("/<hostname>/config")
@require_platform_or_publication
@operation(summary="A domain's DNS report: what routes it, what to create, what is in the way",
           auth="platform_or_publication", responses={200: DomainConfig, 404: None})
def config(hostname: str) -> Response:
    """Checks DNS now (the domain's schedule is not changed)."""
    domain = _own(hostname)
    return jsonify(dnsconfig.report(use(Lifecycle).checker, domain, dnsconfig.recommended(
        domain, _service().dcv_zone)))


@bp.delete("/<hostname>")
@require_platform_or_publication
@operation(summary="Remove a domain (route and certificate go, the certificate is revoked)",
           auth="platform_or_publication", responses={200: DomainRemoved, 404: None, 409: None})
def remove(hostname: str) -> Response:
    _own(hostname)
    domain = use(Lifecycle).remove(hostname)
    return jsonify(removed=domain["hostname"])

"""The publisher API: the platform's app servers connect, read and remove custom domains.

A publication's own token (``kit/tokens.py``) works here too, for that publication only:
its connects are for itself, and other publications' domains answer 404 as if absent."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel, BeforeValidator, Field, ValidationInfo
from pydantic_core import PydanticCustomError

from dnsops import dnsconfig
from domains import pairs
from domains.errors import PUBLISHER_ERRORS, DnsError, DomainError, DomainNotFound
from domains.lifecycle import Lifecycle
from domains.redirects import DomainOptions, InvalidOption
from domains.pairs import WithWww, pair_view
from domains.routing import EXTRA_FIELDS, extras_view
from domains.service import DomainService, public_view
from kit import logs
from kit.api import PageQuery, RequestModel, operation
from kit.auth import require_platform_or_publication, scope
from kit.settings import Settings
from kit.tokens import PUBLICATION_ID, PUBLICATION_ID_RULE
from kit.web import api_error, use
from publisher import auth
from publisher.call_limits import TooManyCalls, count_call, install, too_many
from store import ConflictError

bp = Blueprint("domains_api", __name__, url_prefix="/api/v1/domains")
bp.record_once(install)
bp.register_error_handler(TooManyCalls, too_many)


def _hostname(value: Any, info: ValidationInfo) -> Any:
    """Our hostname rules (dnsops/hostnames.py), with this deployment's platform domains."""
    normalize = (info.context or {}).get("normalize")
    if normalize is None:
        return value
    try:
        return normalize(value)
    except PUBLISHER_ERRORS as exc:
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


RedirectCode = Literal[301, 302, 307, 308]
Metadata = dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=256)]]


class DomainExtras(RequestModel):
    """What the edge does besides serving the publication (``domains/redirects.py``)."""

    redirect_to: Hostname | None = Field(None, description="Another active domain of the same "
                                         "publication: this one answers with a redirect there, "
                                         "path and query kept (one hop; no chains or loops)")
    redirect_status_code: RedirectCode | None = Field(None, description="301, 302, 307 or 308 "
                                                      "(default 308)")
    origin_pool: str | None = Field(None, max_length=32, description="One of the operator's "
                                    "origin_pools instead of the app fleet")
    metadata: Metadata | None = Field(None, description="Up to 8 pairs, sent to the app as "
                                      "X-Edge-Meta-<key> headers (keys: lowercase letters, "
                                      "digits, '-'; values: 1-128 characters, no spaces)")


class ConnectDomain(DomainExtras):
    """Connect a custom domain to a publication. ``publication_id``: required with the
    platform's token; with a publication's token it defaults to (and must be) its own."""

    hostname: Hostname
    publication_id: PublicationId = None
    with_www: WithWww | None = Field(None, description="For an apex (or its www. name): its "
                                     "companion redirects here (\"redirect\", the default), "
                                     "serves the same (\"serve\"), or is not connected "
                                     "(\"none\"); one action, two domains")


class UpdateDomain(DomainExtras):
    """Change a domain's extras; a field left out stays as it is, ``null`` clears it to its
    default (no redirect, 308, no origin pool, no metadata)."""


class ListDomains(PageQuery):
    publication_id: PublicationId = None


class DnsRecord(BaseModel):
    type: str
    name: str
    value: str


class DomainPair(BaseModel):
    """The other domain of a www/apex pair: created, served and removed with this one."""

    hostname: str
    with_www: str
    role: str = Field(examples=["primary", "companion"])
    status: str
    redirect_to: str | None
    dns_records: list[DnsRecord]


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
    redirect_to: str | None = None
    redirect_status_code: int | None = None
    origin_pool: str | None = None
    metadata: dict[str, str] = {}
    pair: DomainPair | None = None


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
    """A domain's DNS as we see it now, for programs (dnsops/dnsconfig.py)."""

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
    pair_removed: str | None = None


def _service() -> DomainService:
    return use(DomainService)


def _rules() -> dict[str, Any]:
    return {"normalize": _service().normalize}


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
    view = {**public_view(domain, _service().cname_target), **extras_view(domain),
            "pair": pair_view(_service(), domain)}
    if view["pair"] is not None and view.get("instructions"):
        other = view["pair"]
        does = f"redirects to {other['redirect_to']}" if other["redirect_to"] else \
            "serves the same publication"
        view["instructions"] += (f" Create the records of {other['hostname']} too (under "
                                 f"pair.dns_records): it {does}." if other["role"] == "companion"
                                 else f" It is the companion of {other['hostname']}, whose "
                                 "records are under pair.dns_records.")
    return view


def _options() -> DomainOptions:
    settings = use(Settings)
    return DomainOptions(_service(), settings.origin_pools, settings.metadata_keys)


def _extras(body: DomainExtras) -> dict[str, Any]:
    return {name: getattr(body, name) for name in EXTRA_FIELDS if name in body.model_fields_set}


@bp.errorhandler(DomainError)
@bp.errorhandler(DnsError)
def domain_error(exc: DomainError | DnsError) -> tuple[Response, int]:
    code = {400: "invalid_hostname", 409: "hostname_taken", 429: "too_many_pending"}
    return api_error(str(exc), exc.status, code.get(exc.status))


@bp.errorhandler(InvalidOption)
def invalid_option(exc: InvalidOption) -> tuple[Response, int]:
    return api_error(f"{exc.field}: {exc}", 400, exc.code, field=exc.field)


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
    extras = _options().checked(body.hostname, publication_id, _extras(body))
    with_www = body.with_www
    if with_www is None and body.hostname in {d.lower() for d in use(Settings).short_domains}:
        with_www = "none"  # a short domain's links live on that one name
    domain, created = pairs.connect(_service(), body.hostname, publication_id, with_www, extras)
    return jsonify(_view(domain)), 201 if created else 200


@bp.patch("/<hostname>")
@require_platform_or_publication
@operation(summary="Change a domain's redirect, origin pool or metadata",
           auth="platform_or_publication", body=UpdateDomain, context=_rules,
           responses={200: Domain, 404: None, 409: None})
def update(hostname: str, body: UpdateDomain) -> Response:
    """The edge follows at once when the domain is active (a map change, no reload)."""
    domain = _options().change(auth.api_domain(hostname), _extras(body))
    return jsonify(_view(domain))


@bp.get("/<hostname>")
@require_platform_or_publication
@operation(summary="A domain, with its timeline", auth="platform_or_publication",
           responses={200: DomainDetail, 404: None})
def show(hostname: str) -> Response:
    domain = auth.api_domain(hostname)
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
           responses={200: DomainCheck, 404: None, 409: None, 429: None})
def check(hostname: str) -> Response:
    """Answers the domain and the records found on each server asked; 429 (Retry-After) past
    the publication's budget of DNS checks a minute."""
    # The domain as the caller may see it: checked only while that claim holds the hostname.
    domain = auth.api_domain(hostname)
    count_call(str(domain["publication_id"]))
    domain, result = use(Lifecycle).check_now(domain)
    return jsonify({**_view(domain), "ok": result.ok, "seen": result.seen})


@bp.get("/<hostname>/config")
@require_platform_or_publication
@operation(summary="A domain's DNS report: what routes it, what to create, what is in the way",
           auth="platform_or_publication", responses={200: DomainConfig, 404: None, 429: None})
def config(hostname: str) -> Response:
    """Checks DNS now (the domain's schedule is not changed): counted like a check."""
    domain = auth.api_domain(hostname)
    count_call(str(domain["publication_id"]))
    return jsonify(dnsconfig.report(use(Lifecycle).checker, domain, dnsconfig.recommended(
        domain, _service().dcv_zone)))


@bp.delete("/<hostname>")
@require_platform_or_publication
@operation(summary="Remove a domain (route and certificate go, the certificate is revoked)",
           auth="platform_or_publication", responses={200: DomainRemoved, 404: None, 409: None})
def remove(hostname: str) -> Response | tuple[Response, int]:
    domain = auth.api_domain(hostname)
    partner = pairs.partner_of(_service(), domain)
    sources = _options().left_dangling(domain)
    if sources:  # removing it would leave them redirecting to nothing
        return api_error(f"{', '.join(sources)} redirect(s) to {domain['hostname']}: change or "
                         "remove them first", 409, "redirect_target")
    # What was allowed, unchanged since (it may have changed hands meanwhile): else 409.
    domain = use(Lifecycle).remove(domain)
    return jsonify(removed=domain["hostname"],
                   pair_removed=partner["hostname"] if partner is not None else None)

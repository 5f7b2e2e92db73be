"""The short-link API: create, read, list by owner, update, disable, delete, QR codes, visit
statistics (JSON or CSV).

The platform's token sees every link; a publication's token (``kit/tokens.py``) sees and
changes only its own links (others' are answered 404, as if absent) and creates links only for
itself, on short domains connected and verified for that publication."""
from __future__ import annotations

import csv
import datetime
import io
from typing import Annotated, Any, Literal

from flask import Blueprint, Response, jsonify
from pydantic import (AfterValidator, BaseModel, Field, PlainValidator, RootModel,
                      ValidationInfo, WithJsonSchema)
from pydantic_core import PydanticCustomError

from kit.api import VERSION_HEADER, PageQuery, QueryModel, RequestModel, answer_version, operation
from kit.auth import require_platform_or_publication, scope
from kit.clock import LAST_TIME, iso
from kit.web import api_error, use
from shortlinks.bulk import qr_code
from shortlinks.errors import LinkNotFound, NotYours, ShortlinkError
from shortlinks.links import MAX_VISITS, SLUG, LinkService, short_url
from shortlinks.stats import RETENTION_DAYS
from shortlinks.targets import MAX_TARGET, MAX_UTM, RULES

bp = Blueprint("links_api", __name__, url_prefix="/api/v1/links")
FIELDS = ("domain", "slug", "target", "owner", "code", "disabled", "valid_until",
          "max_visits", "expired_url", "device_targets", "utm", "created_at", "updated_at",
          "visits", "bots")
TIMES = ("created_at", "updated_at", "valid_until")
"""Epoch seconds in the answer's version 1, ISO 8601 (UTC) from version 2 on."""


def _target(value: str, info: ValidationInfo) -> str:
    """Our URL rules (shortlinks/targets.py): http(s) only, IDNA- and percent-encoded, no loop."""
    validate = (info.context or {}).get("validate_target")
    if validate is None:
        return value
    try:
        return str(validate(value))
    except ShortlinkError as exc:
        raise PydanticCustomError("invalid_target", "{reason}",
                                  {"reason": getattr(exc, "reason", str(exc))}) from None


Target = Annotated[str, Field(min_length=1, max_length=MAX_TARGET,
                              examples=["https://example.com/spring-sale"]),
                   AfterValidator(_target)]
Slug = Annotated[str, Field(pattern="^" + SLUG.pattern + "$", max_length=64)]
Code = Literal[301, 302, 307, 308]


def _limit_time(value: Any) -> float:
    """Unix seconds, or an ISO 8601 time with its offset, as the epoch seconds the service
    keeps (up to the year 9999, which an ISO answer can still write)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) \
            and 0 <= value <= LAST_TIME:
        return float(value)
    if not isinstance(value, str) or len(value) > 40:
        raise PydanticCustomError("invalid_time", "Unix seconds (0 to 253402300799) or an "
                                  "ISO 8601 time such as 2026-12-31T23:59:59Z")
    try:
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise PydanticCustomError("invalid_time", "an ISO 8601 time such as "
                                  "2026-12-31T23:59:59Z, or Unix seconds") from None
    if when.tzinfo is None:
        raise PydanticCustomError("invalid_time", "give the time's offset (Z for UTC)")
    return min(max(0.0, when.timestamp()), LAST_TIME)


Limit = Annotated[float, PlainValidator(_limit_time), WithJsonSchema({"anyOf": [
    {"type": "number", "minimum": 0, "maximum": LAST_TIME},
    {"type": "string", "format": "date-time", "examples": ["2026-12-31T23:59:59Z"]}]})]
UtmValue = Annotated[str, Field(min_length=1, max_length=MAX_UTM)]
MaxVisits = Annotated[int, Field(ge=0, le=MAX_VISITS)]


class DeviceTargets(RequestModel):
    """A target per device, picked by the visitor's User-Agent; a device left out gets the
    link's ``target``. A link with these is served by the Python path (the edge's map cannot
    read the User-Agent)."""

    ios: Target | None = None
    android: Target | None = None
    desktop: Target | None = None


class Utm(RequestModel):
    """UTM parameters set on the link's targets (replacing any of the same name)."""

    utm_source: UtmValue | None = Field(None, examples=["newsletter"])
    utm_medium: UtmValue | None = Field(None, examples=["email"])
    utm_campaign: UtmValue | None = Field(None, examples=["spring"])
    utm_term: UtmValue | None = None
    utm_content: UtmValue | None = None


class Rules(RequestModel):
    expired_url: Target | None = Field(None, description="Where a visit to an expired or "
                                       "exhausted link goes (302) instead of a 410")
    device_targets: DeviceTargets | None = None
    utm: Utm | None = None


class CreateLink(Rules):
    """A short link on one of our short domains; ``slug`` is random when left out, ``owner``
    (the publication) defaults to a publication token's own."""

    domain: str = Field(min_length=1, max_length=253, examples=["acme.link"])
    target: Target
    slug: Slug | None = None
    owner: str | None = Field(None, min_length=1, max_length=128, examples=["pub_1"])
    code: Code | None = None
    valid_until: Limit | None = Field(None, description="When it starts to answer 410: Unix "
                                      "seconds or an ISO 8601 time with its offset")
    max_visits: MaxVisits | None = None


class UpdateLink(Rules):
    """Only the fields sent change; a null limit or rule removes it."""

    target: Target = Field(None, json_schema_extra={"default": None})  # type: ignore[assignment]
    code: Code = Field(None)  # type: ignore[arg-type]
    valid_until: Limit | None = None
    max_visits: MaxVisits | None = None
    disabled: bool = Field(None)  # type: ignore[assignment]


class ListLinks(PageQuery):
    owner: str | None = Field(None, min_length=1, max_length=128, examples=["pub_1"])


class _LinkFields(BaseModel):
    """What every version of a link answer carries (the times differ)."""

    domain: str
    slug: str
    target: str
    owner: str
    code: int
    disabled: bool
    max_visits: int | None
    expired_url: str | None
    device_targets: dict[str, str] | None
    utm: dict[str, str] | None
    visits: int
    bots: int


class Link(_LinkFields):
    """A short link as version 1 answers it (no ``Api-Version``; what v0.1.0 clients read):
    times in Unix seconds."""

    valid_until: float | None
    created_at: float
    updated_at: float


class LinkV2(_LinkFields):
    """A short link as version 2 answers it (``Api-Version: 2``): its ``short_url``, and times
    in ISO 8601 (UTC)."""

    short_url: str = Field(examples=["https://acme.link/spring"])
    valid_until: str | None = Field(examples=["2026-12-31T23:59:59+00:00"])
    created_at: str = Field(examples=["2026-12-04T21:59:25+00:00"])
    updated_at: str


class LinkAnswer(RootModel[LinkV2 | Link]):
    """A short link in the shape the request's ``Api-Version`` asked for."""


class StatsQuery(QueryModel):
    days: int = Field(30, ge=1, le=RETENTION_DAYS, description="How many days back, today "
                      "included (UTC days)")
    format: Literal["json", "csv"] = "json"


class DayStats(BaseModel):
    date: str = Field(examples=["2026-11-30"])
    visits: int
    bots: int = Field(description="Crawlers (by CrawlerDetect's list) and HEAD requests")


class ReferrerStats(BaseModel):
    host: str = Field(examples=["news.ycombinator.com"])
    visits: int


class LinkStats(BaseModel):
    """Visits per day, oldest first, and the referrer hosts over those days (Python path only;
    visits the edge answers from its map carry no referrer), most visits first."""

    days: list[DayStats]
    referrers: list[ReferrerStats]


class LinkPage(BaseModel):
    links: list[LinkV2] | list[Link]
    next_cursor: str | None


class LinkDeleted(BaseModel):
    deleted: str


def _links() -> LinkService:
    return use(LinkService)


def _rules() -> dict[str, Any]:
    return {"validate_target": _links().validate_target}


def _own(domain: str, slug: str) -> dict[str, Any]:
    """The link, if the caller may see it (a publication's token: only its own)."""
    link = _links().get(domain, slug)
    if scope() is not None and link["owner"] != scope():
        raise LinkNotFound(f"{domain}/{slug} does not exist")
    return link


def _view(link: dict[str, Any]) -> dict[str, Any]:
    """The link in the answer's version (the request's ``Api-Version``)."""
    view = {name: link.get(name) for name in FIELDS} | {"visits": link.get("visits") or 0,
                                                        "bots": link.get("bots") or 0}
    if answer_version() == "1":
        return view
    times = {name: iso(float(view[name])) if view[name] is not None else None
             for name in TIMES}
    return {"short_url": short_url(link), **view, **times}


def _answer(body: Any, status: int = 200) -> tuple[Response, int]:
    response = jsonify(body)
    response.headers[VERSION_HEADER] = answer_version()
    response.headers["Vary"] = VERSION_HEADER
    return response, status


def _rules_of(body: Rules) -> dict[str, Any]:
    """The rules sent, as the service takes them (null device targets and UTM fields left
    out)."""
    sent = body.model_dump(include=set(RULES), exclude_unset=True, exclude_none=True)
    return {name: value for name, value in sent.items() if value != {}}


@bp.errorhandler(ShortlinkError)
def link_error(exc: ShortlinkError) -> tuple[Response, int]:
    return api_error(str(exc), exc.status, field=getattr(exc, "field", None))


@bp.post("")
@require_platform_or_publication
@operation(summary="Create a short link", auth="platform_or_publication", body=CreateLink,
           context=_rules, responses={201: LinkAnswer, 403: None, 409: None}, versioned=True)
def create(body: CreateLink) -> tuple[Response, int]:
    owner = body.owner or scope()
    if owner is None:
        return api_error("owner (the publication id) is required", 400, "missing", "owner")
    if scope() is not None:
        if owner != scope():
            raise NotYours("a publication's token creates links for that publication only")
        _links().check_publication_domain(body.domain, owner)
    link = _links().create(body.domain, body.target, owner, slug=body.slug, code=body.code,
                           valid_until=body.valid_until, max_visits=body.max_visits,
                           rules=_rules_of(body))
    return _answer(_view(link), 201)


@bp.get("/<domain>/<slug>")
@require_platform_or_publication
@operation(summary="A short link", auth="platform_or_publication",
           responses={200: LinkAnswer, 404: None}, versioned=True)
def show(domain: str, slug: str) -> tuple[Response, int]:
    return _answer(_view(_own(domain, slug)))


@bp.get("")
@require_platform_or_publication
@operation(summary="A publication's short links, a page at a time",
           auth="platform_or_publication", query=ListLinks, responses={200: LinkPage, 403: None},
           versioned=True)
def list_links(query: ListLinks) -> tuple[Response, int]:
    owner = query.owner or scope()
    if owner is None:
        return api_error("owner is required", 400, "missing", "owner")
    if scope() is not None and owner != scope():
        raise NotYours("a publication's token lists its own links only")
    try:
        page = _links().list_for(owner, limit=query.limit, cursor=query.cursor)
    except ValueError:
        return api_error("cursor is not one this API gave out", 400, field="cursor")
    return _answer({"links": [_view(link) for link in page.items],
                    "next_cursor": page.next_cursor})


@bp.get("/<domain>/<slug>/qr.<kind>")
@require_platform_or_publication
@operation(summary="A short link's QR code (kind: svg or png)", auth="platform_or_publication",
           responses={200: None, 404: None}, media={200: ("image/svg+xml", "image/png")})
def qr(domain: str, slug: str, kind: str) -> Response:
    link = _own(domain, slug)
    mimetype = {"svg": "image/svg+xml", "png": "image/png"}.get(kind, "")
    return Response(qr_code(short_url(link), kind),
                    mimetype=mimetype)


@bp.patch("/<domain>/<slug>")
@require_platform_or_publication
@operation(summary="Change a short link", auth="platform_or_publication", body=UpdateLink,
           context=_rules, responses={200: LinkAnswer, 404: None, 409: None}, versioned=True)
def update(domain: str, slug: str, body: UpdateLink) -> tuple[Response, int]:
    _own(domain, slug)
    changes = body.model_dump(exclude_unset=True, exclude=set(RULES))
    rules = _rules_of(body)
    changes.update({name: rules.get(name) for name in RULES if name in body.model_fields_set})
    link = _links().update(domain, slug, changes)
    return _answer(_view(link))


@bp.get("/<domain>/<slug>/stats")
@require_platform_or_publication
@operation(summary="A short link's visits per day and referrer hosts (JSON, or CSV with "
           "format=csv)", auth="platform_or_publication", query=StatsQuery,
           responses={200: LinkStats, 404: None}, media={200: ("application/json", "text/csv")})
def stats(domain: str, slug: str, query: StatsQuery) -> Response:
    _own(domain, slug)
    found = _links().visit_stats(domain, slug, query.days)
    if query.format == "csv":
        return _csv(domain, slug, found)
    return jsonify(found)


@bp.get("/<domain>/<slug>/stats.csv")
@require_platform_or_publication
@operation(summary="A short link's visits per day as CSV (date, visits, bots)",
           auth="platform_or_publication", query=StatsQuery, responses={200: None, 404: None},
           media={200: ("text/csv",)})
def stats_csv(domain: str, slug: str, query: StatsQuery) -> Response:
    _own(domain, slug)
    return _csv(domain, slug, _links().visit_stats(domain, slug, query.days))


def _csv(domain: str, slug: str, found: dict[str, Any]) -> Response:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(("date", "visits", "bots"))
    writer.writerows((day["date"], day["visits"], day["bots"]) for day in found["days"])
    return Response(out.getvalue(), mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{domain}-{slug}-visits.csv"'})


@bp.delete("/<domain>/<slug>")
@require_platform_or_publication
@operation(summary="Delete a short link", auth="platform_or_publication",
           responses={200: LinkDeleted, 404: None, 409: None})
def delete(domain: str, slug: str) -> Response:
    try:
        link = _links().get(domain, slug)
    except LinkNotFound:
        _links().gone(domain, slug)  # perhaps a repeat: end what a failed first left undone
        raise
    if scope() is not None and link["owner"] != scope():
        raise LinkNotFound(f"{domain}/{slug} does not exist")
    _links().delete(domain, slug)
    return jsonify(deleted=f"{domain}/{slug}")

"""The short-link API: create, read, list by owner, update, disable, delete, QR codes.

The platform's token sees every link; a publication's token (``kit/tokens.py``) sees and
changes only its own links (others' are answered 404, as if absent) and creates links only for
itself, on short domains connected and verified for that publication."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from flask import Blueprint, Response, jsonify
from pydantic import AfterValidator, BaseModel, Field, ValidationInfo
from pydantic_core import PydanticCustomError

from kit.api import PageQuery, RequestModel, operation
from kit.auth import require_platform_or_publication, scope
from kit.web import api_error, use
from shortlinks.bulk import qr_code
from shortlinks.links import (SLUG, LinkNotFound, LinkService, NotYours, ShortlinkError,
                              MAX_TARGET)

bp = Blueprint("links_api", __name__, url_prefix="/api/v1/links")
FIELDS = ("domain", "slug", "target", "owner", "code", "disabled", "valid_until",
          "max_visits", "created_at", "updated_at", "visits")


def _target(value: str, info: ValidationInfo) -> str:
    """Our URL rules (shortlinks/links.py): http(s) only, IDNA- and percent-encoded, no loop."""
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
Limit = Annotated[float, Field(ge=0)]


class CreateLink(RequestModel):
    """A short link on one of our short domains; ``slug`` is random when left out, ``owner``
    (the publication) defaults to a publication token's own."""

    domain: str = Field(min_length=1, max_length=253, examples=["acme.link"])
    target: Target
    slug: Slug | None = None
    owner: str | None = Field(None, min_length=1, max_length=128, examples=["pub_1"])
    code: Code | None = None
    valid_until: Limit | None = Field(None, description="Unix time after which it answers 410")
    max_visits: Annotated[int, Field(ge=0)] | None = None


class UpdateLink(RequestModel):
    """Only the fields sent change; a null limit removes it."""

    target: Target = Field(None, json_schema_extra={"default": None})  # type: ignore[assignment]
    code: Code = Field(None)  # type: ignore[arg-type]
    valid_until: Limit | None = None
    max_visits: Annotated[int, Field(ge=0)] | None = None
    disabled: bool = Field(None)  # type: ignore[assignment]


class ListLinks(PageQuery):
    owner: str | None = Field(None, min_length=1, max_length=128, examples=["pub_1"])


class Link(BaseModel):
    domain: str
    slug: str
    target: str
    owner: str
    code: int
    disabled: bool
    valid_until: float | None
    max_visits: int | None
    created_at: float
    updated_at: float
    visits: int


class LinkPage(BaseModel):
    links: list[Link]
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
    return {name: link.get(name) for name in FIELDS} | {"visits": link.get("visits") or 0}


@bp.errorhandler(ShortlinkError)
def link_error(exc: ShortlinkError) -> tuple[Response, int]:
    return api_error(str(exc), exc.status, field=getattr(exc, "field", None))


@bp.post("")
@require_platform_or_publication
@operation(summary="Create a short link", auth="platform_or_publication", body=CreateLink,
           context=_rules, responses={201: Link, 403: None, 409: None})
def create(body: CreateLink) -> tuple[Response, int]:
    owner = body.owner or scope()
    if owner is None:
        return api_error("owner (the publication id) is required", 400, "missing", "owner")
    if scope() is not None:
        if owner != scope():
            raise NotYours("a publication's token creates links for that publication only")
        _links().check_publication_domain(body.domain, owner)
    link = _links().create(body.domain, body.target, owner, slug=body.slug, code=body.code,
                           valid_until=body.valid_until, max_visits=body.max_visits)
    return jsonify(_view(link)), 201


@bp.get("/<domain>/<slug>")
@require_platform_or_publication
@operation(summary="A short link", auth="platform_or_publication",
           responses={200: Link, 404: None})
def show(domain: str, slug: str) -> Response:
    return jsonify(_view(_own(domain, slug)))


@bp.get("")
@require_platform_or_publication
@operation(summary="A publication's short links, a page at a time",
           auth="platform_or_publication", query=ListLinks, responses={200: LinkPage, 403: None})
def list_links(query: ListLinks) -> Response | tuple[Response, int]:
    owner = query.owner or scope()
    if owner is None:
        return api_error("owner is required", 400, "missing", "owner")
    if scope() is not None and owner != scope():
        raise NotYours("a publication's token lists its own links only")
    try:
        page = _links().list_for(owner, limit=query.limit, cursor=query.cursor)
    except ValueError:
        return api_error("cursor is not one this API gave out", 400, field="cursor")
    return jsonify(links=[_view(link) for link in page.items], next_cursor=page.next_cursor)


@bp.get("/<domain>/<slug>/qr.<kind>")
@require_platform_or_publication
@operation(summary="A short link's QR code (kind: svg or png)", auth="platform_or_publication",
           responses={200: None, 404: None}, media={200: ("image/svg+xml", "image/png")})
def qr(domain: str, slug: str, kind: str) -> Response:
    link = _own(domain, slug)
    mimetype = {"svg": "image/svg+xml", "png": "image/png"}.get(kind, "")
    return Response(qr_code(f"https://{link['domain']}/{link['slug']}", kind),
                    mimetype=mimetype)


@bp.patch("/<domain>/<slug>")
@require_platform_or_publication
@operation(summary="Change a short link", auth="platform_or_publication", body=UpdateLink,
           context=_rules, responses={200: Link, 404: None, 409: None})
def update(domain: str, slug: str, body: UpdateLink) -> Response:
    _own(domain, slug)
    link = _links().update(domain, slug, body.model_dump(exclude_unset=True))
    return jsonify(_view(link))


@bp.delete("/<domain>/<slug>")
@require_platform_or_publication
@operation(summary="Delete a short link", auth="platform_or_publication",
           responses={200: LinkDeleted, 404: None})
def delete(domain: str, slug: str) -> Response:
    _own(domain, slug)
    _links().delete(domain, slug)
    return jsonify(deleted=f"{domain}/{slug}")

"""The short-link API: create, read, list by owner, update, disable, delete, QR codes.

The platform's token sees every link; a publication's token (``kit/tokens.py``) sees and
changes only its own links (others' are answered 404, as if absent) and creates links only for
itself, on short domains connected and verified for that publication."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from kit.auth import require_platform_or_publication, scope
from kit.web import use
from shortlinks.bulk import qr_code
from shortlinks.links import LinkNotFound, LinkService, NotYours, ShortlinkError

bp = Blueprint("links_api", __name__, url_prefix="/api/v1/links")
FIELDS = ("domain", "slug", "target", "owner", "code", "disabled", "valid_until",
          "max_visits", "created_at", "updated_at", "visits")


def _links() -> LinkService:
    return use(LinkService)


def _own(domain: str, slug: str) -> dict[str, Any]:
    """The link, if the caller may see it (a publication's token: only its own)."""
    link = _links().get(domain, slug)
    if scope() is not None and link["owner"] != scope():
        raise LinkNotFound(f"{domain}/{slug} does not exist")
    return link


def _view(link: dict[str, Any]) -> dict[str, Any]:
    return {name: link.get(name) for name in FIELDS} | {"visits": link.get("visits") or 0}


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ShortlinkError("send a JSON object")
    return body


@bp.errorhandler(ShortlinkError)
def link_error(exc: ShortlinkError) -> tuple[Response, int]:
    return jsonify(error=str(exc)), exc.status


@bp.post("")
@require_platform_or_publication
def create() -> tuple[Response, int]:
    body = _body()
    owner = body.get("owner", scope())
    if not isinstance(owner, str) or not owner or len(owner) > 128:
        raise ShortlinkError("owner (the publication id) is required")
    if scope() is not None:
        if owner != scope():
            raise NotYours("a publication's token creates links for that publication only")
        _links().check_publication_domain(body.get("domain"), owner)
    link = _links().create(body.get("domain"), body.get("target"), owner, slug=body.get("slug"),
                           code=body.get("code"), valid_until=body.get("valid_until"),
                           max_visits=body.get("max_visits"))
    return jsonify(_view(link)), 201


@bp.get("/<domain>/<slug>")
@require_platform_or_publication
def show(domain: str, slug: str) -> Response:
    return jsonify(_view(_own(domain, slug)))


@bp.get("")
@require_platform_or_publication
def list_links() -> Response:
    owner = request.args.get("owner", scope() or "")
    if not owner:
        raise ShortlinkError("owner is required")
    if scope() is not None and owner != scope():
        raise NotYours("a publication's token lists its own links only")
    try:
        page = _links().list_for(owner, limit=min(int(request.args.get("limit", "100")), 500),
                                 cursor=request.args.get("cursor"))
    except ValueError:
        raise ShortlinkError("limit must be a number and cursor one we gave out") from None
    return jsonify(links=[_view(link) for link in page.items], next_cursor=page.next_cursor)


@bp.get("/<domain>/<slug>/qr.<kind>")
@require_platform_or_publication
def qr(domain: str, slug: str, kind: str) -> Response:
    link = _own(domain, slug)
    mimetype = {"svg": "image/svg+xml", "png": "image/png"}.get(kind, "")
    return Response(qr_code(f"https://{link['domain']}/{link['slug']}", kind),
                    mimetype=mimetype)


@bp.patch("/<domain>/<slug>")
@require_platform_or_publication
def update(domain: str, slug: str) -> Response:
    _own(domain, slug)
    link = _links().update(domain, slug, _body())
    return jsonify(_view(link))


@bp.delete("/<domain>/<slug>")
@require_platform_or_publication
def delete(domain: str, slug: str) -> Response:
    _own(domain, slug)
    _links().delete(domain, slug)
    return jsonify(deleted=f"{domain}/{slug}")

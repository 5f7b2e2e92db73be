"""The short-link API: create, read, list by owner, update, disable, delete, QR codes.

The platform's token sees every link; a publication's token (``control/tokens.py``) sees and
changes only its own links (others' are answered 404, as if absent) and creates links only for
itself, on short domains that no other publication has connected."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from control.auth import require_token_or_publication as require_token
from control.auth import scope
from domains.errors import DomainError
from shortlinks.bulk import qr_code
from shortlinks.links import LinkNotFound, LinkService, NotYours, ShortlinkError

bp = Blueprint("links_api", __name__, url_prefix="/api/v1/links")
FIELDS = ("domain", "slug", "target", "owner", "code", "disabled", "valid_until",
          "max_visits", "created_at", "updated_at", "visits")


def _links() -> LinkService:
    service: LinkService = current_app.extensions["edge.links"]
    return service


def _changed(domain: str, slug: str) -> None:
    """A link was edited or removed: drop it from the cache and republish the hot set now."""
    current_app.extensions["edge.resolver"].invalidate(domain, slug)
    current_app.extensions["edge.services"].publisher.refresh_redirects()
    current_app.extensions["edge.lifecycle"].publish_routes()


def _own(domain: str, slug: str) -> dict[str, Any]:
    """The link, if the caller may see it (a publication's token: only its own)."""
    link = _links().get(domain, slug)
    if scope() is not None and link["owner"] != scope():
        raise LinkNotFound(f"{domain}/{slug} does not exist")
    return link


def _check_domain(domain: Any) -> None:
    """A publication's token creates links only on short domains connected for it. A domain
    nobody has connected is not free for the taking: its links would stay when its owner
    connects it. Links on shared short domains are made with the platform's token."""
    try:
        connected = current_app.extensions["edge.domains"].get(domain)
    except DomainError:
        raise NotYours(f"{domain} is not connected for this publication; connect it first, "
                       "or ask the platform to make links on shared short domains") from None
    if connected["publication_id"] != scope():
        raise NotYours(f"{domain} belongs to another publication")
    if connected["status"] == "pending_dns":
        raise NotYours(f"{domain} is not verified yet: links can be made once its DNS records "
                       "prove it is yours")


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
@require_token
def create() -> tuple[Response, int]:
    body = _body()
    owner = body.get("owner", scope())
    if not isinstance(owner, str) or not owner or len(owner) > 128:
        raise ShortlinkError("owner (the publication id) is required")
    if scope() is not None:
        if owner != scope():
            raise NotYours("a publication's token creates links for that publication only")
        _check_domain(body.get("domain"))
    for name in ("valid_until", "max_visits"):
        if body.get(name) is not None and (not isinstance(body[name], (int, float))
                                           or isinstance(body[name], bool) or body[name] < 0):
            raise ShortlinkError(f"{name} must be a positive number")
    link = _links().create(body.get("domain"), body.get("target"), owner, slug=body.get("slug"),
                           code=body.get("code"), valid_until=body.get("valid_until"),
                           max_visits=body.get("max_visits"))
    return jsonify(_view(link)), 201


@bp.get("/<domain>/<slug>")
@require_token
def show(domain: str, slug: str) -> Response:
    return jsonify(_view(_own(domain, slug)))


@bp.get("")
@require_token
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
@require_token
def qr(domain: str, slug: str, kind: str) -> Response:
    link = _own(domain, slug)
    mimetype = {"svg": "image/svg+xml", "png": "image/png"}.get(kind, "")
    return Response(qr_code(f"https://{link['domain']}/{link['slug']}", kind),
                    mimetype=mimetype)


@bp.patch("/<domain>/<slug>")
@require_token
def update(domain: str, slug: str) -> Response:
    _own(domain, slug)
    link = _links().update(domain, slug, _body())
    _changed(domain, slug)
    return jsonify(_view(link))


@bp.delete("/<domain>/<slug>")
@require_token
def delete(domain: str, slug: str) -> Response:
    _own(domain, slug)
    _links().delete(domain, slug)
    _changed(domain, slug)
    return jsonify(deleted=f"{domain}/{slug}")

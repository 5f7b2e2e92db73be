"""The publisher API: the platform's app servers connect, read and remove custom domains.

A publication's own token (``kit/tokens.py``) works here too, for that publication only:
its connects are for itself, and other publications' domains answer 404 as if absent."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from domains.errors import DomainError, DomainNotFound
from domains.lifecycle import Lifecycle
from domains.service import DomainService, public_view
from kit import logs
from kit.auth import require_platform_or_publication, scope
from kit.tokens import PUBLICATION_ID, PUBLICATION_ID_RULE
from kit.web import use
from store import ConflictError

bp = Blueprint("domains_api", __name__, url_prefix="/api/v1/domains")


def _service() -> DomainService:
    return use(DomainService)


def _own(hostname: str) -> dict[str, Any]:
    """The domain, if the caller may see it (a publication's token: only its own)."""
    domain = _service().get(hostname)
    if scope() is not None and domain["publication_id"] != scope():
        raise DomainNotFound(domain["hostname"])
    logs.bind(hostname=domain["hostname"], publication_id=domain["publication_id"])
    return domain


def _publication(requested: Any) -> str | tuple[Response, int]:
    """The publication a call is for: the token's own unless the platform names one."""
    publication_id = scope() if requested is None else requested
    if not isinstance(publication_id, str) or not PUBLICATION_ID.fullmatch(publication_id):
        return _error(f"publication_id must be {PUBLICATION_ID_RULE}", 400)
    if scope() is not None and publication_id != scope():
        return _error("a publication's token acts for that publication only", 403)
    logs.bind(publication_id=publication_id)
    return publication_id


def _view(domain: dict[str, Any]) -> dict[str, Any]:
    return public_view(domain, _service().cname_target)


def _error(message: str, status: int) -> tuple[Response, int]:
    return jsonify(error=message), status


@bp.errorhandler(DomainError)
def domain_error(exc: DomainError) -> tuple[Response, int]:
    return _error(str(exc), exc.status)


@bp.errorhandler(ConflictError)
def conflict(exc: ConflictError) -> tuple[Response, int]:
    return _error(f"{exc.key} changed while we worked on it; try again", 409)


@bp.post("")
@require_platform_or_publication
def connect() -> tuple[Response, int]:
    body: Any = request.get_json(silent=True)
    if not isinstance(body, dict):
        return _error("send a JSON object with hostname and publication_id", 400)
    publication_id = _publication(body.get("publication_id"))
    if not isinstance(publication_id, str):
        return publication_id
    domain, created = _service().connect(body.get("hostname"), publication_id)
    return jsonify(_view(domain)), 201 if created else 200


@bp.get("/<hostname>")
@require_platform_or_publication
def show(hostname: str) -> Response:
    domain = _own(hostname)
    return jsonify({**_view(domain), "events": _service().timeline(domain)})


@bp.get("")
@require_platform_or_publication
def list_domains() -> tuple[Response, int] | Response:
    publication_id = _publication(request.args.get("publication_id"))
    if not isinstance(publication_id, str):
        return publication_id
    try:
        limit = int(request.args.get("limit", "100"))
    except ValueError:
        return _error("limit must be a number", 400)
    if not 1 <= limit <= 500:
        return _error("limit must be between 1 and 500", 400)
    try:
        page = _service().list_for(publication_id, limit=limit,
                                   cursor=request.args.get("cursor"))
    except ValueError:
        return _error("cursor is not one this API gave out", 400)
    return jsonify(domains=[_view(d) for d in page.items], next_cursor=page.next_cursor)


@bp.post("/<hostname>/check")
@require_platform_or_publication
def check(hostname: str) -> Response:
    """Re-check DNS now; answers the domain and the records found on each server asked."""
    _own(hostname)
    domain, result = use(Lifecycle).check_now(hostname)
    return jsonify({**_view(domain), "ok": result.ok, "seen": result.seen})


@bp.delete("/<hostname>")
@require_platform_or_publication
def remove(hostname: str) -> Response:
    _own(hostname)
    domain = use(Lifecycle).remove(hostname)
    return jsonify(removed=domain["hostname"])

"""Who may act on a domain from the publisher's surfaces: the one place for the publisher's
session (the platform's own cookie), the settings pages' CSRF token and ownership checks.

Pages answer 404 for a domain the user does not manage (no hint either way); the API answers
``DomainNotFound`` for one outside a publication token's scope."""
from __future__ import annotations

import hashlib
import hmac
from typing import Any, Callable

from flask import Flask, abort, current_app, redirect, request
from werkzeug.wrappers import Response

from domains.errors import PUBLISHER_ERRORS, DomainNotFound
from domains.service import DomainService, Item
from kit import logs
from kit.auth import scope
from kit.hosts import host_without_port
from kit.platform import Platform, PlatformUser
from kit.tokens import PUBLICATION_ID
from kit.web import use

CSRF_KEY, CLOCK = "PUBLISHER_CSRF_KEY", "PUBLISHER_CLOCK"


def init_csrf(app: Flask, encryption_key: str, clock: Callable[[], float]) -> None:
    # CSRF tokens are an HMAC of the user and the day under a key only the control service has.
    app.config[CSRF_KEY] = hashlib.sha256(b"publisher-settings-csrf:" + encryption_key.encode()
                                          ).digest()
    app.config[CLOCK] = clock


def page_headers(response: Response) -> Response:
    """Every settings page: never cached, never framed (no clickjacking of "Remove")."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
    return response


def signed_in() -> PlatformUser:
    """The platform user behind this request, from the platform's session cookie; a visitor
    without one is sent to sign in, and a request to any other host than the platform's is 404."""
    platform = use(Platform)
    if platform.identity is None or host_without_port(request.host) != platform.host:
        abort(404)
    user = platform.identity.user(request.cookies, request.headers.get("Cookie", ""))
    if user is None:
        abort(redirect(platform.sign_in_url(request.full_path.rstrip("?")), 303))
    return PlatformUser(user.id, tuple(p for p in user.publications
                                       if PUBLICATION_ID.fullmatch(p)))


def csrf_token(user: PlatformUser, days_ago: int = 0) -> str:
    day = int(current_app.config[CLOCK]() // 86400) - days_ago
    return hmac.new(current_app.config[CSRF_KEY], f"{user.id}:{day}".encode(),
                    hashlib.sha256).hexdigest()


def require_csrf(user: PlatformUser) -> None:
    sent = request.form.get("csrf_token", "") or request.headers.get("X-CSRF-Token", "")
    if not any(hmac.compare_digest(sent.encode(), csrf_token(user, days).encode())
               for days in (0, 1)):
        abort(400, "The form expired; reload the page and try again.")


def page_domain(user: PlatformUser, hostname: str) -> Item:
    """The domain, if one of the user's publications holds it; 404 otherwise."""
    try:
        domain: Item = use(DomainService).get(hostname)
    except PUBLISHER_ERRORS:
        abort(404)
    if domain["publication_id"] not in user.publications:
        abort(404)
    logs.bind(hostname=domain["hostname"], publication_id=domain["publication_id"])
    return domain


def api_domain(hostname: str) -> dict[str, Any]:
    """The domain, if the API caller may see it (a publication's token: only its own)."""
    domain = use(DomainService).get(hostname)
    if scope() is not None and domain["publication_id"] != scope():
        raise DomainNotFound(domain["hostname"])
    logs.bind(hostname=domain["hostname"], publication_id=domain["publication_id"])
    return domain

"""The taken domain's page: who may release it and when its claim expires (never who holds
it), and the way to move it here for whoever owns its DNS: a TXT record to add, then "Verify and
move" (domains/takeover.py). Same session and CSRF as the settings pages (publisher/auth.py)."""
from __future__ import annotations

import math

from flask import Blueprint, abort, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from domains.errors import PUBLISHER_ERRORS, DomainNotFound
from domains.takeover import Takeovers, TakeoverRefused
from kit.clock import iso
from kit.platform import PlatformUser
from kit.web import use
from publisher import auth
from publisher.call_limits import TooManyCalls, count_call, install

bp = Blueprint("publisher_takeover", __name__, url_prefix="/_edge/settings",
               template_folder="templates")
bp.after_request(auth.page_headers)
bp.record_once(install)


def taken(user: PlatformUser, hostname: str, publication: str, status: int = 200,
          error: str | None = None) -> tuple[str, int]:
    """The page of ``hostname`` as ``publication`` (one of the user's) sees it."""
    takeovers = use(Takeovers)
    try:
        holder = takeovers.holder_view(hostname, publication)
    except DomainNotFound as exc:  # released meanwhile: free to connect
        return render_template("publisher/takeover.html", user=user, holder=None,
                               hostname=exc.hostname, publication=publication), status
    except PUBLISHER_ERRORS:
        abort(404)
    pending = takeovers.pending(str(holder["hostname"]), publication)
    return render_template("publisher/takeover.html", user=user, holder=holder,
                           publication=publication, error=error,
                           record=takeovers.record(pending) if pending else None,
                           valid_until=iso(pending["valid_until"]) if pending else None,
                           csrf_token=auth.csrf_token(user)), status


def _publication(user: PlatformUser, source: dict[str, str]) -> str:
    publication = source.get("publication", "")
    if publication not in user.publications:
        abort(404)
    return publication


def _posted() -> tuple[PlatformUser, str]:
    """Who posts (with the CSRF token) for which of their publications."""
    user = auth.signed_in()
    auth.require_csrf(user)
    return user, _publication(user, request.form)


def _too_many(user: PlatformUser, hostname: str, publication: str,
              exc: TooManyCalls) -> tuple[str, int, dict[str, str]]:
    """The page again, saying when to retry (the API's budget: publisher/call_limits.py)."""
    page, status = taken(user, hostname, publication, exc.status, str(exc))
    return page, status, {"Retry-After": str(math.ceil(exc.retry_after))}


@bp.get("/takeover/<hostname>")
def show(hostname: str) -> tuple[str, int]:
    user = auth.signed_in()
    return taken(user, hostname, _publication(user, request.args))


@bp.post("/takeover/<hostname>")
def ask(hostname: str) -> Response | tuple[str, int] | tuple[str, int, dict[str, str]]:
    """Hand out (or show again) the publication's TXT record for ``hostname``."""
    user, publication = _posted()
    try:
        count_call(publication)
    except TooManyCalls as exc:
        return _too_many(user, hostname, publication, exc)
    try:
        asked = use(Takeovers).request(hostname, publication)
    except TakeoverRefused as exc:
        return taken(user, hostname, publication, exc.status, str(exc))
    except PUBLISHER_ERRORS:
        abort(404)
    return redirect(url_for(".show", hostname=asked["hostname"], publication=publication), 303)


@bp.post("/takeover/<hostname>/verify")
def verify(hostname: str) -> Response | tuple[str, int] | tuple[str, int, dict[str, str]]:
    """Check the TXT record and move the domain; its own page follows."""
    user, publication = _posted()
    try:
        count_call(publication)
    except TooManyCalls as exc:
        return _too_many(user, hostname, publication, exc)
    try:
        moved = use(Takeovers).take_over(hostname, publication, actor=f"publisher:{user.id}")
    except TakeoverRefused as exc:
        if exc.code == "yours":
            return redirect(url_for("publisher_settings.show", hostname=exc.hostname), 303)
        return taken(user, hostname, publication, exc.status, str(exc))
    except PUBLISHER_ERRORS:
        abort(404)
    return redirect(url_for("publisher_settings.show", hostname=moved["hostname"]), 303)

"""The dashboard's parent blueprint: the guard every page and action passes, CSRF, headers.

Every request under /admin needs a live session, except the login form and the stylesheet.
Every state-changing request also needs the session's CSRF token (the login form, which has
no session yet, uses a double-submit cookie instead: see ``auth.py``).
"""
from __future__ import annotations

import dataclasses
import datetime
import hmac
from urllib.parse import urlsplit

from flask import Blueprint, abort, g, redirect, request, url_for
from werkzeug.wrappers import Response

from admin.accounts import Devices, LoginLimiter, Sessions, Users
from admin.audit import AuditLog
from admin.summary import Summary
from control.wiring import Services
from kit.web import use

COOKIE = "edge_admin"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
PUBLIC_ENDPOINTS = ("admin.auth.login", "admin.auth.login_post", "admin.static")
CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")

bp = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates",
               static_folder="static", static_url_path="/static")


@dataclasses.dataclass
class Admin:
    """What the dashboard's views use: the control service's parts and the admin's own."""

    services: Services
    users: Users
    sessions: Sessions
    limiter: LoginLimiter
    devices: Devices
    audit: AuditLog
    cookie_secure: bool
    summary: Summary


def admin() -> Admin:
    return use(Admin)


def user() -> str:
    return str(g.admin_session["username"])


def client_address() -> str:
    return request.remote_addr or "unknown"


def audit(action: str, target: str = "", detail: str = "") -> None:
    """Record an action of the signed-in admin in the audit log."""
    admin().audit.record(user(), action, target, detail, client_address())


def tokens_match(sent: str | None, expected: str | None) -> bool:
    if not sent or not expected:
        return False
    return hmac.compare_digest(sent.encode(), expected.encode())


def safe_next(target: str | None) -> str:
    """Only a path inside the dashboard: never another host (no open redirect)."""
    default = url_for("admin.overview.index")
    if not target or "\\" in target or any(ord(c) < 32 for c in target):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/admin/"):
        return default  # not the parsed path: browsers read "///admin/x" as host "admin"
    return target


@bp.before_request
def guard() -> Response | None:
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    session = admin().sessions.get(request.cookies.get(COOKIE, ""))
    if session is not None and not admin().users.holds(session):
        session = None  # the user was deleted, or ended their sessions (a new password)
    if session is None:
        if request.method in SAFE_METHODS:
            return redirect(url_for("admin.auth.login", next=request.full_path.rstrip("?")))
        abort(401)
    g.admin_session = session
    if request.method not in SAFE_METHODS and \
            not tokens_match(request.form.get("csrf_token"), session["csrf"]):
        abort(403, "The form's security token is missing or out of date; reload the page.")
    return None


@bp.after_request
def headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint != "admin.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.app_template_global()
def csrf_token() -> str:
    session = g.get("admin_session")
    return str(session["csrf"]) if session else ""


@bp.app_template_global()
def signed_in() -> str:
    session = g.get("admin_session")
    return str(session["username"]) if session else ""


def set_cookie(response: Response, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/admin", httponly=True,
                        secure=admin().cookie_secure, samesite="Strict")


@bp.app_template_filter("utc")
def utc(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(float(timestamp), datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S")

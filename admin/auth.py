"""Login and logout. A failed login counts against the username and the client address; a
lockout is written to the audit log once, at its first refused attempt."""
from __future__ import annotations

import math
import secrets

from flask import Blueprint, make_response, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from admin.accounts import LOCKED_BY, LimiterBusy
from admin.web import (COOKIE, admin, audit, client_address, safe_next, set_cookie,
                       tokens_match)

bp = Blueprint("auth", __name__)
LOGIN_CSRF = "edge_admin_login"
DEVICE, DEVICE_SECONDS = "edge_admin_device", 90 * 86400
"""A browser that signed a user in: a lockout of the username from anywhere spares it."""


def _form(error: str = "", status: int = 200, username: str = "") -> Response:
    """The login form; after a failure it keeps the username typed (never the password)."""
    token = request.cookies.get(LOGIN_CSRF) or secrets.token_urlsafe(32)
    response = make_response(render_template(
        "admin/login.html", login_token=token, error=error, username=username,
        next=safe_next(request.values.get("next"))), status)
    set_cookie(response, LOGIN_CSRF, token, max_age=3600)
    return response


@bp.get("/login")
def login() -> Response:
    return _form()


@bp.post("/login")
def login_post() -> Response:
    if not tokens_match(request.form.get("csrf_token"), request.cookies.get(LOGIN_CSRF)):
        return _form("The form expired; please try again.", 403)
    context = admin()
    username = request.form.get("username", "")[:64]
    known = context.devices.known(request.cookies.get(DEVICE), username)
    keys = context.limiter.keys(username, client_address(), known)
    try:
        wait = context.limiter.attempt(keys)  # counted before the password is checked
    except LimiterBusy:
        wait = 60.0
    if wait > 0:
        locked = context.limiter.first_refusal(keys)
        if locked:  # once per lockout, not per refused attempt: one client cannot fill the log
            context.audit.record(username, "login refused (locked)", address=client_address(),
                                 detail=LOCKED_BY[locked.partition(":")[0]])
        minutes = math.ceil(wait / 60)
        return _form(f"Too many failed logins. Try again in {minutes} "
                     f"minute{'' if minutes == 1 else 's'}.", 429, username)
    name = context.users.verify(username, request.form.get("password", ""))
    if name is None:
        context.audit.record(username, "login failed", address=client_address())
        return _form("Wrong username or password.", 401, username)
    context.limiter.succeeded(name, client_address())
    old = request.cookies.get(COOKIE)
    if old:
        context.sessions.end(old)  # a new session id at every login: no fixation
    session_id = context.sessions.start(name)
    context.audit.record(name, "login", address=client_address())
    response = redirect(safe_next(request.form.get("next")), 303)
    set_cookie(response, COOKIE, session_id, max_age=int(context.sessions.lifetime))
    set_cookie(response, DEVICE, context.devices.token(name), max_age=DEVICE_SECONDS)
    response.delete_cookie(LOGIN_CSRF, path="/admin")
    return response


@bp.post("/logout")
def logout() -> Response:
    audit("logout")
    admin().sessions.end(request.cookies.get(COOKIE, ""))
    response = redirect(url_for("admin.auth.login"), 303)
    response.delete_cookie(COOKIE, path="/admin")
    return response

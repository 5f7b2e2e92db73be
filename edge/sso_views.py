"""The HTTP side of the SSO handshake (``/_edge/sso/*``); the decisions live in edge/sso.py.

The edge sends ``/_edge/`` on every routed host to the control service, so these views see the
visitor's own Host header: ``login``, ``callback`` and ``logout`` answer on custom domains,
``authorize`` on the platform domain only.
"""
from __future__ import annotations

import logging
import secrets

from flask import Blueprint, redirect, request
from werkzeug.wrappers import Response

from edge.sso import (SESSION_COOKIE, STATE_COOKIE, STATE_SECONDS, TRIED_COOKIE, SingleSignOn,
                      SsoRefused, nonce, read_state_cookie, return_path, state_cookie)
from kit.hosts import host_without_port
from kit.platform import Platform, PlatformUnavailable
from kit.web import find, use

log = logging.getLogger(__name__)
bp = Blueprint("sso", __name__, url_prefix="/_edge/sso")


def _sso() -> SingleSignOn:
    sso = find(SingleSignOn)
    if sso is None:
        raise SsoRefused("Sign-in is not configured.")
    return sso


def _host() -> str:
    return host_without_port(request.host)


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"  # codes never leak through Referer
    return response


@bp.errorhandler(SsoRefused)
def refused(exc: SsoRefused) -> tuple[Response, int]:
    # A page, never a redirect: a refusal cannot turn into a loop.
    body = (f"<!doctype html><title>Sign-in stopped</title><p>{exc}</p>"
            '<p><a href="/">Continue without signing in</a></p>')
    return _no_store(Response(body, mimetype="text/html")), 400


@bp.errorhandler(PlatformUnavailable)
def unavailable(exc: PlatformUnavailable) -> tuple[Response, int]:
    log.warning("sso: %s", exc)
    return _no_store(Response("Sign-in is unavailable right now; try again shortly.",
                              mimetype="text/plain")), 503


def _no_more_silent_attempts(response: Response) -> Response:
    # A browser-session cookie: the silent attempt happens once per session, never in a loop.
    response.set_cookie(TRIED_COOKIE, "1", secure=True, httponly=True, samesite="Lax", path="/")
    return response


@bp.get("/login")
def login() -> Response:
    """``prompt=none`` asks for a silent attempt: signed in if the platform knows the visitor,
    otherwise straight back to ``rd``, anonymous; once per browser session."""
    sso = _sso()
    rd = return_path(request.args.get("rd"))
    host = sso.require_custom_domain(_host())
    silent = request.args.get("prompt") == "none"
    if silent and request.cookies.get(TRIED_COOKIE):
        return _no_store(redirect(rd, 302))
    state = secrets.token_urlsafe(24)
    response = redirect(sso.authorize_url(host, state, silent), 302)
    response.set_cookie(STATE_COOKIE, state_cookie(state, rd), max_age=STATE_SECONDS,
                        secure=True, httponly=True, samesite="Lax", path="/")
    return _no_store(response)


@bp.get("/authorize")
def authorize() -> Response:
    sso = _sso()
    if _host() != sso.platform_host:
        raise SsoRefused("Sign-in is not available on this address.")
    host = sso.require_custom_domain((request.args.get("host") or "").lower())
    state = nonce(request.args.get("state"))
    platform = use(Platform)
    if platform.identity is None:
        raise SsoRefused("Sign-in is not configured.")
    user = platform.identity.user(request.cookies, request.headers.get("Cookie", ""))
    if user is None and request.args.get("prompt") == "none":
        return _no_store(redirect(sso.callback_url(host, state), 302))
    if user is None:
        return _no_store(redirect(platform.sign_in_url(request.full_path.rstrip("?"))))
    code = sso.mint_code(user.id, host, state)
    return _no_store(redirect(sso.callback_url(host, state, code), 302))


@bp.get("/callback")
def callback() -> Response:
    sso = _sso()
    host = sso.require_custom_domain(_host())
    state, rd = read_state_cookie(request.cookies.get(STATE_COOKIE))
    if not secrets.compare_digest(state.encode(), (request.args.get("state") or "").encode()):
        raise SsoRefused("This sign-in link was made for another request.")
    if request.args.get("error") == "login_required":  # the silent attempt found nobody
        response = _no_more_silent_attempts(redirect(rd, 302))
        response.delete_cookie(STATE_COOKIE, path="/", secure=True, httponly=True,
                               samesite="Lax")
        return _no_store(response)
    user = sso.consume_code(request.args.get("code"), host, state)
    # Signed in: when this session expires, one silent attempt renews it.
    response = redirect(rd, 302)
    response.delete_cookie(TRIED_COOKIE, path="/", secure=True, httponly=True, samesite="Lax")
    response.set_cookie(SESSION_COOKIE, sso.session_token(user, host),
                        max_age=int(sso.session_seconds), secure=True, httponly=True,
                        samesite="Lax", path="/")
    response.delete_cookie(STATE_COOKIE, path="/", secure=True, httponly=True, samesite="Lax")
    return _no_store(response)


@bp.route("/logout", methods=["GET", "POST"])
def logout() -> Response:
    # No silent sign-in right after signing out, or the logout would not stick.
    response = _no_more_silent_attempts(redirect(return_path(request.args.get("rd")), 302))
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="Lax")
    return _no_store(response)

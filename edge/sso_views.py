"""The HTTP side of the SSO handshake (``/_edge/sso/*``); the decisions live in edge/sso.py.

The edge sends ``/_edge/`` on every routed host to the control service, so these views see the
visitor's own Host header: ``login``, ``callback`` and ``logout`` answer on custom domains,
``authorize`` on the platform domain only. ``logout`` signs out on a POST from the site itself
only; a GET shows a page to confirm.
"""
from __future__ import annotations

import html
import logging
import secrets

from flask import Blueprint, redirect, request
from werkzeug.wrappers import Response

from edge.sso import (LOGOUT_COOKIE, SESSION_COOKIE, STATE_COOKIE, STATE_SECONDS, TRIED_COOKIE,
                      SignInPaused, SingleSignOn, SsoRefused, nonce, read_state_cookie,
                      return_path, state_cookie)
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


SILENT_PLATFORM_TIMEOUT = 1.0
"""How long a silent attempt waits for the platform to say who is signed in: the reader waits
for the page meanwhile, and no answer means coming back anonymous."""


def _no_more_silent_attempts(response: Response) -> Response:
    # A browser-session cookie: the silent attempt happens once per session, never in a loop.
    response.set_cookie(TRIED_COOKIE, "1", secure=True, httponly=True, samesite="Lax", path="/")
    return response


def _drop_state(response: Response) -> Response:
    response.delete_cookie(STATE_COOKIE, path="/", secure=True, httponly=True, samesite="Lax")
    return _no_store(response)


@bp.get("/login")
def login() -> Response:
    """``prompt=none`` asks for a silent attempt: signed in if the platform knows the visitor,
    otherwise straight back to ``rd``, anonymous; none while ``TRIED_COOKIE`` says so. Where
    sign-in is not offered (the platform's own hosts, a domain removed or paused) a silent
    attempt comes back anonymous too: the page that started it asked the reader nothing."""
    rd = return_path(request.args.get("rd"))
    silent = request.args.get("prompt") == "none"
    try:
        sso = _sso()
        host = sso.require_custom_domain(_host())
    except SsoRefused:
        if not silent:
            raise
        return _no_store(_no_more_silent_attempts(redirect(rd, 302)))
    if silent and not sso.silent_attempt_due(request.cookies.get(TRIED_COOKIE)):
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
    host = (request.args.get("host") or "").lower()
    state = nonce(request.args.get("state"))
    silent = request.args.get("prompt") == "none"
    try:
        sso.require_custom_domain(host)
    except SignInPaused:
        if not silent:
            raise
        # No code for a host whose DNS may lead elsewhere; a silent attempt just ends there.
        return _no_store(redirect(sso.callback_url(host, state), 302))
    platform = use(Platform)
    if platform.identity is None:
        raise SsoRefused("Sign-in is not configured.")
    try:
        user = platform.identity.user(request.cookies, request.headers.get("Cookie", ""),
                                      SILENT_PLATFORM_TIMEOUT if silent else None)
    except PlatformUnavailable as exc:
        if not silent:
            raise
        log.warning("sso: a silent sign-in comes back anonymous: %s", exc)
        user = None  # the reader asked nothing: an error page would stop their reading
    if user is None and silent:
        return _no_store(redirect(sso.callback_url(host, state), 302))
    if user is None:
        return _no_store(redirect(platform.sign_in_url(request.full_path.rstrip("?"))))
    code = sso.mint_code(user.id, host, state)
    return _no_store(redirect(sso.callback_url(host, state, code), 302))


@bp.get("/callback")
def callback() -> Response:
    """Trades a code for a session. The code is burnt first, whatever follows: a callback
    refused for its state, its host or its domain leaves no code to replay."""
    sso = _sso()
    code = request.args.get("code")
    taken = sso.take_code(code) if code is not None else None
    state, rd = read_state_cookie(request.cookies.get(STATE_COOKIE))
    if not secrets.compare_digest(state.encode(), (request.args.get("state") or "").encode()):
        raise SsoRefused("This sign-in link was made for another request.")
    if taken is None and request.args.get("error") == "login_required":
        # The silent attempt found nobody. Coming back anonymous needs no trust in the
        # domain's DNS, nor that it still takes part: a code does (below).
        return _drop_state(_no_more_silent_attempts(redirect(rd, 302)))
    if taken is None or "error" in request.args:
        raise SsoRefused("The sign-in answer is malformed.")
    host = sso.require_custom_domain(_host())
    user = sso.code_user(taken, host, state)
    token, expires = sso.session_token(user, host)
    response = redirect(rd, 302)
    # No silent attempt while this session lasts: should the edge refuse it (a node that has
    # not loaded the signing key yet), the reader browses anonymously, never in a loop; once
    # it expires, one silent attempt renews it.
    for name, value in ((TRIED_COOKIE, str(expires)), (SESSION_COOKIE, token)):
        response.set_cookie(name, value, max_age=int(sso.session_seconds), secure=True,
                            httponly=True, samesite="Lax", path="/")
    return _drop_state(response)


def _same_origin() -> bool:
    """Whether the request comes from a page of this very site: a cross-site page can make a
    browser GET or POST here, but cannot forge these headers or read our cookie."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site == "same-origin"
    # Browsers without Fetch Metadata still send Origin on a POST ("null" for no-referrer pages).
    return request.headers.get("Origin") == f"https://{request.host}"


def _logout_token_matches() -> bool:
    token, cookie = request.form.get("token") or "", request.cookies.get(LOGOUT_COOKIE) or ""
    return bool(cookie) and secrets.compare_digest(token.encode(), cookie.encode())


@bp.get("/logout")
def confirm_logout() -> Response:
    """A page asking to confirm: a GET (a link or an image on any site) never signs out, or
    any page could sign readers out and stop their silent sign-in for the browser session."""
    rd = return_path(request.args.get("rd"))
    token = secrets.token_urlsafe(24)
    body = ('<!doctype html><html lang="en"><meta charset="utf-8"><title>Sign out</title>'
            '<form method="post" action="/_edge/sso/logout">'
            f'<input type="hidden" name="rd" value="{html.escape(rd, quote=True)}">'
            f'<input type="hidden" name="token" value="{token}">'
            '<p><button type="submit">Sign out</button> '
            f'<a href="{html.escape(rd, quote=True)}">Stay signed in</a></p></form></html>')
    response = Response(body, mimetype="text/html")
    response.set_cookie(LOGOUT_COOKIE, token, max_age=STATE_SECONDS, secure=True,
                        httponly=True, samesite="Strict", path="/")
    response.headers["Content-Security-Policy"] = "default-src 'none'; form-action 'self'"
    response.headers["X-Frame-Options"] = "DENY"  # no click-jacking of the button
    return _no_store(response)


@bp.post("/logout")
def logout() -> Response:
    """Signs out only from a page of this site (same origin, or the confirmation page's token);
    anything else gets the confirmation page, so a cross-site form cannot sign anybody out."""
    if not (_same_origin() or _logout_token_matches()):
        return confirm_logout()
    rd = return_path(request.form.get("rd") or request.args.get("rd"))
    # No silent sign-in right after signing out, or the logout would not stick.
    response = _no_more_silent_attempts(redirect(rd, 303))
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="Lax")
    response.delete_cookie(LOGOUT_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
    return _no_store(response)

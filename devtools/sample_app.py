"""A tiny stand-in for the platform's app fleet.

It echoes what the edge told it as JSON, serves article pages (``/p/...``) that show the user
the edge forwarded, and plays the platform's sign-in: ``/login`` sets a platform session cookie
(an HS256 token) and ``/_platform/session`` answers who that cookie belongs to, the
introspection call the control service makes for SSO.

Not a model of a real sign-in: there is no password, anyone may claim any publication and the
login form has no CSRF token. A real platform serves introspection on an internal address only.
"""
from __future__ import annotations

import html
import json
import re
import logging
import threading
import time
from typing import Any, Callable, Iterable
from urllib.parse import quote

import jwt
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

from edge.sso import TRIED_COOKIE, silent_attempt_due

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
PLATFORM_COOKIE = "platform_session"
FORWARDING = ("forwarded", "x-real-ip", "true-client-ip", "x-client-ip", "x-cluster-client-ip",
              "x-original-url", "x-rewrite-url", "x-host", "x-original-host")
"""Headers an app may trust for the client's address or the site's scheme, host or path (with
every ``X-Forwarded-*``): the echo shows what the edge passed of them."""
_LOCAL_PATH = re.compile(r"/(?![/\\])[\x21-\x7e]*")  # printable, no "//" or "/\\" start


def _page(title: str, body: str) -> Response:
    return Response(f'<!doctype html><html lang="en"><meta charset="utf-8"><title>{title}</title>'
                    f"<body><main>{body}</main></body></html>", mimetype="text/html")


def _echo(name: str, request: Request) -> Response:
    return Response(json.dumps({
        "instance": name,
        "host": request.headers.get("Host"),
        "path": request.path,
        "publication_id": request.headers.get("X-Publication-Id"),
        "request_id": request.headers.get("X-Request-ID"),
        "forwarded_for": request.headers.get("X-Forwarded-For"),
        "forwarding": {name.lower(): value for name, value in request.headers
                       if name.lower() in FORWARDING or name.lower().startswith("x-forwarded-")},
        "user": request.headers.get("X-Edge-User"),
        "meta": {name.lower()[len("x-edge-meta-"):]: value for name, value in request.headers
                 if name.lower().startswith("x-edge-meta-")},
    }), mimetype="application/json")


def _article(request: Request) -> Response:
    user = request.headers.get("X-Edge-User")
    if not user and silent_attempt_due(request.cookies.get(TRIED_COOKIE), time.time()):
        # Readers the platform knows are signed in without a click; the edge's cookie stops
        # a second attempt, and a session the edge does not accept from looping.
        return Response(status=302, headers={
            "Location": f"/_edge/sso/login?prompt=none&rd={quote(request.path)}"})
    rd = html.escape(request.path, quote=True)
    if user:
        status = (f'<p id="user">Signed in as <strong>{html.escape(user)}</strong></p>'
                  # A POST from this page (same origin): the edge signs out on nothing else.
                  f'<form method="post" action="/_edge/sso/logout?rd={quote(request.path)}">'
                  '<button type="submit">Sign out</button></form>')
    else:
        status = (f'<p id="user">Not signed in</p>'
                  f'<p><a id="sign-in" href="/_edge/sso/login?rd={rd}">Sign in</a></p>')
    return _page("Article", f"<h1>Article {html.escape(request.path)}</h1>{status}")


class Platform:
    """The platform's sign-in, as far as the edge needs one."""

    def __init__(self, secret: str) -> None:
        self.secret = secret

    def user(self, request: Request) -> dict[str, Any] | None:
        try:
            return dict(jwt.decode(request.cookies.get(PLATFORM_COOKIE, ""), self.secret,
                                   algorithms=["HS256"]))
        except jwt.InvalidTokenError:
            return None

    def login(self, request: Request) -> Response:
        back = request.values.get("return_to", "/home")
        if back.startswith(f"https://{request.host}/"):
            back = back[len(f"https://{request.host}"):]
        if not _LOCAL_PATH.fullmatch(back):
            back = "/home"
        if request.method == "GET":
            return _page("Sign in", (
                '<h1>Sign in to the platform</h1><form method="post">'
                f'<input type="hidden" name="return_to" value="{html.escape(back, quote=True)}">'
                '<p><label for="user">User name</label> <input id="user" name="user" required>'
                '<p><label for="publications">Publications you manage</label> '
                '<input id="publications" name="publications" value="pub_1">'
                '<p><button type="submit">Sign in</button></form>'))
        user = request.form.get("user", "").strip()
        publications = [p.strip() for p in request.form.get("publications", "").split(",")
                        if p.strip()]
        token = jwt.encode({"sub": user, "publications": publications,
                            "exp": int(time.time()) + 3600}, self.secret, algorithm="HS256")
        response = Response(status=303, headers={"Location": back})
        response.set_cookie(PLATFORM_COOKIE, token, httponly=True, secure=True, samesite="Lax")
        return response

    def session(self, request: Request) -> Response:
        if "X-Forwarded-For" in request.headers:  # came through the edge: not for the public
            return Response("not found", status=404)
        claims = self.user(request)
        if claims is None:
            return Response("not signed in", status=401)
        return Response(json.dumps({"user": claims["sub"],
                                    "publications": claims.get("publications", [])}),
                        mimetype="application/json")


def make_app(name: str, platform_secret: str = "sample-platform-secret-0123456789") -> WsgiApp:
    platform = Platform(platform_secret)

    @Request.application  # type: ignore[arg-type]
    def app(request: Request) -> Response:
        if request.path == "/healthz":
            return Response("ok\n", mimetype="text/plain")
        if request.path == "/login":
            return platform.login(request)
        if request.path == "/_platform/session":
            return platform.session(request)
        if request.path == "/home":
            return _page("Platform", '<h1>Your platform home</h1><ul>'
                         '<li><a href="/_edge/settings/domains">Publication settings: '
                         'custom domains</a></li><li><a href="/login">Sign in</a></li></ul>')
        if request.path.startswith("/p/"):
            return _article(request)
        return _echo(name, request)
    return app  # type: ignore[no-any-return]


class SampleApp:
    """One instance of the sample app on a loopback port, served from a background thread."""

    def __init__(self, name: str, port: int, host: str = "127.0.0.1",
                 platform_secret: str = "sample-platform-secret-0123456789") -> None:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per health check
        self.server: BaseWSGIServer = make_server(host, port, make_app(name, platform_secret),
                                                  threaded=True)
        self.address = f"{host}:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

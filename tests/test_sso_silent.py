"""Silent sign-in never loops and never stops a reader on an error page; a one-time code is
burnt by the first callback that carries it. Through the control service's Flask app and the
sample app (the platform's article pages), domains taken to active directly: SSO reads only a
domain's status and publication (tests/test_sso.py takes them there through a CA)."""
from __future__ import annotations

import socket
import time
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from flask.testing import FlaskClient
from werkzeug.test import Client

from admin_app import create_app
from control.wiring import Services
from devtools.sample_app import make_app
from edge.sso import SESSION_COOKIE, STATE_COOKIE, TRIED_COOKIE
from kit.procs import free_port
from kit.settings import Settings
from tests.conftest import SSO_COOKIE_KEY, SSO_PLATFORM, ServicesWith, with_sso

BLOG, OTHER = "blog.example.test", "other.example.test"


def _activate(services: Services, *hosts: str) -> Services:
    for host in hosts:
        domain, _ = services.domains.connect(host, "pub_1")
        services.domains.transition(domain, "active", "test: SSO reads only the status")
    return services


@pytest.fixture
def services(services_with: ServicesWith, settings: Settings) -> Services:
    return _activate(services_with(base=with_sso(settings)), BLOG, OTHER)


@pytest.fixture
def client(services: Services) -> FlaskClient:
    return create_app(services).test_client(use_cookies=False)


def platform_cookie(user: str = "alice") -> str:
    token = jwt.encode({"sub": user, "exp": int(time.time()) + 60}, SSO_COOKIE_KEY,
                       algorithm="HS256")
    return f"platform_session={token}"


def cookies_set(response: Any) -> dict[str, str]:
    """name -> value of the cookies a response sets ("" for one it deletes)."""
    found = {}
    for line in response.headers.getlist("Set-Cookie"):
        name, _, rest = line.partition("=")
        found[name] = "" if "Max-Age=0" in line else rest.split(";")[0]
    return found


class Reader:
    """A browser, as far as the handshake goes: a cookie jar per host, redirects followed.
    ``/_edge/`` goes to the control app; the rest of the custom domain to the sample app
    behind an edge that accepts no session (a node that has not loaded the key that signed
    it), so the app never sees a user."""

    def __init__(self, control: FlaskClient) -> None:
        self.control, self.app = control, Client(make_app("app-1"), use_cookies=False)
        self.jar: dict[str, dict[str, str]] = {SSO_PLATFORM: {}, BLOG: {}}
        self.jar[SSO_PLATFORM]["platform_session"] = platform_cookie().split("=", 1)[1]

    def get(self, url: str) -> Any:
        parts = urlsplit(url)
        host = parts.hostname or ""
        cookie = "; ".join(f"{k}={v}" for k, v in self.jar.setdefault(host, {}).items())
        target = self.control if parts.path.startswith("/_edge/") else self.app
        response = target.get(url, headers={"Cookie": cookie} if cookie else {})
        for name, value in cookies_set(response).items():
            if value:
                self.jar[host][name] = value
            else:
                self.jar[host].pop(name, None)
        return response

    def visit(self, url: str, limit: int = 20) -> tuple[list[str], Any]:
        """(the addresses it went through, the last response)."""
        hops = []
        for _ in range(limit):
            response = self.get(url)
            hops.append(url)
            if response.status_code not in (301, 302, 303, 307, 308):
                return hops, response
            location = response.headers["Location"]
            url = location if "://" in location else f"https://{urlsplit(url).hostname}{location}"
        raise AssertionError(f"too many redirects: {hops[:8]}")


def test_a_session_the_edge_refuses_costs_one_attempt_never_a_loop(client: FlaskClient) -> None:
    """Review item 1: a session the edge does not accept (a node that has not loaded the key
    that signed it) must not send the reader around the handshake until the browser gives
    up; the next silent attempt waits for that session's expiry."""
    reader = Reader(client)
    hops, page = reader.visit(f"https://{BLOG}/p/1")
    assert page.status_code == 200 and b"Not signed in" in page.data
    assert [urlsplit(hop).path for hop in hops] == [
        "/p/1", "/_edge/sso/login", "/_edge/sso/authorize", "/_edge/sso/callback", "/p/1"]
    assert SESSION_COOKIE in reader.jar[BLOG]
    expires = jwt.decode(reader.jar[BLOG][SESSION_COOKIE], options={"verify_signature": False})
    assert reader.jar[BLOG][TRIED_COOKIE] == str(expires["exp"])
    hops, page = reader.visit(f"https://{BLOG}/p/2")  # no second attempt meanwhile
    assert len(hops) == 1 and page.status_code == 200
    # Once that session has expired, one attempt again (browsers drop the cookie by then;
    # one that keeps it is read the same way).
    reader.jar[BLOG][TRIED_COOKIE] = str(int(time.time()) - 1)
    hops, page = reader.visit(f"https://{BLOG}/p/3")
    assert len(hops) == 5 and page.status_code == 200


@pytest.mark.parametrize("tried, attempt", [
    (None, True), ("1", False), ("garbage", False), ("+600", False), ("-1", True),
    ("9" * 40, False)])
def test_a_silent_login_goes_out_only_when_due(client: FlaskClient, tried: str | None,
                                               attempt: bool) -> None:
    """``+600``: a session expiring in 600 s (the ids stay the same in every xdist worker)."""
    if tried and tried[0] in "+-":
        tried = str(int(time.time()) + int(tried))
    response = client.get(f"https://{BLOG}/_edge/sso/login",
                          query_string={"rd": "/p/1", "prompt": "none"},
                          headers={"Cookie": f"{TRIED_COOKIE}={tried}"} if tried else {})
    assert response.status_code == 302
    assert (urlsplit(response.headers["Location"]).path == "/_edge/sso/authorize") == attempt
    explicit = client.get(f"https://{BLOG}/_edge/sso/login", query_string={"rd": "/p/1"},
                          headers={"Cookie": f"{TRIED_COOKIE}={tried}"} if tried else {})
    assert urlsplit(explicit.headers["Location"]).path == "/_edge/sso/authorize"


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A platform that takes the connection and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/_platform/session"


@pytest.mark.parametrize("platform", ["refusing", "silent"])
def test_a_silent_attempt_comes_back_anonymous_while_the_platform_is_down(
        services_with: ServicesWith, settings: Settings, platform: str,
        request: pytest.FixtureRequest) -> None:
    """Review item 2: a silent attempt is started by a page, not by the reader: a platform
    that is down or slow must cost them a second at most, never an error page."""
    url = request.getfixturevalue("silent_server") if platform == "silent" \
        else f"http://127.0.0.1:{free_port()}/_platform/session"
    services = _activate(services_with(base=with_sso(settings), sso_platform_cookie="",
                                       sso_platform_cookie_key="", sso_introspection_url=url),
                         BLOG)
    client = create_app(services).test_client(use_cookies=False)
    login = client.get(f"https://{BLOG}/_edge/sso/login",
                       query_string={"rd": "/p/1", "prompt": "none"})
    state = parse_qs(urlsplit(login.headers["Location"]).query)["state"][0]
    started = time.monotonic()
    back = client.get(f"https://{SSO_PLATFORM}/_edge/sso/authorize",
                      query_string={"host": BLOG, "state": state, "prompt": "none"},
                      headers={"Cookie": "platform_session=x"})
    assert time.monotonic() - started < 3
    assert back.status_code == 302
    location = urlsplit(back.headers["Location"])
    assert (location.hostname, location.path) == (BLOG, "/_edge/sso/callback")
    assert parse_qs(location.query) == {"error": ["login_required"], "state": [state]}
    landed = client.get(back.headers["Location"], headers={
        "Cookie": f"{STATE_COOKIE}={cookies_set(login)[STATE_COOKIE]}"})
    assert landed.status_code == 302 and landed.headers["Location"] == "/p/1"
    assert cookies_set(landed)[TRIED_COOKIE] == "1"
    if platform == "refusing":  # an explicit sign-in still says sign-in is unavailable
        explicit = client.get(f"https://{SSO_PLATFORM}/_edge/sso/authorize",
                              query_string={"host": BLOG, "state": state},
                              headers={"Cookie": "platform_session=x"})
        assert explicit.status_code == 503 and "unavailable" in explicit.text


def test_a_silent_login_where_sign_in_is_not_offered_comes_back_anonymous(
        client: FlaskClient, services: Services) -> None:
    """Review item 2: an app may start a silent attempt on any host it serves (the platform's
    own, a domain removed meanwhile); where sign-in is not offered it means anonymous."""
    before = client.get(f"https://{OTHER}/_edge/sso/login",
                        query_string={"rd": "/p/9", "prompt": "none"})
    state = parse_qs(urlsplit(before.headers["Location"]).query)["state"][0]
    services.domains.remove(services.domains.get(OTHER))
    for host in (SSO_PLATFORM, "platform.test", OTHER, "unknown.example.test"):
        silent = client.get(f"https://{host}/_edge/sso/login",
                            query_string={"rd": "/p/1", "prompt": "none"})
        assert silent.status_code == 302 and silent.headers["Location"] == "/p/1", host
        assert cookies_set(silent)[TRIED_COOKIE] == "1"
        assert client.get(f"https://{host}/_edge/sso/login",
                          query_string={"rd": "/p/1"}).status_code == 400
    # Bad input is still refused, silent or not.
    assert client.get(f"https://{SSO_PLATFORM}/_edge/sso/login",
                      query_string={"rd": "//evil.test", "prompt": "none"}).status_code == 400
    # A silent attempt that began before the removal comes back anonymous too.
    landed = client.get(f"https://{OTHER}/_edge/sso/callback",
                        query_string={"error": "login_required", "state": state},
                        headers={"Cookie": f"{STATE_COOKIE}={cookies_set(before)[STATE_COOKIE]}"})
    assert landed.status_code == 302 and landed.headers["Location"] == "/p/9"


def _code(client: FlaskClient, state: str, user: str = "victim") -> str:
    minted = client.get(f"https://{SSO_PLATFORM}/_edge/sso/authorize",
                        query_string={"host": BLOG, "state": state},
                        headers={"Cookie": platform_cookie(user)})
    return parse_qs(urlsplit(minted.headers["Location"]).query)["code"][0]


def _login(client: FlaskClient) -> tuple[str, str]:
    response = client.get(f"https://{BLOG}/_edge/sso/login", query_string={"rd": "/p/1"})
    return (parse_qs(urlsplit(response.headers["Location"]).query)["state"][0],
            cookies_set(response)[STATE_COOKIE])


def test_a_code_is_burnt_by_a_callback_refused_for_its_state(client: FlaskClient,
                                                             services: Services) -> None:
    """Review item 3: a victim's browser sent to authorize with an attacker's state gets a
    code for the victim; a callback refused for its state must leave nothing the attacker,
    given its URL, could trade within the code's 60 s."""
    assert services.sso is not None
    state, attacker_cookie = _login(client)
    code = _code(client, state)
    refused = client.get(f"https://{BLOG}/_edge/sso/callback",
                         query_string={"code": code, "state": state})
    assert refused.status_code == 400
    assert services.sso.codes.get(code) is None
    stolen = client.get(f"https://{BLOG}/_edge/sso/callback",
                        query_string={"code": code, "state": state},
                        headers={"Cookie": f"{STATE_COOKIE}={attacker_cookie}"})
    assert stolen.status_code == 400 and SESSION_COOKIE not in cookies_set(stolen)
    # The same when the state cookie is another request's, or the answer carries an error too.
    _, other_cookie = _login(client)
    for query, cookie in (({"state": state}, other_cookie),
                          ({"state": state, "error": "login_required"}, attacker_cookie)):
        code = _code(client, state)
        answer = client.get(f"https://{BLOG}/_edge/sso/callback",
                            query_string={"code": code, **query},
                            headers={"Cookie": f"{STATE_COOKIE}={cookie}"})
        assert answer.status_code == 400 and SESSION_COOKIE not in cookies_set(answer)
        assert services.sso.codes.get(code) is None, query


def test_the_tried_cookie_lasts_as_long_as_the_session(client: FlaskClient) -> None:
    state, cookie = _login(client)
    landed = client.get(f"https://{BLOG}/_edge/sso/callback",
                        query_string={"code": _code(client, state, "alice"), "state": state},
                        headers={"Cookie": f"{STATE_COOKIE}={cookie}"})
    assert landed.status_code == 302
    lines = {line.split("=", 1)[0]: line for line in landed.headers.getlist("Set-Cookie")}
    expires = jwt.decode(cookies_set(landed)[SESSION_COOKIE],
                         options={"verify_signature": False})["exp"]
    assert cookies_set(landed)[TRIED_COOKIE] == str(expires)
    for name in (TRIED_COOKIE, SESSION_COOKIE):
        assert all(flag in lines[name] for flag in ("Max-Age=3600", "Secure", "HttpOnly",
                                                    "SameSite=Lax", "Path=/")), lines[name]

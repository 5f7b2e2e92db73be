"""The SSO handshake's security battery, through the control service's Flask app (the edge's side
is in test_sso_end_to_end.py). The platform user comes from a signed platform cookie here."""
from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from flask.testing import FlaskClient

from admin_app import create_app
from control.wiring import Services
from dnsops.dnscheck import DnsCheck, Problem
from edge.sso import (LOGOUT_COOKIE, SESSION_COOKIE, STATE_COOKIE, TRIED_COOKIE, SsoRefused,
                      return_path)
from devtools.dns_server import KnotServer
from devtools.pebble import PebbleStack
from kit.procs import free_port
from kit.settings import Settings, SettingsError, load_settings
from store import all_items
from tests.conftest import SSO_COOKIE_KEY as COOKIE_KEY
from tests.conftest import ServicesWith, fresh_settings, take_active, with_sso
from tests.conftest import SSO_PLATFORM as PLATFORM

# Its domains are activated once per module: its tests stay on one xdist worker.
pytestmark = pytest.mark.xdist_group("sso")

BLOG, OTHER, PENDING = "blog.example.test", "other.example.test", "pending.example.test"
WILD = "*.wild.example.test"


TSIG = ("edge-key", "c2VjcmV0LWtleS1mb3ItdGhlLWVkZ2UtdGVzdHMtMTIzNA==")


@pytest.fixture(scope="module")
def dns01_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KnotServer, PebbleStack]]:
    """Our zone on knotd, where the registrar automation writes each domain's records, and a
    Pebble that validates DNS-01 (the wildcard's only way) in it; shared by the module."""
    directory = tmp_path_factory.mktemp("sso-ca")
    with KnotServer(directory / "knot", {"example.test": "@ A 127.0.0.1\n"}, tsig=TSIG) as knot:
        # Nothing listens on its HTTP-01 port: every name is validated over DNS-01.
        pebble = PebbleStack(directory / "pebble", http_port=free_port(),
                             dns_server=f"127.0.0.1:{knot.port}")
        try:
            yield knot, pebble
        finally:
            pebble.stop()


@pytest.fixture(scope="module")
def activated(tmp_path_factory: pytest.TempPathFactory,
              dns01_ca: tuple[KnotServer, PebbleStack]) -> Settings:
    """A store with three domains activated over DNS-01 (slow: done once per module) and one
    pending; each test works on its own copy of it."""
    knot, pebble = dns01_ca
    settings = dataclasses.replace(
        with_sso(fresh_settings(tmp_path_factory.mktemp("sso-store") / "data")),
        allow_wildcards=True, acme_directory_url=pebble.directory_url,
        acme_ca_bundle=str(pebble.listener_ca), dns_servers=["127.0.0.1"], dns_port=knot.port,
        registrars={"example.test": {"provider": "rfc2136", "server": "127.0.0.1",
                                     "port": knot.port, "key_name": TSIG[0],
                                     "key_secret": TSIG[1], "publications": ["pub_1"]}})
    built = Services.from_settings(settings)
    try:
        for host in (BLOG, OTHER, WILD):
            built.domains.connect(host, "pub_1")
        take_active(built, [BLOG, OTHER, WILD], lambda: pebble)
        built.domains.connect(PENDING, "pub_1")  # its DNS is not checked yet
    finally:
        built.close()
    return settings


@pytest.fixture
def services(services_with: ServicesWith, activated: Settings, tmp_path: Path) -> Services:
    copy = tmp_path / "sso-data"
    shutil.copytree(activated.data_dir, copy)
    return services_with(base=activated, data_dir=str(copy), sqlite_path=str(copy / "edge.db"),
                         edge_dir=str(copy / "edge"))


@pytest.fixture
def client(services: Services) -> FlaskClient:
    return create_app(services).test_client(use_cookies=False)


def platform_cookie(user: str = "alice", key: str = COOKIE_KEY) -> str:
    token = jwt.encode({"sub": user, "exp": int(time.time()) + 60}, key, algorithm="HS256")
    return f"platform_session={token}"


def login(client: FlaskClient, host: str = BLOG, rd: str = "/p/1") -> tuple[str, str]:
    """(state, state cookie) after /login on ``host``."""
    response = client.get(f"https://{host}/_edge/sso/login", query_string={"rd": rd})
    assert response.status_code == 302, response.text
    location = urlsplit(response.headers["Location"])
    assert (location.scheme, location.hostname, location.path) == \
        ("https", PLATFORM, "/_edge/sso/authorize")
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(STATE_COOKIE) and "Secure" in cookie and "HttpOnly" in cookie
    return parse_qs(location.query)["state"][0], cookie.split(";")[0].split("=", 1)[1]


def authorize(client: FlaskClient, host: str, state: str, cookie: str | None = None) -> Any:
    return client.get(f"https://{PLATFORM}/_edge/sso/authorize",
                      query_string={"host": host, "state": state},
                      headers={"Cookie": cookie or platform_cookie()})


def code_for(client: FlaskClient, host: str, state: str) -> str:
    response = authorize(client, host, state)
    assert response.status_code == 302, response.text
    location = urlsplit(response.headers["Location"])
    assert (location.hostname, location.path) == (host, "/_edge/sso/callback")
    return parse_qs(location.query)["code"][0]


def callback(client: FlaskClient, host: str, code: str, state: str, state_cookie: str) -> Any:
    return client.get(f"https://{host}/_edge/sso/callback",
                      query_string={"code": code, "state": state},
                      headers={"Cookie": f"{STATE_COOKIE}={state_cookie}"})


def test_the_handshake_sets_a_session_for_this_host_only(client: FlaskClient,
                                                         services: Services) -> None:
    state, cookie = login(client)
    response = callback(client, BLOG, code_for(client, BLOG, state), state, cookie)
    assert response.status_code == 302 and response.headers["Location"] == "/p/1"
    session = [c for c in response.headers.getlist("Set-Cookie") if c.startswith(SESSION_COOKIE)]
    assert session and all(flag in session[0] for flag in ("Secure", "HttpOnly", "SameSite=Lax",
                                                           "Path=/"))
    token = session[0].split(";")[0].split("=", 1)[1]
    claims = jwt.decode(token, services.sso.keys.public_pems()[0],  # type: ignore[union-attr]
                        algorithms=["ES256"], audience=BLOG)
    assert claims["sub"] == "alice" and 0 < claims["exp"] - time.time() <= 3600
    assert claims["pub"] == "pub_1"


def test_a_code_works_once(client: FlaskClient) -> None:
    state, cookie = login(client)
    code = code_for(client, BLOG, state)
    assert callback(client, BLOG, code, state, cookie).status_code == 302
    replay = callback(client, BLOG, code, state, cookie)
    assert replay.status_code == 400 and "already used" in replay.text


def test_a_code_for_another_host_is_refused(client: FlaskClient) -> None:
    state, cookie = login(client, host=OTHER)
    code = code_for(client, OTHER, state)
    assert callback(client, BLOG, code, state, cookie).status_code == 400


def test_an_expired_code_is_refused(client: FlaskClient, services: Services) -> None:
    state, cookie = login(client)
    code = code_for(client, BLOG, state)
    assert services.sso is not None
    item = services.sso.codes.get(code)
    assert item is not None
    services.sso.codes.put({**item, "expires_at": time.time() - 1})
    assert callback(client, BLOG, code, state, cookie).status_code == 400


def test_a_state_mismatch_is_refused(client: FlaskClient) -> None:
    state, cookie = login(client)
    other_state, _ = login(client)
    code = code_for(client, BLOG, state)
    # The visitor's browser holds another request's state: a login CSRF, refused.
    _, other_cookie = login(client)
    assert callback(client, BLOG, code, state, other_cookie).status_code == 400
    assert callback(client, BLOG, code, other_state, cookie).status_code == 400


@pytest.mark.parametrize("rd", [
    "//evil.test", "https://evil.test", "/\\evil.test", "%2F%2Fevil.test", "/%2Fevil.test",
    "/%5Cevil.test", "%2f%5cevil.test", "/%252F%252Fevil.test", "javascript:alert(1)",
    "http:/evil.test", "/\tevil", "evil.test"])
def test_off_site_return_addresses_are_refused(client: FlaskClient, rd: str) -> None:
    response = client.get(f"https://{BLOG}/_edge/sso/login", query_string={"rd": rd})
    assert response.status_code == 400
    assert client.get(f"https://{BLOG}/_edge/sso/logout",
                      query_string={"rd": rd}).status_code == 400
    with pytest.raises(SsoRefused):
        return_path(rd)


def test_authorize_only_for_active_custom_domains(client: FlaskClient) -> None:
    state, _ = login(client)
    for host in (PENDING, "unknown.example.test", PLATFORM, "evil.test"):
        assert authorize(client, host, state).status_code == 400, host
    # Nor is the platform's authorize answered on a custom domain.
    response = client.get(f"https://{BLOG}/_edge/sso/authorize",
                          query_string={"host": BLOG, "state": state},
                          headers={"Cookie": platform_cookie()})
    assert response.status_code == 400
    assert client.get(f"https://{PENDING}/_edge/sso/login").status_code == 400


def test_an_anonymous_visitor_is_sent_to_the_platform_login(client: FlaskClient) -> None:
    state, _ = login(client)
    for cookie in ("", platform_cookie(key="another-key-0123456789-0123456789"),
                   platform_cookie(user="bad user\r\n")):
        response = authorize(client, BLOG, state, cookie=cookie or "x=1")
        assert response.status_code == 302
        location = urlsplit(response.headers["Location"])
        assert (location.hostname, location.path) == (PLATFORM, "/login")
        back = parse_qs(location.query)["return_to"][0]
        assert back.startswith(f"https://{PLATFORM}/_edge/sso/authorize?")


def signed_out(response: Any) -> bool:
    return any(c.startswith(SESSION_COOKIE) and "Max-Age=0" in c
               for c in response.headers.getlist("Set-Cookie"))


def test_logout_clears_the_session(client: FlaskClient) -> None:
    response = client.post(f"https://{BLOG}/_edge/sso/logout", query_string={"rd": "/p/1"},
                           headers={"Sec-Fetch-Site": "same-origin"})
    assert response.status_code == 303 and response.headers["Location"] == "/p/1"
    assert signed_out(response)
    assert any(c.startswith(TRIED_COOKIE) for c in response.headers.getlist("Set-Cookie"))


@pytest.mark.parametrize("headers", [
    {}, {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
    {"Sec-Fetch-Site": "none"}, {"Origin": "https://evil.test"}, {"Origin": "null"},
    {"Origin": f"https://{BLOG}", "Sec-Fetch-Site": "cross-site"}])
def test_a_cross_site_logout_signs_nobody_out(client: FlaskClient,
                                              headers: dict[str, str]) -> None:
    """Battery finding 7: a link, an image or a form on another site must not sign a reader
    out (and so stop their silent sign-in for the browser session)."""
    get = client.get(f"https://{BLOG}/_edge/sso/logout", query_string={"rd": "/p/1"},
                     headers={"Cookie": f"{SESSION_COOKIE}=x", **headers})
    assert get.status_code == 200 and not signed_out(get)
    assert not any(c.startswith(TRIED_COOKIE) for c in get.headers.getlist("Set-Cookie"))
    assert '<form method="post" action="/_edge/sso/logout">' in get.text
    post = client.post(f"https://{BLOG}/_edge/sso/logout", data={"rd": "/p/1", "token": "x" * 32},
                       headers={"Cookie": f"{SESSION_COOKIE}=x", **headers})
    assert post.status_code == 200 and not signed_out(post), "a forged token is no proof"
    assert not any(c.startswith(TRIED_COOKIE) for c in post.headers.getlist("Set-Cookie"))


def test_the_confirmation_page_signs_out_from_any_browser(client: FlaskClient) -> None:
    """Its form carries a token that matches a SameSite=Strict cookie: no Fetch Metadata or
    Origin needed. Same origin by Origin alone works too (older browsers)."""
    page = client.get(f"https://{BLOG}/_edge/sso/logout", query_string={"rd": "/p/1"})
    cookie = [c for c in page.headers.getlist("Set-Cookie") if c.startswith(LOGOUT_COOKIE)][0]
    assert "SameSite=Strict" in cookie and "HttpOnly" in cookie
    token = cookie.split(";")[0].split("=", 1)[1]
    assert f'name="token" value="{token}"' in page.text
    confirmed = client.post(f"https://{BLOG}/_edge/sso/logout",
                            data={"rd": "/p/1", "token": token},
                            headers={"Cookie": f"{LOGOUT_COOKIE}={token}", "Origin": "null"})
    assert confirmed.status_code == 303 and signed_out(confirmed)
    assert confirmed.headers["Location"] == "/p/1"
    by_origin = client.post(f"https://{BLOG}/_edge/sso/logout", data={"rd": "/p/2"},
                            headers={"Origin": f"https://{BLOG}"})
    assert by_origin.status_code == 303 and signed_out(by_origin)
    off_site = client.post(f"https://{BLOG}/_edge/sso/logout", data={"rd": "//evil.test"},
                           headers={"Sec-Fetch-Site": "same-origin"})
    assert off_site.status_code == 400


def test_sso_settings_are_checked(tmp_path: Path) -> None:
    base: dict[str, Any] = dict(env={}, data_dir=str(tmp_path))
    with pytest.raises(SettingsError, match="sso_platform_url"):
        load_settings(**base, required=(), sso_platform_url="http://platform.test")
    with pytest.raises(SettingsError, match="sso_platform_login_url"):
        load_settings(**base, required=(), sso_platform_url="https://platform.test")
    with pytest.raises(SettingsError, match="either"):
        load_settings(**base, required=(), sso_platform_url="https://platform.test",
                      sso_platform_login_url="https://platform.test/login")
    with pytest.raises(SettingsError, match="32"):
        load_settings(**base, required=(), sso_platform_url="https://platform.test",
                      sso_platform_login_url="https://platform.test/login",
                      sso_platform_cookie="s", sso_platform_cookie_key="short")


def test_edgectl_rotates_the_signing_key_and_publishes_both(
        services: Services, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgectl.cli import main

    settings = services.settings
    assert services.sso is not None
    first = services.sso.keys.public_pems()
    for name, value in {"API_TOKEN": settings.api_token, "EDGE_TOKEN": settings.edge_token,
                        "ENCRYPTION_KEYS": ",".join(settings.encryption_keys),
                        "DATA_DIR": settings.data_dir, "SSO_PLATFORM_URL": f"https://{PLATFORM}",
                        "SSO_PLATFORM_LOGIN_URL": f"https://{PLATFORM}/login",
                        "SSO_PLATFORM_COOKIE": "platform_session",
                        "SSO_PLATFORM_COOKIE_KEY": COOKIE_KEY}.items():
        monkeypatch.setenv(f"EDGE_{name}", value)
    assert main(["sso", "rotate-key"]) == 0
    assert "new SSO signing key" in capsys.readouterr().out
    published = services.edge_state.meta()
    assert published is not None and len(published["config"]["sso_keys"]) == 2
    assert published["config"]["sso_keys"][1] == first[0]  # the old key still verifies
    monkeypatch.delenv("EDGE_SSO_PLATFORM_URL")
    assert main(["sso", "rotate-key"]) == 2


def test_a_silent_attempt_happens_once_and_never_loops(client: FlaskClient) -> None:
    response = client.get(f"https://{BLOG}/_edge/sso/login",
                          query_string={"rd": "/p/1", "prompt": "none"})
    location = urlsplit(response.headers["Location"])
    state = parse_qs(location.query)["state"][0]
    assert parse_qs(location.query)["prompt"] == ["none"]
    cookie = response.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    # Nobody signed in on the platform: straight back, with no code and no login page.
    back = client.get(f"https://{PLATFORM}/_edge/sso/authorize",
                      query_string={"host": BLOG, "state": state, "prompt": "none"},
                      headers={"Cookie": "x=1"})
    assert back.status_code == 302
    assert parse_qs(urlsplit(back.headers["Location"]).query) == {
        "error": ["login_required"], "state": [state]}
    landed = client.get(f"https://{BLOG}/_edge/sso/callback",
                        query_string={"error": "login_required", "state": state},
                        headers={"Cookie": f"{STATE_COOKIE}={cookie}"})
    assert landed.status_code == 302 and landed.headers["Location"] == "/p/1"
    tried = [c for c in landed.headers.getlist("Set-Cookie") if c.startswith(TRIED_COOKIE)]
    assert tried and "Max-Age" not in tried[0]  # for the browser session
    assert not any(c.startswith(SESSION_COOKIE) for c in landed.headers.getlist("Set-Cookie"))
    # With that cookie, a silent login goes nowhere but back.
    again = client.get(f"https://{BLOG}/_edge/sso/login",
                       query_string={"rd": "/p/1", "prompt": "none"},
                       headers={"Cookie": f"{TRIED_COOKIE}=1"})
    assert again.status_code == 302 and again.headers["Location"] == "/p/1"
    # The "nobody" answer is bound to the state too.
    assert client.get(f"https://{BLOG}/_edge/sso/callback",
                      query_string={"error": "login_required", "state": state + "x"},
                      headers={"Cookie": f"{STATE_COOKIE}={cookie}"}).status_code == 400
    logout = client.post(f"https://{BLOG}/_edge/sso/logout",
                         headers={"Sec-Fetch-Site": "same-origin"})
    assert any(c.startswith(TRIED_COOKIE) for c in logout.headers.getlist("Set-Cookie"))


@pytest.mark.parametrize("host", [
    "1234567890/.wild.example.test", "evil.test/.wild.example.test", "[::1]/.wild.example.test",
    "x?.wild.example.test", "x#.wild.example.test", WILD, ".wild.example.test",
    "blog.example.test.", "blog.example.test:443"])
def test_authorize_refuses_anything_but_a_plain_hostname(client: FlaskClient, host: str) -> None:
    """A wildcard domain covers any first label: only a DNS label may stand there, or the code
    would travel to whatever host the browser reads out of the URL."""
    state, _ = login(client)
    response = authorize(client, host, state)
    assert response.status_code == 400, response.headers.get("Location")


def test_a_wildcard_domain_takes_part_through_its_names(client: FlaskClient) -> None:
    state, _ = login(client, host="a.wild.example.test")
    assert code_for(client, "a.wild.example.test", state)


def test_odd_bytes_are_refused_not_crashed_on(client: FlaskClient) -> None:
    state, cookie = login(client)
    response = client.get(f"https://{BLOG}/_edge/sso/callback",
                          query_string={"code": "c" * 43, "state": "é" * 20},
                          headers={"Cookie": f"{STATE_COOKIE}={cookie}"})
    assert response.status_code == 400


def test_the_platform_cookie_names_its_user_in_sub_only(client: FlaskClient) -> None:
    token = jwt.encode({"sub": "alice", "user": "admin", "exp": int(time.time()) + 60},
                       COOKIE_KEY, algorithm="HS256")
    state, cookie = login(client)
    response = authorize(client, BLOG, state, cookie=f"platform_session={token}")
    code = parse_qs(urlsplit(response.headers["Location"]).query)["code"][0]
    signed = callback(client, BLOG, code, state, cookie)
    session = [c for c in signed.headers.getlist("Set-Cookie") if c.startswith(SESSION_COOKIE)]
    assert jwt.decode(session[0].split(";")[0].split("=", 1)[1],
                      options={"verify_signature": False})["sub"] == "alice"


def test_no_sign_in_for_a_domain_whose_dns_recheck_is_failing(client: FlaskClient,
                                                              services: Services) -> None:
    """Battery finding 1: during the grace period the site is still served, but its DNS may
    lead readers to the publisher's own server, which would collect their one-time codes
    silently (``prompt=none``) and replay them to us. No code is minted or traded meanwhile."""
    state, cookie = login(client)
    early = code_for(client, BLOG, state)  # minted before the failure began
    away = DnsCheck(False, [Problem("dns_not_pointing", "points elsewhere")], {})
    services.lifecycle.recheck(services.domains.get(BLOG), away)
    assert services.domains.get(BLOG)["status"] == "active", "still served during the grace"
    assert services.domains.get(BLOG)["dns_away_since"]
    refused = authorize(client, BLOG, state)
    assert refused.status_code == 400 and "paused" in refused.text
    silent = client.get(f"https://{PLATFORM}/_edge/sso/authorize",
                        query_string={"host": BLOG, "state": state, "prompt": "none"},
                        headers={"Cookie": platform_cookie()})
    assert silent.status_code == 302
    assert parse_qs(urlsplit(silent.headers["Location"]).query) == {
        "error": ["login_required"], "state": [state]}, "no code, even silently"
    assert services.sso is not None
    assert [c["code"] for c in all_items(services.sso.codes)] == [early]
    # The code in flight is burnt, not traded for a session.
    traded = callback(client, BLOG, early, state, cookie)
    assert traded.status_code == 400 and not any(
        c.startswith(SESSION_COOKIE) for c in traded.headers.getlist("Set-Cookie"))
    assert services.sso.codes.get(early) is None
    # On the custom domain: an explicit sign-in says why; a silent one comes back anonymous.
    assert client.get(f"https://{BLOG}/_edge/sso/login").status_code == 400
    anonymous = client.get(f"https://{BLOG}/_edge/sso/login",
                           query_string={"rd": "/p/1", "prompt": "none"})
    assert anonymous.status_code == 302 and anonymous.headers["Location"] == "/p/1"
    assert any(c.startswith(TRIED_COOKIE) for c in anonymous.headers.getlist("Set-Cookie"))
    nobody = client.get(f"https://{BLOG}/_edge/sso/callback",
                        query_string={"error": "login_required", "state": state},
                        headers={"Cookie": f"{STATE_COOKIE}={cookie}"})
    assert nobody.status_code == 302 and nobody.headers["Location"] == "/p/1"
    # Other domains are unaffected, and the domain's sign-in is back once its DNS is.
    other_state, _ = login(client, host=OTHER)
    assert code_for(client, OTHER, other_state)
    services.lifecycle.recheck(services.domains.get(BLOG), DnsCheck(True, [], {}))
    state, cookie = login(client)
    assert callback(client, BLOG, code_for(client, BLOG, state), state, cookie).status_code == 302

"""SSO end to end: real Chromium, real HAProxy verifying the session cookie, Pebble certificates
for the platform domain and a custom domain, the sample app playing the platform."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import time
from pathlib import Path
from typing import Any, Iterator

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from control.wiring import Services
from devtools.demo import PLATFORM_HOST, LocalStack
from devtools.pebble import PebbleStack
from devtools.probe import https_get
from edge.sso import SESSION_COOKIE
from kit.settings import load_settings

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("sso-stack")]

BLOG, OTHER = "blog.example.test", "other.example.test"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pebble: PebbleStack) -> Iterator[LocalStack]:
    # A new signing key signs 1 s after a rotation (60 s by default): a lagging node in 1 s.
    local = LocalStack(tmp_path_factory.mktemp("sso"), pebble=pebble, sso=True,
                       extra_env={"EDGE_SSO_KEY_ACTIVATION_SECONDS": "1"})
    try:
        local.wait_served(PLATFORM_HOST)
        for hostname in (BLOG, OTHER):
            response = local.api("POST", "/api/v1/domains",
                                 json={"hostname": hostname, "publication_id": "pub_1"})
            assert response.status_code == 201, response.text
            local.create_records(response.json()["dns_records"])
        for hostname in (BLOG, OTHER):
            local.wait_active(hostname)
            local.wait_served(hostname)
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def services(stack: LocalStack) -> Iterator[Services]:
    """The control service's own tables, opened beside it, to mint and rotate keys."""
    opened = Services.from_settings(load_settings(env=stack.env(),
                                                  sso_key_activation_seconds=0))
    try:
        yield opened
    finally:
        opened.close()


def _user_seen(stack: LocalStack, cookie: str | None = None, host: str = BLOG,
               **headers: str) -> Any:
    if cookie is not None:
        headers["Cookie"] = f"{SESSION_COOKIE}={cookie}"
    probe = https_get(stack.edge_https_port, host, "/echo", cafile=str(stack.pebble.root_path),
                      headers=headers)
    assert probe.status == 200
    return probe.json()["user"]


def test_sign_in_on_a_custom_domain_in_chromium(stack: LocalStack, browser: Any,
                                                 tmp_path: Path) -> None:
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    article = f"https://{BLOG}:{stack.edge_https_port}/p/1"
    page.goto(article)  # one silent attempt: the platform does not know us yet
    assert page.url == article and page.inner_text("#user") == "Not signed in"
    page.click("#sign-in")
    # Not signed in on the platform yet: its sign-in page, then back through the handshake.
    page.wait_for_url(f"https://{PLATFORM_HOST}:{stack.edge_https_port}/login?*")
    page.fill("#user", "alice")
    page.click("button[type=submit]")
    page.wait_for_url(article)
    assert page.inner_text("#user") == "Signed in as alice"
    page.screenshot(path=str(tmp_path / "signed-in.png"))
    session = {c["name"]: c for c in context.cookies(article)}[SESSION_COOKIE]
    assert (session["httpOnly"], session["secure"], session["sameSite"]) == (True, True, "Lax")
    # Signing out sticks: no silent sign-in right after, though the platform still knows us.
    page.click("text=Sign out")
    page.wait_for_url(article)
    assert page.inner_text("#user") == "Not signed in"
    page.reload()
    assert page.inner_text("#user") == "Not signed in"
    page.click("#sign-in")  # signed in on the platform: no form this time
    page.wait_for_url(article)
    assert page.inner_text("#user") == "Signed in as alice"
    context.close()


def test_a_reader_known_to_the_platform_is_signed_in_without_a_click(stack: LocalStack,
                                                                     browser: Any) -> None:
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    page.goto(f"{stack.platform_url}/login")
    page.fill("#user", "carol")
    page.click("button[type=submit]")
    page.goto(f"https://{BLOG}:{stack.edge_https_port}/p/2")
    assert page.inner_text("#user") == "Signed in as carol"
    context.close()


def _token(services: Services, key: Any = None, **claims: Any) -> str:
    kid, signer = services.sso.keys.signer()  # type: ignore[union-attr]
    now = int(time.time())
    body = {"sub": "bob", "aud": BLOG, "pub": "pub_1", "iat": now, "exp": now + 600, **claims}
    body = {name: value for name, value in body.items() if value is not None}
    return jwt.encode(body, key or signer, algorithm="ES256", headers={"kid": kid})


def test_the_edge_forwards_only_a_valid_session(stack: LocalStack, services: Services) -> None:
    good = _token(services)
    assert _user_seen(stack, good) == "bob"
    header, payload, signature = good.split(".")
    other_payload = jwt.utils.base64url_encode(
        b'{"sub":"root","aud":"%s","exp":%d}' % (BLOG.encode(), time.time() + 600)).decode()
    refused = {
        "tampered": f"{header}.{other_payload}.{signature}",
        "expired": _token(services, exp=int(time.time()) - 5),
        "other domain": _token(services, aud="other.example.test"),
        # Made while the domain belonged to another publication (it changed hands since).
        "other publication": _token(services, pub="pub_2"),
        "no publication": _token(services, pub=None),
        "foreign key": _token(services, key=ec.generate_private_key(ec.SECP256R1())),
        "alg none": jwt.encode({"sub": "root", "aud": BLOG, "exp": int(time.time()) + 600},
                               None, algorithm="none"),
        "garbage": "not-a-token",
    }
    for name, token in refused.items():
        assert _user_seen(stack, token) is None, name
    # Only plain DNS names route: no Host a browser would read as another address.
    odd = https_get(stack.edge_https_port, BLOG, "/echo", cafile=str(stack.pebble.root_path),
                    headers={"Host": f"1234567890/.{BLOG}", "Cookie": f"{SESSION_COOKIE}={good}"})
    assert odd.status == 400
    # A client's own identity header never reaches the apps, with or without a session.
    assert _user_seen(stack, None, **{"X-Edge-User": "mallory"}) is None
    assert _user_seen(stack, good, **{"X-Edge-User": "mallory"}) == "bob"


def test_one_connection_cannot_carry_a_session_to_another_host(stack: LocalStack,
                                                               services: Services) -> None:
    """The edge keeps a verified token's claims for the connection: the audience is still
    checked on every request, whatever Host the next request names."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # no SNI: the edge's default certificate answers
    connection = http.client.HTTPSConnection("127.0.0.1", stack.edge_https_port,
                                             context=context)
    cookie = f"{SESSION_COOKIE}={_token(services)}"
    seen = []
    try:
        for host in (BLOG, OTHER, BLOG):
            connection.request("GET", "/echo", headers={"Host": host, "Cookie": cookie})
            response = connection.getresponse()
            seen.append(json.loads(response.read())["user"])
    finally:
        connection.close()
    assert seen == ["bob", None, "bob"]


def test_a_token_never_inherits_the_claims_of_the_one_before_on_its_connection(
        stack: LocalStack, services: Services) -> None:
    """Review item 4: the edge keeps a verified token's claims for its connection; a claim
    missing from the next token must not be filled in from the one before."""
    context = ssl.create_default_context(cafile=str(stack.pebble.root_path))
    connection = http.client.HTTPSConnection("127.0.0.1", stack.edge_https_port,
                                             context=context)
    connection.sock = context.wrap_socket(
        socket.create_connection(("127.0.0.1", stack.edge_https_port)), server_hostname=BLOG)
    tokens = [_token(services), _token(services, sub="mallory", pub=None),
              # The release before signs no "v"; a version this edge does not know is ignored.
              _token(services, v=2), _token(services, sub="carol"), _token(services, v=1)]
    seen = []
    try:
        for token in tokens:
            connection.request("GET", "/echo", headers={
                "Host": BLOG, "Cookie": f"{SESSION_COOKIE}={token}"})
            seen.append(json.loads(connection.getresponse().read())["user"])
    finally:
        connection.close()
    assert seen == ["bob", None, None, "carol", "bob"]


def _edge_accepts_the_signing_key(stack: LocalStack, services: Services) -> None:
    deadline = time.monotonic() + 30
    while _user_seen(stack, _token(services)) is None:
        assert time.monotonic() < deadline, "the edge never accepted the new key"
        time.sleep(0.2)


def test_a_node_that_lags_a_key_rotation_makes_no_redirect_loop(
        stack: LocalStack, services: Services, browser: Any) -> None:
    """Review item 1: a node refuses sessions signed with a key it has not loaded yet; the
    reader must land anonymous, not start a silent sign-in after each refusal until the
    browser gives up."""
    assert services.sso is not None
    agent = next(process for process in stack.processes if process.name == "agent")
    os.kill(agent.pid, signal.SIGSTOP)  # HAProxy serves on; the node applies nothing new
    try:
        services.sso.keys.rotate()
        services.publisher.refresh()  # what `edgectl sso rotate-key` does
        time.sleep(1.5)  # past the activation: the control service signs with the new key
        context = browser.new_context(ignore_https_errors=True)
        page = context.new_page()
        page.goto(f"{stack.platform_url}/login")
        page.fill("#user", "erin")
        page.click("button[type=submit]")
        page.goto(f"https://{BLOG}:{stack.edge_https_port}/p/4")  # was ERR_TOO_MANY_REDIRECTS
        assert page.inner_text("#user") == "Not signed in"
        context.close()
    finally:
        os.kill(agent.pid, signal.SIGCONT)
    _edge_accepts_the_signing_key(stack, services)


def test_sessions_survive_a_key_rotation(stack: LocalStack, services: Services) -> None:
    assert services.sso is not None
    before = _token(services)
    services.sso.keys.rotate()
    services.lifecycle.publish_routes()
    after = _token(services)  # these services sign with a new key at once (activation 0)
    assert jwt.get_unverified_header(after)["kid"] != jwt.get_unverified_header(before)["kid"]
    _edge_accepts_the_signing_key(stack, services)
    assert _user_seen(stack, before) == "bob"


def test_another_site_cannot_sign_a_reader_out(stack: LocalStack, browser: Any) -> None:
    """Battery finding 7 in Chromium: a link or a form on another origin reaching
    /_edge/sso/logout signs nobody out (which would also stop the silent sign-in for the rest
    of the browser session); the confirmation page's button does."""
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    page.goto(f"{stack.platform_url}/login")
    page.fill("#user", "dave")
    page.click("button[type=submit]")
    article = f"https://{BLOG}:{stack.edge_https_port}/p/3"
    page.goto(article)
    assert page.inner_text("#user") == "Signed in as dave"
    logout = f"https://{BLOG}:{stack.edge_https_port}/_edge/sso/logout"
    page.goto(f"https://{OTHER}:{stack.edge_https_port}/p/1")  # another origin posts a form
    with page.expect_navigation():  # the form's own navigation, else goto aborts it
        page.evaluate("""url => { const form = document.createElement("form");
            form.method = "post"; form.action = url + "?rd=/p/3";
            document.body.append(form); form.submit(); }""", logout)
    page.goto(article)
    assert page.inner_text("#user") == "Signed in as dave", "a cross-site POST signed out"
    page.goto(f"{logout}?rd=/p/3")  # a plain GET, as from a link: a page to confirm
    page.goto(article)
    assert page.inner_text("#user") == "Signed in as dave", "a GET signed out"
    page.goto(f"{logout}?rd=/p/3")
    page.click("button[type=submit]")
    page.wait_for_url(article)
    assert page.inner_text("#user") == "Not signed in"
    context.close()

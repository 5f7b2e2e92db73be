"""The taken domain's page: a publisher who connects a hostname another publication holds learns
who may release it and when its claim expires (never who holds it), gets a TXT record and moves
the domain with "Verify and move"; through Flask's client, then the whole flow in Chromium.
DNS is a real authoritative server (knotd)."""
from __future__ import annotations

import dataclasses
import re
import time
from typing import Any, Callable, Iterator

import jwt
import pytest
from flask.testing import FlaskClient

from admin_app import create_app
from control.wiring import Services
from devtools.dns_server import KnotServer
from kit.settings import Settings
from tests.conftest import SSO_COOKIE_KEY, SSO_PLATFORM, ServicesWith, serving
from tests.test_publisher_settings import PLATFORM, get, post, signed_in, text_of
from tests.test_takeover import Zone

HOST = "blog.example.test"


@pytest.fixture
def zone(knot: Callable[..., KnotServer]) -> Zone:
    return Zone(knot({"example.test": "@ A 127.0.0.1\n"}))


@pytest.fixture
def services(services_with: ServicesWith, sso_settings: Settings, zone: Zone) -> Services:
    built = services_with(base=dataclasses.replace(
        sso_settings, dns_servers=["127.0.0.1"], dns_port=zone.knot.port,
        admin_cookie_secure=False))
    built.domains.connect(HOST, "pub_other")
    return built


@pytest.fixture
def client(services: Services) -> FlaskClient:
    return create_app(services).test_client(use_cookies=False)


def csrf(page: str) -> str:
    return re.search(r'name="csrf_token" value="([0-9a-f]+)"', page).group(1)  # type: ignore[union-attr]


def test_a_taken_domain_says_who_may_release_it_and_when_its_claim_expires(
        client: FlaskClient, services: Services) -> None:
    taken = post(client, "/domains", {"hostname": HOST, "publication": "pub_1"})
    assert taken.status_code == 409
    text = text_of(taken.text)
    assert f"{HOST} is taken" in text
    assert "another publication on this platform" in text
    assert "Only that publication's admins can release it" in text
    assert re.search(r"the claim expires in [67] days ?; then you can connect it", text), text
    expires = services.domains.claim_expires_at(services.domains.get(HOST))
    assert time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expires)) in taken.text
    assert "pub_other" not in taken.text, "the holder is never named"
    assert 'id="ask-button"' in taken.text

    # Once its holder proved it, the claim no longer expires.
    domain = services.domains.get(HOST)
    services.domains.transition(domain, "verified", "set up for this test")
    page = get(client, f"/takeover/{HOST}?publication=pub_1")
    assert "its claim does not expire" in text_of(page.text)
    # Only for one's own publications; nothing for a hostname nobody holds.
    assert get(client, f"/takeover/{HOST}?publication=pub_other").status_code == 404
    assert "is free now" in get(client, "/takeover/free.example.test?publication=pub_1").text


def test_the_page_flow_moves_the_domain(client: FlaskClient, services: Services,
                                        zone: Zone) -> None:
    path = f"/takeover/{HOST}"
    assert post(client, path, {"publication": "pub_1"}, csrf=False).status_code == 400
    asked = post(client, path, {"publication": "pub_1"})
    assert asked.status_code == 303
    assert asked.headers["Location"].endswith(f"{path}?publication=pub_1")
    page = get(client, f"{path}?publication=pub_1")
    token = re.search(r'data-copy="([A-Za-z0-9_-]{30,})"', page.text).group(1)  # type: ignore[union-attr]
    assert f"_edge-takeover.{HOST}" in page.text and 'id="verify-button"' in page.text

    refused = post(client, f"{path}/verify", {"publication": "pub_1"})
    assert refused.status_code == 403
    assert 'role="alert"' in refused.text
    assert f"Create a TXT record _edge-takeover.{HOST}" in text_of(refused.text)
    assert services.domains.get(HOST)["publication_id"] == "pub_other"

    zone.takeover_txt(token)
    assert post(client, f"{path}/verify", {"publication": "pub_1"},
                csrf=False).status_code == 400, "CSRF"
    moved = post(client, f"{path}/verify", {"publication": "pub_1"})
    assert moved.status_code == 303
    assert moved.headers["Location"].endswith(f"/_edge/settings/domains/{HOST}")
    assert services.domains.get(HOST)["publication_id"] == "pub_1"
    mine = get(client, f"/domains/{HOST}")
    assert mine.status_code == 200 and token in mine.text
    assert get(client, f"/domains/{HOST}", **signed_in("bob", ("pub_other",))).status_code == 404


@pytest.mark.slow
def test_chromium_takes_a_domain_over(browser: Any, services: Services, zone: Zone) -> None:
    with serving(create_app(services)) as url:
        base = f"http://{SSO_PLATFORM}:{url.rsplit(':', 1)[1]}"
        context = browser.new_context(viewport={"width": 390, "height": 800})
        token = jwt.encode({"sub": "alice", "publications": ["pub_1"],
                            "exp": int(time.time()) + 600}, SSO_COOKIE_KEY, algorithm="HS256")
        context.add_cookies([{"name": "platform_session", "value": token,
                              "domain": SSO_PLATFORM, "path": "/"}])
        try:
            tab = context.new_page()
            tab.set_default_timeout(15000)
            _flow(tab, base, services, zone)
        finally:
            context.close()


def _fits(tab: Any) -> None:
    width = tab.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], width


def _flow(tab: Any, base: str, services: Services, zone: Zone) -> None:
    tab.goto(f"{base}/_edge/settings/domains")
    tab.fill("#hostname", HOST)
    tab.click("button[type=submit]")
    tab.wait_for_selector("#ask-button")
    assert "another publication on this platform" in tab.inner_text("#holder")
    assert re.search(r"expires in [67] days", tab.inner_text("#claim-expiry"))
    _fits(tab)
    tab.click("#ask-button")
    tab.wait_for_selector("#verify-button")
    record = tab.locator("table.records code.record").all_inner_texts()
    assert record[0] == f"_edge-takeover.{HOST}"
    _fits(tab)
    tab.click("#verify-button")
    tab.wait_for_selector("#takeover-error")
    assert "Create a TXT record" in tab.inner_text("#takeover-error")
    zone.takeover_txt(record[1])
    tab.click("#verify-button")
    tab.wait_for_url(f"{base}/_edge/settings/domains/{HOST}")
    assert services.domains.get(HOST)["publication_id"] == "pub_1"
    assert PLATFORM  # the same platform host the settings pages answer on

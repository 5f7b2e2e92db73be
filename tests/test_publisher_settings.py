"""The publisher settings page through the control service's Flask app: who may see and change
what, CSRF, inline errors. The whole journey in Chromium is in test_publisher_journey.py."""
from __future__ import annotations

import re
import time

import jwt
import pytest
from flask.testing import FlaskClient

from admin_app import create_app
from control.wiring import Services
from kit.procs import free_port
from kit.settings import Settings
from tests.conftest import SSO_COOKIE_KEY as COOKIE_KEY
from tests.conftest import SSO_PLATFORM, ServicesWith

PLATFORM = f"https://{SSO_PLATFORM}"


@pytest.fixture
def services(services_with: ServicesWith, sso_settings: Settings) -> Services:
    built = services_with(
        base=sso_settings,
        # DNS checks ask a loopback port where nothing answers: every check fails, quickly.
        dns_servers=["127.0.0.1"], dns_port=free_port(), dns_timeout=0.2,
        # A zone we would automate, whose server is down: nothing listens on that port.
        registrars={"auto.test": {"provider": "rfc2136", "server": "127.0.0.1",
                                  "port": free_port(), "key_name": "edge-key",
                                  "key_secret": "c2VjcmV0LWtleS1mb3ItdGhlLWVkZ2UtdGVzdHM="}})
    built.domains.connect("theirs.example.test", "pub_other")
    return built


@pytest.fixture
def client(services: Services) -> FlaskClient:
    return create_app(services).test_client(use_cookies=False)


def signed_in(user: str = "alice", publications: tuple[str, ...] = ("pub_1",)) -> dict[str, str]:
    token = jwt.encode({"sub": user, "publications": list(publications),
                        "exp": int(time.time()) + 60}, COOKIE_KEY, algorithm="HS256")
    return {"Cookie": f"platform_session={token}"}


def text_of(html: str) -> str:
    """The page's text as a reader sees it: no tags, spaces collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", html).split()).replace(" ?", "?").replace(" .", ".")


def get(client: FlaskClient, path: str, **headers: str):  # type: ignore[no-untyped-def]
    return client.get(f"{PLATFORM}/_edge/settings{path}", headers=headers or signed_in())


def post(client: FlaskClient, path: str, data: dict[str, str], csrf: bool = True,
         **headers: str):  # type: ignore[no-untyped-def]
    if csrf:
        page = get(client, "/domains", **headers)
        data = {**data, "csrf_token": re.search(r'name="csrf_token" value="([0-9a-f]+)"',
                                                page.text).group(1)}  # type: ignore[union-attr]
    return client.post(f"{PLATFORM}/_edge/settings{path}", data=data,
                       headers=headers or signed_in())


def test_anonymous_visitors_go_to_the_platform_sign_in(client: FlaskClient) -> None:
    response = get(client, "/domains", Cookie="other=1")
    assert response.status_code == 303
    assert response.headers["Location"].startswith(f"{PLATFORM}/login?return_to=https%3A%2F%2F")
    # Only on the platform domain: a custom domain's cookies are not the platform's.
    elsewhere = client.get("https://blog.example.test/_edge/settings/domains",
                           headers=signed_in())
    assert elsewhere.status_code == 404


def test_connect_shows_the_records_and_explains_them(client: FlaskClient) -> None:
    response = post(client, "/domains", {"hostname": "News.Example.Test",
                                         "publication": "pub_1"})
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/_edge/settings/domains/news.example.test")
    page = get(client, "/domains/news.example.test")
    assert page.status_code == 200
    assert "is a subdomain: create a CNAME to edge.platform.test" in page.text
    assert 'data-copy="edge.platform.test"' in page.text
    assert "_edge-challenge.news.example.test" in page.text
    assert "Create these records at the company that hosts your DNS" in page.text
    status = get(client, "/domains/news.example.test/status").get_json()
    assert status["status"] == "pending_dns" and status["publication_id"] == "pub_1"


def test_invalid_input_is_explained_inline(client: FlaskClient) -> None:
    response = post(client, "/domains", {"hostname": "not a domain", "publication": "pub_1"})
    assert response.status_code == 400
    assert 'aria-invalid="true"' in response.text and 'role="alert"' in response.text
    assert 'value="not a domain"' in response.text  # what was typed stays in the field
    taken = post(client, "/domains", {"hostname": "theirs.example.test",
                                      "publication": "pub_1"})
    assert taken.status_code == 409


def test_a_publisher_sees_and_changes_only_their_publications(client: FlaskClient) -> None:
    index = get(client, "/domains")
    assert "pub_1" in index.text and "theirs.example.test" not in index.text
    for path in ("/domains/theirs.example.test", "/domains/theirs.example.test/status",
                 "/domains/theirs.example.test/remove"):
        assert get(client, path).status_code == 404, path
    for path in ("/domains/theirs.example.test/check", "/domains/theirs.example.test/remove"):
        assert post(client, path, {}).status_code == 404, path
    # Nor can they connect a domain for a publication they do not manage.
    response = post(client, "/domains", {"hostname": "x.example.test",
                                         "publication": "pub_other"})
    assert response.status_code == 400
    assert get(client, "/domains/theirs.example.test",
               **signed_in("bob", ("pub_other",))).status_code == 200


def test_every_change_needs_the_csrf_token(client: FlaskClient, services: Services) -> None:
    services.domains.connect("mine.example.test", "pub_1")
    for path, data in (("/domains", {"hostname": "y.example.test", "publication": "pub_1"}),
                       ("/domains/mine.example.test/check", {}),
                       ("/domains/mine.example.test/remove", {})):
        assert post(client, path, data, csrf=False).status_code == 400, path
        wrong = post(client, path, {**data, "csrf_token": "0" * 64}, csrf=False)
        assert wrong.status_code == 400, path
    # A token is bound to its user: bob's does not work for alice.
    bob = get(client, "/domains", **signed_in("bob"))
    token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', bob.text).group(1)  # type: ignore[union-attr]
    assert post(client, "/domains/mine.example.test/remove", {"csrf_token": token},
                csrf=False).status_code == 400
    assert services.domains.get("mine.example.test")["status"] == "pending_dns"


def test_check_now_and_remove_with_confirmation(client: FlaskClient, services: Services) -> None:
    services.domains.connect("mine.example.test", "pub_1")
    checked = post(client, "/domains/mine.example.test/check", {},
                   **{**signed_in(), "Accept": "application/json"})
    assert checked.status_code == 200 and checked.get_json()["validation_errors"]
    confirm = get(client, "/domains/mine.example.test/remove")
    assert confirm.status_code == 200 and "Remove mine.example.test?" in text_of(confirm.text)
    assert services.domains.get("mine.example.test")  # asking is not removing
    removed = post(client, "/domains/mine.example.test/remove", {})
    assert removed.status_code == 303
    assert get(client, "/domains/mine.example.test").status_code == 404


def test_registrar_automation_is_announced_and_its_failure_shown(client: FlaskClient) -> None:
    index = get(client, "/domains")
    assert "We create the records ourselves for domains under" in index.text
    assert "auto.test" in index.text
    assert post(client, "/domains", {"hostname": "blog.auto.test",
                                     "publication": "pub_1"}).status_code == 303
    page = get(client, "/domains/blog.auto.test")
    assert "We manage DNS for auto.test" in page.text
    assert "but creating the records failed" in page.text
    # A domain elsewhere is the publisher's to create.
    post(client, "/domains", {"hostname": "manual.example.test", "publication": "pub_1"})
    assert "Create these records at the company that hosts your DNS" in \
        get(client, "/domains/manual.example.test").text


def test_a_pre_validated_domain_says_its_certificate_is_ready(client: FlaskClient,
                                                               services: Services) -> None:
    domain, _ = services.domains.connect("moving.example.test", "pub_1")
    services.domains.transition(domain, "awaiting_traffic", "certificate ready")
    page = get(client, "/domains/moving.example.test").text
    note = re.search(r'<p id="awaiting-note"\s*(hidden)?\s*>\s*(.*?)</p>', page, re.S)
    assert note is not None and note.group(1) is None, "shown"
    assert "Your certificate is ready" in note.group(2)
    assert 'class="status status-awaiting_traffic"' in page
    assert get(client, "/domains/moving.example.test/status").json["status"] == \
        "awaiting_traffic"

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
                                  "key_secret": "c2VjcmV0LWtleS1mb3ItdGhlLWVkZ2UtdGVzdHM=",
                                  "publications": ["pub_1"]}})
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
    # The zone is pub_1's (its publications): another publication's connect there creates
    # nothing, and its pages do not offer the zone.
    bob = signed_in("bob", ("pub_2",))
    assert "auto.test" not in get(client, "/domains", **bob).text
    assert post(client, "/domains", {"hostname": "shop.auto.test", "publication": "pub_2"},
                **bob).status_code == 303
    page = get(client, "/domains/shop.auto.test", **bob)
    assert "We manage DNS" not in page.text and "Create these records" in text_of(page.text)
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


def test_a_live_domain_card_folds_its_set_up_away(client: FlaskClient,
                                                  services: Services) -> None:
    """One status model: the card, the notes, the errors and the set-up all follow the status
    (the script redraws them from /status, whose JSON carries all of it)."""
    domain, _ = services.domains.connect("card.example.test", "pub_1")
    services.lifecycle.check_now("card.example.test")  # fails: nothing answers DNS here
    waiting = get(client, "/domains/card.example.test").text
    assert 'class="card state-waiting"' in waiting and "Waiting for DNS" in waiting
    assert '<details id="setup" open>' in waiting and "not configured yet" in waiting
    status = get(client, "/domains/card.example.test/status").get_json()
    assert (status["state"], status["status_text"]) == ("waiting", "Waiting for DNS")
    assert status["report"]["misconfigured"] and status["checked_at"]

    services.domains.transition(services.domains.get("card.example.test"), "active", "test",
                                validation_errors=[], last_error=None)
    live = get(client, "/domains/card.example.test").text
    assert 'class="card state-live"' in live and '<span id="status" class="status ' \
        'status-active">Live</span>' in live
    assert '<details id="setup" >' in live, "folded away"
    assert "DNS set-up (done: nothing more to do)" in live
    assert re.search(r'<p id="active-note"\s*>', live) and '<ul id="errors" class="errors" ' \
        'hidden>' in live
    assert get(client, "/domains/card.example.test/status").get_json()["state"] == "live"


def test_times_are_relative_with_the_exact_time_on_hover(client: FlaskClient,
                                                         services: Services) -> None:
    services.domains.connect("when.example.test", "pub_1")
    services.lifecycle.check_now("when.example.test")
    page = get(client, "/domains/when.example.test").text
    checked = re.search(r'<time id="checked-at" datetime="([^"]+)" title="([^"]+)" '
                        r'data-relative>([^<]+)</time>', page)
    assert checked is not None, "the last check is a <time> with the exact time on hover"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", checked.group(1))
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", checked.group(2))
    assert checked.group(3) in ("just now", "5 s ago", "6 s ago")
    assert re.search(r'<time id="next-check-at" datetime="[^"]+" title="[^"]+" '
                     r'data-relative>in (a moment|\d+ s)</time>', page)
    shown = re.sub(r'<time [^>]*>[^<]*</time>', "", page)
    assert not re.search(r"\d\d:\d\d:\d\d", re.sub(r"<[^>]+>", "", shown)), \
        "every time on the page is one <time> element, in one format"


def test_check_now_without_a_script_says_it_checked(client: FlaskClient,
                                                    services: Services) -> None:
    services.domains.connect("check.example.test", "pub_1")
    answer = post(client, "/domains/check.example.test/check", {})
    assert answer.status_code == 303 and answer.headers["Location"].endswith("?checked=1")
    page = get(client, "/domains/check.example.test?checked=1").text
    assert '<span id="check-result" role="status">Checked just now.</span>' in page
    checked = post(client, "/domains/check.example.test/check", {},
                   **{**signed_in(), "Accept": "application/json"}).get_json()
    assert checked["check_ok"] is False and checked["report"]["misconfigured"]


def test_the_www_choice_is_asked_only_for_an_apex_or_a_www_name(client: FlaskClient) -> None:
    def fieldset(page: str) -> str:
        found = re.search(r'<fieldset id="with-www"([^>]*)>', page)
        assert found is not None
        return found.group(1)

    assert "hidden" not in fieldset(get(client, "/domains").text)  # no script: asked
    sub = post(client, "/domains", {"hostname": "blog.example.test", "publication": "pub_x"})
    assert sub.status_code == 400 and "hidden disabled" in fieldset(sub.text)
    apex = post(client, "/domains", {"hostname": "example.test", "publication": "pub_x"})
    assert apex.status_code == 400 and "hidden" not in fieldset(apex.text)
    www = post(client, "/domains", {"hostname": "www.example.test", "publication": "pub_x"})
    assert "hidden" not in fieldset(www.text)
    css = get(client, "/static/publisher.css").text
    assert "input, select {" not in css, "min-width no longer hits the radio buttons"
    assert "input:not([type=radio])" in css


def test_a_pasted_url_connects_its_hostname_and_unicode_reads_as_typed(
        client: FlaskClient) -> None:
    pasted = post(client, "/domains", {"hostname": " https://Pasted.Example.test/path?x ",
                                       "publication": "pub_1"})
    assert pasted.status_code == 303
    assert pasted.headers["Location"].endswith("/domains/pasted.example.test")
    full_stop = post(client, "/domains", {"hostname": "stop.example.test\u3002",
                                          "publication": "pub_1"})
    assert full_stop.headers["Location"].endswith("/domains/stop.example.test")
    bad = post(client, "/domains", {"hostname": "news_1.example.test", "publication": "pub_1"})
    assert bad.status_code == 400 and "Codepoint" not in bad.text
    assert "&#39;_&#39; is not allowed in a hostname" in bad.text
    unicode = post(client, "/domains", {"hostname": "B\u00fccher.example.test",
                                        "publication": "pub_1"})
    assert unicode.headers["Location"].endswith("/domains/xn--bcher-kva.example.test")
    page = get(client, "/domains/xn--bcher-kva.example.test").text
    assert '<h1><span class="host">b\u00fccher.example.test</span> <span class="host ace">' \
        '(xn--bcher-kva.example.test)</span></h1>' in page
    assert '<span class="host">b\u00fccher.example.test</span>' in get(client, "/domains").text


def test_the_removal_prompt_of_a_domain_that_never_went_live(client: FlaskClient,
                                                               services: Services) -> None:
    services.domains.connect("never.example.test", "pub_1")
    never = text_of(get(client, "/domains/never.example.test/remove").text)
    assert "never went live, so no reader loses anything" in never
    assert "no longer reach" not in never and "revoked" not in never
    domain, _ = services.domains.connect("was-live.example.test", "pub_1")
    services.domains.transition(domain, "active", "test")
    served = text_of(get(client, "/domains/was-live.example.test/remove").text)
    assert "Readers will no longer reach your publication at was-live.example.test" in served
    assert "certificate will be revoked" in served

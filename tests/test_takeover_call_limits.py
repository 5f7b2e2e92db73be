"""A publication's calls that make us ask DNS (a check now, a DNS report, a takeover request or
its verification) have a budget a minute (publisher/call_limits.py): past it the publisher API
answers 429 with Retry-After and a sentence, and asks DNS nothing. Through the real API, its DNS
on a real authoritative server (knotd), on each store."""
from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import Callable

import pytest
import requests
from flask import Flask
from werkzeug.test import TestResponse

from admin_app import create_app
from control.wiring import Services
from devtools.dns_server import KnotServer
from kit.settings import Settings
from publisher.call_limits import DNS_CALLS_PER_MINUTE, PUBLISHER_CALLS
from tests.conftest import FakeClock, ServicesWith, serving
from tests.test_publisher_settings import post, text_of
from tests.test_takeover import AUTH, Zone

HOST = "blog.example.test"


@pytest.fixture
def zone(knot: Callable[..., KnotServer]) -> Zone:
    return Zone(knot({"example.test": "@ A 127.0.0.1\n"}))


@pytest.fixture
def services(services_with: ServicesWith, any_backend: Settings, zone: Zone,
             clock: FakeClock) -> Services:
    return services_with(base=dataclasses.replace(
        any_backend, dns_servers=["127.0.0.1"], dns_port=zone.knot.port), clock=clock)


@pytest.fixture
def app(services: Services) -> Flask:
    return create_app(services)


def calls_table_requests(services: Services) -> int:
    return sum(count for (table, _), count in services.backend.operations.items()
               if table == PUBLISHER_CALLS.name)


def test_checks_past_the_budget_answer_429_and_ask_dns_nothing(
        app: Flask, services: Services, clock: FakeClock) -> None:
    services.domains.connect(HOST, "pub_a")
    client = app.test_client()
    token = {"Authorization": f"Bearer {services.tokens.create('pub_a')[0]}"}
    for n in range(DNS_CALLS_PER_MINUTE):
        path = "config" if n % 5 == 0 else "check"  # a DNS report asks DNS too
        answer = client.open(f"/api/v1/domains/{HOST}/{path}", headers=token,
                             method="GET" if path == "config" else "POST")
        assert answer.status_code == 200, (n, answer.get_json())
    checked = services.domains.get(HOST)
    assert checked["attempts"] == DNS_CALLS_PER_MINUTE * 4 // 5

    for path in ("check", "config"):
        refused = client.open(f"/api/v1/domains/{HOST}/{path}", headers=token,
                              method="GET" if path == "config" else "POST")
        assert refused.status_code == 429, refused.get_json()
        wait = int(refused.headers["Retry-After"])
        assert 1 <= wait <= 60
        body = refused.get_json()
        assert body["code"] == "too_many_requests"
        assert body["error"] == (f"publication pub_a made {DNS_CALLS_PER_MINUTE} DNS checks and "
                                 f"takeover calls within 60 seconds, the most we allow; try "
                                 f"again in {wait} seconds")
    # The platform's token acts for the publication: the same budget.
    assert client.post(f"/api/v1/domains/{HOST}/check", headers=AUTH).status_code == 429
    assert services.domains.get(HOST)["attempts"] == checked["attempts"], "DNS was not asked"
    # Another publication's budget is its own.
    asked = client.post(f"/api/v1/domains/{HOST}/takeover", headers=AUTH,
                        json={"publication_id": "pub_b"})
    assert asked.status_code == 200, asked.get_json()

    clock.advance(wait)
    answer = client.post(f"/api/v1/domains/{HOST}/check", headers=token)
    assert answer.status_code == 200, answer.get_json()
    before = calls_table_requests(services)
    assert client.post(f"/api/v1/domains/{HOST}/check", headers=token).status_code == 200
    assert calls_table_requests(services) - before == 1, "an allowed call: one store request"


def test_takeover_requests_and_verifications_share_the_budget(
        app: Flask, services: Services, zone: Zone) -> None:
    services.domains.connect(HOST, "pub_a")
    client = app.test_client()

    def call(path: str) -> TestResponse:
        return client.post(f"/api/v1/domains/{HOST}/{path}", headers=AUTH,
                           json={"publication_id": "pub_b"})

    answers = [call("takeover/verify" if n % 2 else "takeover").status_code
               for n in range(DNS_CALLS_PER_MINUTE)]
    assert set(answers) == {200, 403}, "asked, and refused for want of the TXT record"
    asked = call("takeover")
    assert asked.status_code == 429 and "Retry-After" in asked.headers
    assert "publication pub_b made" in asked.get_json()["error"]
    record = client.post(f"/api/v1/domains/{HOST}/takeover", headers=AUTH,
                         json={"publication_id": "pub_c"}).get_json()["record"]
    zone.takeover_txt(record["value"])
    assert call("takeover/verify").status_code == 429, "its proof waits for the next minute"
    assert services.domains.get(HOST)["publication_id"] == "pub_a"


def test_callers_racing_never_pass_the_budget(app: Flask, services: Services) -> None:
    services.domains.connect(HOST, "pub_a")
    extra = 10
    with serving(app) as url, concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: requests.post(
            f"{url}/api/v1/domains/{HOST}/takeover", headers=AUTH, timeout=30,
            json={"publication_id": "pub_b"}).status_code, range(DNS_CALLS_PER_MINUTE + extra)))
    assert sorted(answers) == [200] * DNS_CALLS_PER_MINUTE + [429] * extra


def test_the_takeover_page_counts_in_the_same_budget(
        services_with: ServicesWith, sso_settings: Settings, zone: Zone) -> None:
    services = services_with(base=dataclasses.replace(
        sso_settings, dns_servers=["127.0.0.1"], dns_port=zone.knot.port))
    services.domains.connect(HOST, "pub_other")
    client = create_app(services).test_client(use_cookies=False)
    path = f"/takeover/{HOST}"
    for n in range(DNS_CALLS_PER_MINUTE):
        answer = post(client, f"{path}/verify" if n % 2 else path, {"publication": "pub_1"})
        assert answer.status_code == (403 if n % 2 else 303), n
    refused = post(client, path, {"publication": "pub_1"})
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "publication pub_1 made" in text_of(refused.text) and 'role="alert"' in refused.text
    # The API's calls for that publication are the same budget.
    assert create_app(services).test_client().post(
        f"/api/v1/domains/{HOST}/takeover", headers=AUTH,
        json={"publication_id": "pub_1"}).status_code == 429


def test_the_settings_pages_check_now_counts_in_the_budget_the_operator_set(
        services_with: ServicesWith, sso_settings: Settings, zone: Zone) -> None:
    services = services_with(base=dataclasses.replace(
        sso_settings, dns_servers=["127.0.0.1"], dns_port=zone.knot.port,
        publisher_dns_calls_per_minute=3))
    services.domains.connect(HOST, "pub_1")
    client = create_app(services).test_client(use_cookies=False)
    for n in range(3):
        assert post(client, f"/domains/{HOST}/check", {}).status_code == 303, n
    refused = post(client, f"/domains/{HOST}/check", {})
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "publication pub_1 made" in refused.text

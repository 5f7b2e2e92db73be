"""Publisher API through Flask's test client over the real SQLite store."""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient

from admin_app import create_app
from control.wiring import Services
from devtools.pebble import PebbleStack
from kit.settings import Settings
from kit.web import MAX_JSON_DEPTH, provided
from tests.conftest import Activate, FakeClock, ServicesWith, on_pebble

AUTH = {"Authorization": "Bearer test-token-0123456789"}
EDGE_AUTH = {"Authorization": "Bearer edge-token-0123456789"}


def connect(client: FlaskClient, hostname: Any, publication_id: Any = "pub_1") -> Any:
    return client.post("/api/v1/domains", headers=AUTH,
                       json={"hostname": hostname, "publication_id": publication_id})


@pytest.mark.parametrize("path,method", [
    ("/api/v1/domains", "post"), ("/api/v1/domains?publication_id=p", "get"),
    ("/api/v1/domains/blog.example.test", "get"), ("/api/v1/domains/blog.example.test", "delete"),
    ("/api/v1/edge/state", "get"), ("/api/v1/edge/nodes", "get"), ("/api/v1/edge/force", "post"),
    ("/api/v1/edge/certs/blog.example.test", "get"), ("/api/v1/edge/nodes/n1", "post")])
@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic test-token-0123456789",
                                    "Bearer ", "Bearer edge-token-0123456789x"])
def test_every_endpoint_needs_the_token(client: FlaskClient, path: str, method: str,
                                        header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = getattr(client, method)(path, headers=headers, json={})
    assert response.status_code == 401
    assert "token" in response.get_json()["error"]


def test_connect_subdomain_returns_records_to_create(client: FlaskClient) -> None:
    response = connect(client, "Blog.EXAMPLE.test.")
    assert response.status_code == 201
    body = response.get_json()
    assert body["hostname"] == "blog.example.test"
    assert body["status"] == "pending_dns"
    assert body["created_at"] and body["updated_at"]
    cname, txt = body["dns_records"]
    assert cname == {"type": "CNAME", "name": "blog.example.test", "value": "edge.platform.test"}
    assert txt["type"] == "TXT" and txt["name"] == "_edge-challenge.blog.example.test"
    assert len(txt["value"]) >= 24
    assert "token" not in body and "version" not in body
    assert "subdomain: create a CNAME to edge.platform.test" in body["instructions"]


def test_connect_apex_asks_for_addresses(client: FlaskClient) -> None:
    body = connect(client, "example.test").get_json()
    assert "cannot be a CNAME" in body["instructions"]
    records = body["dns_records"]
    assert records[0] == {"type": "A", "name": "example.test", "value": "127.0.0.1"}
    assert records[1]["name"] == "_edge-challenge.example.test"


def test_idn_is_stored_as_a_label(client: FlaskClient) -> None:
    assert connect(client, "Bücher.example.test").get_json()["hostname"] == \
        "xn--bcher-kva.example.test"


@pytest.mark.parametrize("typed", ["https://Blog.Example.test/path?x", " blog.example.test. ",
                                   "blog.example.test\u3002", "blog.example.test\uff0e"])
def test_a_pasted_url_or_a_trailing_full_stop_connects_the_hostname(client: FlaskClient,
                                                                    typed: str) -> None:
    response = connect(client, typed)
    assert response.status_code in (200, 201), response.get_json()
    assert response.get_json()["hostname"] == "blog.example.test"


@pytest.mark.parametrize("hostname,reason", [
    ("127.0.0.1", "IP address"), ("[::1]", "IP address"), ("2001:db8::1", "IP address"),
    ("bad_label.example.test", "'_' is not allowed"), ("-lead.example.test", "hyphen"),
    ("a..example.test", "empty label"), ("x" * 64 + ".example.test", "at most 63"),
    (".".join(["abcdefghi"] * 26) + ".test", "too long"), ("co.uk", "public suffix"),
    ("github.io", "public suffix"), ("localhost", "two labels"), ("", "required"),
    (None, "required"), (42, "required"), ("https:///blog", "no hostname"),
    ("platform.test", "platform"), ("www.platform.test", "platform"),
    ("*.example.test", "wildcard"), ("example.123", "numeric")])
def test_bad_hostnames_are_400_with_a_reason(client: FlaskClient, hostname: Any,
                                             reason: str) -> None:
    response = connect(client, hostname)
    assert response.status_code == 400, response.get_json()
    assert reason in response.get_json()["error"]


@pytest.mark.parametrize("publication_id", [None, "", "a b", "x" * 129, "pub\n1", "pub1\n", 7, "_platform"])
def test_bad_publication_ids_are_400(client: FlaskClient, publication_id: Any) -> None:
    response = connect(client, "blog.example.test", publication_id)
    assert response.status_code == 400
    assert "publication_id" in response.get_json()["error"]


@pytest.mark.parametrize("body", [b"not json", b"[]", b'"x"'])
def test_malformed_bodies_are_400(client: FlaskClient, body: bytes) -> None:
    response = client.post("/api/v1/domains", headers={**AUTH, "Content-Type": "application/json"},
                           data=body)
    assert response.status_code == 400


def test_hostname_held_by_another_publication_is_409(client: FlaskClient) -> None:
    assert connect(client, "blog.example.test", "pub_1").status_code == 201
    again = connect(client, "BLOG.example.test", "pub_1")
    assert again.status_code == 200
    taken = connect(client, "blog.example.test", "pub_2")
    assert taken.status_code == 409
    assert "another publication" in taken.get_json()["error"]


def test_get_list_delete(client: FlaskClient) -> None:
    for name in ("a.example.test", "b.example.test", "c.example.test"):
        connect(client, name, "pub_1")
    connect(client, "other.example.test", "pub_2")
    shown = client.get("/api/v1/domains/A.example.test", headers=AUTH).get_json()
    assert shown["hostname"] == "a.example.test" and shown["events"][0]["what"] == "connected"
    first = client.get("/api/v1/domains?publication_id=pub_1&limit=2", headers=AUTH).get_json()
    rest = client.get(f"/api/v1/domains?publication_id=pub_1&cursor={first['next_cursor']}",
                      headers=AUTH).get_json()
    assert [d["hostname"] for d in first["domains"] + rest["domains"]] == \
        ["a.example.test", "b.example.test", "c.example.test"]
    assert client.delete("/api/v1/domains/b.example.test", headers=AUTH).status_code == 200
    connect(client, "b.example.test", "pub_3")
    events = client.get("/api/v1/domains/b.example.test", headers=AUTH).get_json()["events"]
    assert [e["why"] for e in events] == ["for publication pub_3"], "no earlier owner's events"
    client.delete("/api/v1/domains/b.example.test", headers=AUTH)
    assert client.get("/api/v1/domains/b.example.test", headers=AUTH).status_code == 404
    assert client.delete("/api/v1/domains/b.example.test", headers=AUTH).status_code == 404
    assert client.get("/api/v1/domains/1.2.3.4", headers=AUTH).status_code == 400
    for query in ("", "?publication_id=a%20b", "?publication_id=p&limit=0",
                  "?publication_id=p&limit=x"):
        assert client.get(f"/api/v1/domains{query}", headers=AUTH).status_code == 400


def test_health_and_metrics(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    connect(client, "blog.example.test")
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'edge_domains{status="pending_dns"} 1.0' in metrics


def test_challenge_responder_answers_only_known_tokens(client: FlaskClient,
                                                       settings: Settings) -> None:
    services: Services = provided(client.application, Services)
    services.challenges.add("t" * 43, "t" * 43 + ".thumb")
    assert client.get("/.well-known/acme-challenge/" + "t" * 43).get_data() == \
        b"t" * 43 + b".thumb"
    assert client.get("/.well-known/acme-challenge/" + "u" * 43).status_code == 404
    assert client.get("/.well-known/acme-challenge/" + "t" * 43 + "%0a").status_code == 404


def test_each_token_opens_only_its_own_doors(client: FlaskClient) -> None:
    # The platform's token cannot read private keys; the agents' cannot manage domains.
    for path in ("/api/v1/edge/state", "/api/v1/edge/certs/blog.example.test"):
        assert client.get(path, headers=AUTH).status_code == 401
    assert client.get("/api/v1/domains?publication_id=p", headers=EDGE_AUTH).status_code == 401
    assert client.get("/api/v1/edge/state", headers=EDGE_AUTH).status_code == 404


def test_unverified_claim_expires_so_a_squatter_cannot_block_the_owner(
        settings: Settings, clock: FakeClock) -> None:
    services = Services.from_settings(dataclasses.replace(settings, claim_ttl_seconds=3600),
                                      clock=clock)
    try:
        client = create_app(services).test_client()
        assert connect(client, "squat.example.test", "pub_squatter").status_code == 201
        assert connect(client, "squat.example.test", "pub_owner").status_code == 409
        clock.advance(3601)
        taken = connect(client, "squat.example.test", "pub_owner")
        assert taken.status_code == 201 and taken.get_json()["publication_id"] == "pub_owner"
    finally:
        services.close()


def test_wildcards_only_when_enabled(client: FlaskClient, settings: Settings,
                                     services_with: ServicesWith) -> None:
    refused = connect(client, "*.example.test")
    assert refused.status_code == 400 and "allow_wildcards" in refused.get_json()["error"]
    services = services_with(allow_wildcards=True, data_dir=settings.data_dir + "-w",
                             sqlite_path="")
    wild = create_app(services).test_client()
    body = connect(wild, "*.Shop.Example.Test").get_json()
    assert body["hostname"] == "*.shop.example.test"
    assert body["dns_records"][0] == {"type": "CNAME", "name": "*.shop.example.test",
                                      "value": "edge.platform.test"}
    assert body["dns_records"][1]["name"] == "_edge-challenge.shop.example.test"
    assert "DNS-01" in body["instructions"]
    for bad in ("*.co.uk", "*.platform.test", "*.*.example.test", "a.*.example.test"):
        assert connect(wild, bad).status_code == 400, bad


def test_unproven_claims_are_capped_per_publication(
        services_with: ServicesWith, pebble: PebbleStack, activate: Activate) -> None:
    services = services_with(max_pending_domains=2, **on_pebble(pebble))
    client = create_app(services).test_client()
    assert connect(client, "a.example.test").status_code == 201
    assert connect(client, "b.example.test").status_code == 201
    third = connect(client, "c.example.test")
    assert third.status_code == 429 and "waiting for their DNS" in third.get_json()["error"]
    assert connect(client, "a.example.test").status_code == 200  # already its own: fine
    assert connect(client, "c.example.test", "pub_2").status_code == 201
    activate(services, "a.example.test")
    assert connect(client, "c2.example.test").status_code == 201


@pytest.mark.parametrize("path", ["/api/v1/domains", "/api/v1/links",
                                  "/api/v1/domains/blog.example.test/check"])
def test_deeply_nested_json_is_a_400_not_a_crash(control: tuple[Services, str], path: str) -> None:
    """Battery finding 3: 100,000 levels (195 KiB) made the parser recurse into a 500. Every
    JSON body of the app is held to MAX_JSON_DEPTH levels, in the APIs' error shape."""
    _, url = control
    for body in ("[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000,
                 "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)):
        answer = requests.post(url + path, data=body, timeout=30,
                               headers={**AUTH, "Content-Type": "application/json"})
        assert answer.status_code == 400, answer.text
        assert "nests deeper" in answer.json()["error"]
    # Depth within the limit, and brackets inside strings, are not counted as nesting: this
    # body reaches the models, which name the field they refuse (no unknown fields).
    fine = requests.post(url + "/api/v1/domains", timeout=30, headers=AUTH, json={
        "hostname": "blog.example.test", "publication_id": "pub_1", "note": "[" * 100_000})
    assert fine.status_code == 400 and fine.json()["field"] == "note", fine.text
    assert requests.post(url + "/api/v1/domains", timeout=30, headers=AUTH, json={
        "hostname": "blog.example.test", "publication_id": "pub_1"}).status_code == 201


def test_the_json_provider_refuses_deep_nesting_wherever_it_parses(client: FlaskClient) -> None:
    app = client.application
    with pytest.raises(ValueError):
        app.json.loads("[" * 100_000 + "]" * 100_000)
    assert app.json.loads('["[[[[", {"a": [[1]]}]') == ["[[[[", {"a": [[1]]}]

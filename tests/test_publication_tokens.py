"""A publication's own API token: it sees and changes only that publication's short links."""
from __future__ import annotations


import pytest
from flask.testing import FlaskClient

from control.wiring import Services
from devtools.pebble import PebbleStack
from tests.conftest import Activate, ServicesWith, on_pebble

PLATFORM = {"Authorization": "Bearer test-token-0123456789"}


@pytest.fixture
def services(services_with: ServicesWith, pebble: PebbleStack) -> Services:
    return services_with(short_domains=["acme.link", "shared.link"], **on_pebble(pebble))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_publication_token_sees_only_its_own_links(services: Services,
                                                     client: FlaskClient) -> None:
    one = bearer(services.tokens.create("pub_1")[0])
    two = bearer(services.tokens.create("pub_2")[0])
    # Links on a shared short domain are made by the platform, for a publication.
    for owner, slug in (("pub_1", "one"), ("pub_2", "two")):
        made = client.post("/api/v1/links", headers=PLATFORM, json={
            "domain": "shared.link", "target": f"https://example.com/{slug}", "slug": slug,
            "owner": owner})
        assert made.status_code == 201 and made.get_json()["owner"] == owner
    assert client.get("/api/v1/links/shared.link/one", headers=one).status_code == 200
    for method, path, body in (("GET", "/api/v1/links/shared.link/one", None),
                               ("PATCH", "/api/v1/links/shared.link/one", {"disabled": True}),
                               ("DELETE", "/api/v1/links/shared.link/one", None),
                               ("GET", "/api/v1/links/shared.link/one/qr.svg", None)):
        answer = client.open(path, method=method, headers=two, json=body)
        assert answer.status_code == 404, (method, path)  # as if it did not exist
    link = services.links.get("shared.link", "one")
    assert link["disabled"] is False and link["target"] == "https://example.com/one"
    assert client.get("/api/v1/links?owner=pub_1", headers=two).status_code == 403
    listed = client.get("/api/v1/links", headers=two).get_json()["links"]
    assert [l["slug"] for l in listed] == ["two"]
    forged = client.post("/api/v1/links", headers=two, json={
        "domain": "shared.link", "target": "https://example.com/x", "owner": "pub_1"})
    assert forged.status_code == 403
    # The platform's token still sees everything; a publication token is no edge token.
    assert client.get("/api/v1/links/shared.link/one", headers=PLATFORM).status_code == 200
    assert client.get("/api/v1/edge/nodes", headers=two).status_code == 401
    assert client.get("/api/v1/links", headers=bearer("ept_made-up")).status_code == 401


def test_links_on_another_publications_short_domain_are_refused(
        services: Services, client: FlaskClient, activate: Activate) -> None:
    one = bearer(services.tokens.create("pub_1")[0])
    two = bearer(services.tokens.create("pub_2")[0])
    body = {"domain": "acme.link", "target": "https://example.com/", "slug": "promo"}
    # Nobody has connected it: not free for the taking (the links would outlive the claim).
    refused = client.post("/api/v1/links", headers=two, json=body)
    assert refused.status_code == 403 and "connect it first" in refused.get_json()["error"]
    claimed, _ = services.domains.connect("acme.link", "pub_1")
    unproven = client.post("/api/v1/links", headers=one, json=body)
    assert unproven.status_code == 403 and "not verified yet" in unproven.get_json()["error"]
    activate(services, claimed["hostname"])
    assert client.post("/api/v1/links", headers=two, json=body).status_code == 403
    assert client.post("/api/v1/links", headers=one, json=body).status_code == 201
    # pub_1 removes its short domain: its links stop, whoever connects acme.link next.
    services.lifecycle.remove("acme.link")
    assert services.resolver.resolve("acme.link", "promo").status == 410
    assert services.links.get("acme.link", "promo")["disabled"] is True
    # pub_1 cannot enable it again, nor point it elsewhere: not before pub_2 connects acme.link
    # (it would be live on pub_2's domain), nor after (and a path spelt in capitals is the
    # same link).
    revived = {"disabled": False, "target": "https://attacker.example/x"}
    for path in ("/api/v1/links/acme.link/promo", "/api/v1/links/ACME.link/promo"):
        assert client.patch(path, headers=one, json=revived).status_code == 403, path
    activate(services, services.domains.connect("acme.link", "pub_2")[0]["hostname"])
    assert client.patch("/api/v1/links/acme.link/promo", headers=one,
                        json=revived).status_code == 403
    assert services.resolver.resolve("acme.link", "promo").status == 410
    assert services.links.get("acme.link", "promo")["target"] == "https://example.com/"
    # Its owner may still delete it (and only its owner sees it).
    assert client.delete("/api/v1/links/acme.link/promo", headers=two).status_code == 404
    assert client.delete("/api/v1/links/acme.link/promo", headers=one).status_code == 200


def test_a_publication_token_manages_only_its_own_domains(services: Services,
                                                          client: FlaskClient) -> None:
    one = bearer(services.tokens.create("pub_1")[0])
    two = bearer(services.tokens.create("pub_2")[0])
    made = client.post("/api/v1/domains", headers=one, json={"hostname": "blog.one.test"})
    assert made.status_code == 201 and made.get_json()["publication_id"] == "pub_1"
    assert client.post("/api/v1/domains", headers=two, json={
        "hostname": "blog.two.test", "publication_id": "pub_1"}).status_code == 403
    for method, path in (("GET", "/api/v1/domains/blog.one.test"),
                         ("POST", "/api/v1/domains/blog.one.test/check"),
                         ("DELETE", "/api/v1/domains/blog.one.test")):
        assert client.open(path, method=method, headers=two).status_code == 404, path
    assert services.domains.get("blog.one.test")["status"] == "pending_dns"
    assert client.get("/api/v1/domains?publication_id=pub_1", headers=two).status_code == 403
    assert client.get("/api/v1/domains", headers=two).get_json()["domains"] == []
    assert [d["hostname"] for d in client.get("/api/v1/domains", headers=one)
            .get_json()["domains"]] == ["blog.one.test"]
    assert client.get("/api/v1/domains/blog.one.test", headers=one).status_code == 200
    assert client.get("/api/v1/domains?publication_id=pub_1",
                      headers=PLATFORM).status_code == 200
    assert client.get("/api/v1/domains", headers=PLATFORM).status_code == 400, \
        "the platform names the publication"
    assert client.delete("/api/v1/domains/blog.one.test", headers=one).status_code == 200


def test_tokens_are_created_listed_and_revoked_through_the_operator_api(
        services: Services, client: FlaskClient) -> None:
    path = "/api/v1/ops/publications/pub_9/tokens"
    assert client.post(path, json={"label": "cms"}).status_code == 401, "the platform's only"
    created = client.post(path, json={"label": "cms"}, headers=PLATFORM)
    assert created.status_code == 201, created.text
    token = created.json["token"]
    assert token.startswith("ept_") and created.json["publication_id"] == "pub_9"
    assert client.post(path, json={"label": "x"}, headers=bearer(token)).status_code == 401, \
        "a publication's token makes no tokens"
    assert client.get("/api/v1/links", headers=bearer(token)).status_code == 200
    stored = services.tokens.list_for("pub_9")
    assert len(stored) == 1 and token not in repr(stored), "only a hash is stored"
    listed = client.get(path, headers=PLATFORM).json["tokens"]
    assert [(t["token_id"], t["label"]) for t in listed] == [(stored[0]["token_id"], "cms")]
    assert "token" not in listed[0] and listed[0]["created_at"].endswith("+00:00")
    revoke = f"/api/v1/ops/tokens/{stored[0]['token_id']}"
    assert client.delete(revoke, headers=PLATFORM).json == {"revoked": stored[0]["token_id"]}
    assert client.get("/api/v1/links", headers=bearer(token)).status_code == 401
    gone = client.delete(revoke, headers=PLATFORM)
    assert gone.status_code == 404 and "no token" in gone.json["error"]
    refused = client.post("/api/v1/ops/publications/_platform/tokens", json={},
                          headers=PLATFORM)
    assert refused.status_code == 400 and "starting with a letter" in refused.json["error"], \
        "the platform's own publication id gets no token"
    assert client.post(path, json={"label": "x" * 65}, headers=PLATFORM).status_code == 400

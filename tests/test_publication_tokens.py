"""A publication's own API token: it sees and changes only that publication's short links."""
from __future__ import annotations

import subprocess

import pytest
from flask.testing import FlaskClient

from control.wiring import Services
from devtools.pebble import PebbleStack
from edgectl.cli import main
from kit.settings import Settings
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


def test_tokens_are_created_listed_and_revoked_with_edgectl(
        settings: Settings, services: Services, client: FlaskClient,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in {"API_TOKEN": settings.api_token, "EDGE_TOKEN": settings.edge_token,
                        "ENCRYPTION_KEYS": ",".join(settings.encryption_keys),
                        "DATA_DIR": settings.data_dir}.items():
        monkeypatch.setenv(f"EDGE_{name}", value)

    def edgectl(*args: str) -> subprocess.CompletedProcess[str]:
        """``edgectl tokens ...``, run in this process (its own tests start it as one)."""
        capsys.readouterr()
        code = main(["tokens", *args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["edgectl", "tokens", *args], code, out, err)
    created = edgectl("create", "pub_9", "--label", "cms")
    assert created.returncode == 0, created.stderr
    token = created.stdout.split()[-1]
    assert token.startswith("ept_")
    assert client.get("/api/v1/links", headers=bearer(token)).status_code == 200
    stored = services.tokens.list_for("pub_9")
    assert len(stored) == 1 and token not in repr(stored), "only a hash is stored"
    assert edgectl("list", "pub_9").stdout.split() == [stored[0]["token_id"], "cms"]
    assert edgectl("revoke", stored[0]["token_id"]).returncode == 0
    assert client.get("/api/v1/links", headers=bearer(token)).status_code == 401
    assert edgectl("revoke", stored[0]["token_id"]).returncode == 1
    refused = edgectl("create", "_platform")
    assert refused.returncode == 2 and "starting with a letter" in refused.stderr, \
        "the platform's own publication id gets no token"

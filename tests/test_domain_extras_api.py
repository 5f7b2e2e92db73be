"""Redirect domains, origin pools and metadata through the publisher API (Flask's test client,
real SQLite store): what is accepted, and every bad input as a 400 naming its field."""
from __future__ import annotations

from typing import Any, Callable

import pytest
from flask.testing import FlaskClient

from control.wiring import Services
from domains import outbox
from domains.repository import ACTIVE, SUSPENDED
from devtools.pebble import PebbleStack
from publisher.api import UpdateDomain
from tests.conftest import Activate, ServicesWith, on_pebble

AUTH = {"Authorization": "Bearer test-token-0123456789"}


@pytest.fixture
def services(services_with: ServicesWith, pebble: PebbleStack) -> Services:
    return services_with(origin_pools={"canary": ["127.0.0.1:9101"]},
                         metadata_keys=["plan", "region"], **on_pebble(pebble))


def connect(client: FlaskClient, hostname: str, publication_id: str = "pub_1",
            **extra: Any) -> Any:
    return client.post("/api/v1/domains", headers=AUTH,
                       json={"hostname": hostname, "publication_id": publication_id, **extra})


@pytest.fixture
def active(activate: Activate) -> Callable[..., None]:
    """Connects a domain through the API, then takes it through its lifecycle."""

    def connected_and_active(services: Services, client: FlaskClient, hostname: str,
                             publication_id: str = "pub_1") -> None:
        assert connect(client, hostname, publication_id).status_code == 201
        activate(services, hostname)

    return connected_and_active


def patch(client: FlaskClient, hostname: str, **body: Any) -> Any:
    return client.patch(f"/api/v1/domains/{hostname}", headers=AUTH, json=body)


def test_a_redirect_domain_to_an_active_domain(services: Services, client: FlaskClient,
                                               active: Callable[..., None]) -> None:
    active(services, client, "main.example.test")
    created = connect(client, "old.example.test", redirect_to="Main.Example.Test.")
    assert created.status_code == 201, created.get_json()
    assert created.get_json()["redirect_to"] == "main.example.test"
    assert created.get_json()["redirect_status_code"] == 308
    changed = patch(client, "old.example.test", redirect_status_code=301)
    assert changed.status_code == 200
    assert (changed.get_json()["redirect_to"], changed.get_json()["redirect_status_code"]) == \
        ("main.example.test", 301)
    kept = client.delete("/api/v1/domains/main.example.test", headers=AUTH)
    assert kept.status_code == 409 and "old.example.test" in kept.get_json()["error"]
    cleared = patch(client, "old.example.test", redirect_to=None)
    assert (cleared.get_json()["redirect_to"], cleared.get_json()["redirect_status_code"]) == \
        (None, None)
    shown = client.get("/api/v1/domains/old.example.test", headers=AUTH).get_json()
    assert "options changed" in [e["what"] for e in shown["events"]]
    assert client.delete("/api/v1/domains/main.example.test", headers=AUTH).status_code == 200


def test_a_redirect_is_published_only_while_its_target_is_routed(
        services: Services, client: FlaskClient, active: Callable[..., None]) -> None:
    """A node cannot check the target itself (it may be another shard's), so the control
    service takes a redirect off the edge while its target is suspended, and puts it back."""
    active(services, client, "main.example.test")
    active(services, client, "old.example.test")
    assert patch(client, "old.example.test", redirect_to="main.example.test").status_code == 200

    def published() -> str:
        state = services.edge_state.load() or {}
        return next(r.get("extras", "") for r in state["routes"]
                    if r["hostname"] == "old.example.test")

    assert '"to":"main.example.test"' in published()
    for status in (SUSPENDED, ACTIVE):
        target = services.domains.find("main.example.test")
        assert target is not None
        services.domains.transition(target, status, "test", effects=[
            outbox.route("main.example.test", "pub_1")])
        assert ('"to":"main.example.test"' in published()) == (status == ACTIVE), status
    services.lifecycle.publish_routes()  # a replica's reconciliation at start agrees
    assert '"to":"main.example.test"' in published()
    target = services.domains.find("main.example.test")
    assert target is not None
    services.domains.transition(target, SUSPENDED, "no route effect: only a reconciliation")
    assert '"to":"main.example.test"' in published()
    services.lifecycle.publish_routes()
    assert '"to":"main.example.test"' not in published()


def test_redirect_loops_chains_and_foreign_or_inactive_targets_are_refused(
        services: Services, client: FlaskClient, active: Callable[..., None]) -> None:
    active(services, client, "a.example.test")
    active(services, client, "b.example.test")
    active(services, client, "theirs.example.test", "pub_2")
    assert connect(client, "waiting.example.test").status_code == 201
    assert patch(client, "b.example.test", redirect_to="a.example.test").status_code == 200

    def refused(answer: Any, code: str, words: str) -> None:
        body = answer.get_json()
        assert answer.status_code == 400, body
        assert (body["field"], body["code"]) == ("redirect_to", code)
        assert words in body["error"]

    refused(patch(client, "a.example.test", redirect_to="a.example.test"), "redirect_loop",
            "itself")
    refused(patch(client, "a.example.test", redirect_to="b.example.test"), "redirect_loop",
            "loop")
    refused(connect(client, "c.example.test", redirect_to="b.example.test"), "redirect_chain",
            "one hop")
    active(services, client, "d.example.test")
    refused(patch(client, "a.example.test", redirect_to="d.example.test"), "redirect_chain",
            "b.example.test redirects to a.example.test")
    refused(connect(client, "e.example.test", redirect_to="theirs.example.test"),
            "redirect_target", "not a domain of publication pub_1")
    refused(connect(client, "e.example.test", redirect_to="nobody.example.test"),
            "redirect_target", "not a domain of publication pub_1")
    refused(connect(client, "e.example.test", redirect_to="waiting.example.test"),
            "redirect_target", "not active yet")
    assert client.get("/api/v1/domains/e.example.test", headers=AUTH).status_code == 404
    bad_code = connect(client, "e.example.test", redirect_to="a.example.test",
                       redirect_status_code=303)
    assert bad_code.status_code == 400 and bad_code.get_json()["field"] == "redirect_status_code"
    bad_host = connect(client, "e.example.test", redirect_to="https://evil.test/")
    assert bad_host.status_code == 400 and bad_host.get_json()["field"] == "redirect_to"


def test_null_clears_every_patch_field_to_its_default(services: Services, client: FlaskClient,
                                                      active: Callable[..., None]) -> None:
    """docs/publisher.md: in a PATCH, a field left out stays and ``null`` clears it (to its default)."""
    active(services, client, "home.example.test")
    assert connect(client, "away.example.test").status_code == 201
    full = {"redirect_to": "home.example.test", "redirect_status_code": 301,
            "origin_pool": "canary", "metadata": {"plan": "pro"}}
    assert set(full) == set(UpdateDomain.model_fields)  # every PATCH field is covered below
    cleared_to = {"redirect_to": {"redirect_to": None, "redirect_status_code": None},
                  "redirect_status_code": {"redirect_status_code": 308},
                  "origin_pool": {"origin_pool": None}, "metadata": {"metadata": {}}}
    for field, expected in cleared_to.items():
        set_up = patch(client, "away.example.test", **full)
        assert set_up.status_code == 200, set_up.get_json()
        assert {name: set_up.get_json()[name] for name in full} == full
        cleared = patch(client, "away.example.test", **{field: None})
        assert cleared.status_code == 200, cleared.get_json()
        assert {name: cleared.get_json()[name] for name in full} == {**full, **expected}, field
        shown = client.get("/api/v1/domains/away.example.test", headers=AUTH).get_json()
        assert {name: shown[name] for name in full} == {**full, **expected}, field
    left_out = patch(client, "away.example.test", **full).get_json()
    assert {name: patch(client, "away.example.test").get_json()[name] for name in full} == \
        {name: left_out[name] for name in full}  # nothing sent: nothing changes


def test_origin_pools_and_metadata(services: Services, client: FlaskClient) -> None:
    created = connect(client, "m.example.test", origin_pool="canary",
                      metadata={"plan": "pro", "region": "eu-west-1"})
    assert created.status_code == 201, created.get_json()
    assert created.get_json()["origin_pool"] == "canary"
    assert created.get_json()["metadata"] == {"plan": "pro", "region": "eu-west-1"}

    unknown = patch(client, "m.example.test", origin_pool="legacy")
    assert unknown.status_code == 400
    assert unknown.get_json() == {"error": "origin_pool: origin pool 'legacy' is not one of ours "
                                  "(canary)", "field": "origin_pool", "code": "unknown_pool"}
    for metadata, field in [({f"k{n}": "v" for n in range(9)}, "metadata"),
                            ({"plan": "x" * 129}, "metadata.plan"),
                            ({"plan": "has space"}, "metadata.plan"),
                            ({"Plan": "pro"}, "metadata.Plan"),
                            ({"a_b": "pro"}, "metadata.a_b"),
                            ({"k" * 33: "pro"}, "metadata." + "k" * 33),
                            ({"plan": ""}, "metadata.plan")]:
        answer = patch(client, "m.example.test", metadata=metadata)
        assert answer.status_code == 400, metadata
        assert answer.get_json()["field"] == field
    unnamed = patch(client, "m.example.test", metadata={"plan": "pro", "tier": "gold"})
    assert unnamed.status_code == 400
    assert unnamed.get_json() == {
        "error": "metadata.tier: metadata key 'tier' is not one the operator allows (plan, "
                 "region)", "field": "metadata.tier", "code": "unknown_key"}
    too_big = patch(client, "m.example.test", metadata={"plan": "x" * 300})
    assert too_big.status_code == 400 and too_big.get_json()["code"] == "too_long"
    kept = client.get("/api/v1/domains/m.example.test", headers=AUTH).get_json()
    assert kept["metadata"] == {"plan": "pro", "region": "eu-west-1"}
    assert patch(client, "m.example.test", metadata=None).get_json()["metadata"] == {}


def test_unknown_fields_are_named(client: FlaskClient) -> None:
    for body in ({"hostname": "x.example.test", "publication_id": "pub_1", "redirect": "y"},
                 {"redirect_target": "y"}):
        path = "/api/v1/domains" if "hostname" in body else "/api/v1/domains/x.example.test"
        answer = client.open(path, method="POST" if "hostname" in body else "PATCH",
                             headers=AUTH, json=body)
        assert answer.status_code == 400
        field = next(name for name in body if name not in ("hostname", "publication_id"))
        assert answer.get_json() == {"error": f"{field}: unknown field", "field": field,
                                     "code": "unknown_field"}


def test_an_apex_comes_with_its_www_companion_redirecting_to_it(services: Services,
                                                                 client: FlaskClient) -> None:
    created = connect(client, "pair.test")
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert body["pair"]["hostname"] == "www.pair.test"
    assert (body["pair"]["role"], body["pair"]["with_www"]) == ("companion", "redirect")
    assert body["pair"]["redirect_to"] == "pair.test"
    names = {r["name"] for r in body["dns_records"] + body["pair"]["dns_records"]}
    assert names == {"pair.test", "_edge-challenge.pair.test", "www.pair.test",
                     "_edge-challenge.www.pair.test"}
    assert "www.pair.test too" in body["instructions"]
    www = client.get("/api/v1/domains/www.pair.test", headers=AUTH).get_json()
    assert (www["redirect_to"], www["redirect_status_code"]) == ("pair.test", 308)
    assert www["pair"]["hostname"] == "pair.test" and www["pair"]["role"] == "primary"

    # The reverse, serving both; then "none"; a subdomain has no companion to ask for.
    served = connect(client, "www.serve.test", with_www="serve").get_json()
    assert served["pair"]["hostname"] == "serve.test" and served["pair"]["redirect_to"] is None
    assert connect(client, "alone.test", with_www="none").get_json()["pair"] is None
    assert client.get("/api/v1/domains/www.alone.test", headers=AUTH).status_code == 404
    refused = connect(client, "blog.sub.test", with_www="serve")
    assert refused.status_code == 400 and refused.get_json()["field"] == "with_www"
    assert connect(client, "blog.sub.test").get_json()["pair"] is None

    # A companion someone else holds: refused when asked for, left alone by default.
    assert connect(client, "www.taken.test", "pub_2", with_www="none").status_code == 201
    assert connect(client, "taken.test", with_www="redirect").status_code == 409
    assert connect(client, "taken.test").get_json()["pair"] is None

    # Removing either removes both.
    removed = client.delete("/api/v1/domains/www.pair.test", headers=AUTH).get_json()
    assert removed == {"removed": "www.pair.test", "pair_removed": "pair.test"}
    for name in ("pair.test", "www.pair.test"):
        assert client.get(f"/api/v1/domains/{name}", headers=AUTH).status_code == 404


"""A link's delete, or a short domain's release, that fails midway is finished by its repeat
(the API's client asks again, the removal's outbox drains again): the edge's map, which answers
visitors before any owner check, loses the link either way. On each backend, with the real
edge state; a failure is the store throttling one step, as a wrapped method raises it."""
from __future__ import annotations

import dataclasses
import uuid
from typing import Any, Callable

import pytest
from flask.testing import FlaskClient

from admin_app import create_app
from control.wiring import Services
from kit.settings import Settings
from shortlinks.changes import GENERATION
from store import Throttled, all_items
from tests.conftest import ServicesWith
from tests.dynamo_nemesis import Nemesis

AUTH = {"Authorization": "Bearer test-token-0123456789"}
DOMAIN = "acme.link"


@pytest.fixture
def services(services_with: ServicesWith, any_backend: Settings) -> Services:
    return services_with(base=dataclasses.replace(any_backend, short_domains=[DOMAIN]))


def in_the_map(services: Services) -> list[str]:
    """The links the edge's map holds (the published state, as an agent's snapshot has it)."""
    state = services.edge_state.load()
    return sorted(key for key, _ in state["redirects"]) if state else []


def throttle_once(monkeypatch: pytest.MonkeyPatch, owner: object, method: str,
                  when: Callable[..., bool] = lambda *args: True) -> None:
    """``owner.method`` throttled the first time ``when(*args)`` holds, as the store does."""
    real, failed = getattr(owner, method), []

    def throttled(*args: Any, **kwargs: Any) -> Any:
        if not failed and when(*args):
            failed.append(method)
            raise Throttled(f"{method} throttled")
        return real(*args, **kwargs)
    monkeypatch.setattr(owner, method, throttled)


FAILURES: dict[str, Callable[[Services, pytest.MonkeyPatch], None]] = {
    "the change counter": lambda services, patch: throttle_once(
        patch, services.links.changes, "increment", lambda key, *rest: key == GENERATION),
    "the edge state's write": lambda services, patch: throttle_once(
        patch, services.publisher, "link_changed"),
    "a day's delete": lambda services, patch: throttle_once(
        patch, services.links.stats.table, "delete"),  # type: ignore[union-attr]
}


@pytest.mark.parametrize("failing", FAILURES)
def test_a_delete_that_failed_after_the_link_went_is_finished_by_its_repeat(
        services: Services, failing: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client: FlaskClient = create_app(services).test_client()
    for slug in ("promo", "kept"):
        assert client.post("/api/v1/links", headers=AUTH, json={
            "domain": DOMAIN, "target": f"https://example.com/{slug}", "owner": "pub_1",
            "slug": slug}).status_code == 201
    assert services.links.add_visits({f"{DOMAIN}/promo": 3, f"{DOMAIN}/kept": 1}) == 4
    assert in_the_map(services) == [f"{DOMAIN}/kept", f"{DOMAIN}/promo"]
    FAILURES[failing](services, monkeypatch)
    assert client.delete(f"/api/v1/links/{DOMAIN}/promo", headers=AUTH).status_code == 503
    assert services.links.table.get(f"{DOMAIN}/promo") is None, "the link went"
    if failing != "the edge state's write":
        assert in_the_map(services) == [f"{DOMAIN}/kept"], \
            f"the map is told whatever {failing} does"
    again = client.delete(f"/api/v1/links/{DOMAIN}/promo", headers=AUTH)
    assert again.status_code == 404, "nothing to delete"
    assert in_the_map(services) == [f"{DOMAIN}/kept"], "the repeat tells the map"
    days = services.links.stats.table  # type: ignore[union-attr]
    assert [day["link"] for day in all_items(days)] == [f"{DOMAIN}/kept"], "its days went"
    summary = services.links.summary(5)
    assert (summary["links"], summary["visits"]) == (1, 1), "the totals lost it once"
    assert [link["slug"] for link in summary["top"]] == ["kept"]


def test_a_release_repeated_after_the_edge_state_failed_takes_every_link_off_the_map(
        services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """Removing a short domain, or losing it to a takeover, drains ``disable_domain`` from
    the domain's outbox, again after a failure: a link released by the failed drain must
    leave the map too, or it redirects on the next owner's domain."""
    for slug in ("one", "two"):
        services.links.create(DOMAIN, f"https://example.com/{slug}", "pub_1", slug=slug)
    assert in_the_map(services) == [f"{DOMAIN}/one", f"{DOMAIN}/two"]
    throttle_once(monkeypatch, services.publisher, "link_changed")
    with pytest.raises(Throttled):
        services.links.disable_domain(DOMAIN)
    assert services.links.disable_domain(DOMAIN) == 1, "the other, the first drain released"
    assert in_the_map(services) == []
    assert [(link["disabled"], link["released"]) for link in services.links.each()] == \
        [(True, True)] * 2
    assert services.links.summary(0)["disabled"] == 2, "each counted once"


def test_a_link_disabled_leaves_the_map_whatever_the_change_counter_does(
        services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its client may never ask again after the 503: the map must not keep redirecting."""
    services.links.create(DOMAIN, "https://example.com/", "pub_1", slug="off")
    throttle_once(monkeypatch, services.links.changes, "increment",
                  lambda key, *rest: key == GENERATION)
    client = create_app(services).test_client()
    assert client.patch(f"/api/v1/links/{DOMAIN}/off", headers=AUTH,
                        json={"disabled": True}).status_code == 503
    assert services.links.get(DOMAIN, "off")["disabled"] is True
    assert in_the_map(services) == []


@pytest.mark.parametrize("slug", ["spring", None])
def test_a_link_whose_write_lost_its_answer_is_made_once(
        services_with: ServicesWith, nemesis: str, settings: Settings,
        dynamo_nemesis: Nemesis, slug: str | None) -> None:
    """DynamoDB carried out the link's create, and its answer was lost: the store's retry
    met the item it made. A custom slug was answered "taken" although made; a random one
    made a second link, an orphan in the owner's list."""
    services = services_with(base=dataclasses.replace(
        settings, short_domains=[DOMAIN], storage_backend="dynamodb",
        dynamodb_endpoint_url=nemesis, dynamodb_table_prefix=f"l{uuid.uuid4().hex[:8]}_"))
    client = create_app(services).test_client()
    dynamo_nemesis.fail_rate = dynamo_nemesis.slow_rate = 0.0
    dynamo_nemesis.tables, dynamo_nemesis.only = ("short_links",), ("UpdateItem",)
    dynamo_nemesis.lose_next = 1
    made = client.post("/api/v1/links", headers=AUTH, json={
        "domain": DOMAIN, "target": "https://example.com/", "owner": "pub_1",
        **({"slug": slug} if slug else {})})
    assert made.status_code == 201, made.get_json()
    assert dynamo_nemesis.injected["lost"] == 1
    listed = client.get("/api/v1/links?owner=pub_1", headers=AUTH).get_json()["links"]
    assert [link["slug"] for link in listed] == [made.get_json()["slug"]]
    assert in_the_map(services) == [f"{DOMAIN}/{made.get_json()['slug']}"]

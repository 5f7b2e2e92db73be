"""The short-link API over the real store, and `edgectl shortlinks` serving redirects."""
from __future__ import annotations

import dataclasses
import time
import os
import signal
import sys
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from flask.testing import FlaskClient

from admin_app import create_app
from control.wiring import Services
from kit.procs import ManagedProcess, start_listening
from kit.settings import Settings
from shortlinks.errors import InvalidLink, LinkNotFound
from tests.conftest import FakeClock, ServicesWith

AUTH = {"Authorization": "Bearer test-token-0123456789"}
BROWSER = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/124.0 Safari/537.36")


@pytest.fixture
def link_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, short_domains=["acme.link"])


@pytest.fixture
def services(services_with: ServicesWith, link_settings: Settings) -> Services:
    return services_with(base=link_settings)


def test_a_path_spelt_in_capitals_changes_the_edge_s_map_entry_too(
        client: FlaskClient, services: Services) -> None:
    """The store keeps a link under its lowercased domain, and so does the edge's map: a change
    or a removal through ``/ACME.link/...`` reaches that entry, not one of its own."""
    map_entries = services.edge_state.changes.redirects
    assert map_entries is not None
    assert client.post("/api/v1/links", headers=AUTH, json={
        "domain": "acme.link", "target": "https://example.com/a", "owner": "pub_1",
        "slug": "promo"}).status_code == 201
    assert map_entries.get("acme.link/promo")["value"].endswith("https://example.com/a")
    assert client.patch("/api/v1/links/ACME.link/promo", headers=AUTH, json={
        "target": "https://example.com/b"}).status_code == 200
    assert map_entries.get("acme.link/promo")["value"].endswith("https://example.com/b")
    assert client.delete("/api/v1/links/ACME.Link/promo", headers=AUTH).status_code == 200
    assert (map_entries.get("acme.link/promo") or {"removed": True}).get("removed")
    assert map_entries.get("ACME.link/promo") is None and map_entries.get("ACME.Link/promo") is None


def test_create_read_list_update_delete(client: FlaskClient) -> None:
    assert client.post("/api/v1/links", json={}).status_code == 401
    made = client.post("/api/v1/links", headers=AUTH, json={
        "domain": "acme.link", "target": "https://example.com/a", "owner": "pub_1",
        "slug": "spring", "code": 301})
    assert made.status_code == 201 and made.get_json()["slug"] == "spring"
    taken = client.post("/api/v1/links", headers=AUTH, json={
        "domain": "acme.link", "target": "https://example.com/b", "owner": "pub_2",
        "slug": "spring"})
    assert taken.status_code == 409
    for bad in ({"domain": "acme.link", "target": "javascript:x", "owner": "p"},
                {"domain": "nope.link", "target": "https://e.com", "owner": "p"},
                {"domain": "acme.link", "target": "https://e.com"},
                {"domain": "acme.link", "target": "https://e.com", "owner": "p", "code": 200},
                {"domain": "acme.link", "target": "https://e.com", "owner": "p",
                 "max_visits": "lots"}):
        answer = client.post("/api/v1/links", headers=AUTH, json=bad)
        assert answer.status_code == 400 and answer.get_json()["error"], bad
    listed = client.get("/api/v1/links?owner=pub_1", headers=AUTH).get_json()["links"]
    assert [link["slug"] for link in listed] == ["spring"]
    patched = client.patch("/api/v1/links/acme.link/spring", headers=AUTH,
                           json={"target": "https://example.com/new", "disabled": True})
    assert patched.get_json()["disabled"] is True
    assert client.patch("/api/v1/links/acme.link/spring", headers=AUTH,
                        json={"owner": "thief"}).status_code == 400
    assert client.delete("/api/v1/links/acme.link/spring", headers=AUTH).status_code == 200
    assert client.get("/api/v1/links/acme.link/spring", headers=AUTH).status_code == 404


def _children(parent: int, count: int, without: int = 0) -> list[int]:
    """The PIDs of ``parent``'s children, once there are ``count`` of them (``without`` gone)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = [int(pid) for pid in Path(f"/proc/{parent}/task/{parent}/children")
                 .read_text().split()]
        if len(found) == count and without not in found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{parent} has children {found}, wanted {count} without {without}")


def test_edgectl_shortlinks_redirects_and_keeps_its_visit_counts(
        link_settings: Settings, tmp_path: Path) -> None:
    services = Services.from_settings(link_settings)
    services.links.create("acme.link", "https://example.com/landing", "pub_1", slug="go")
    services.close()
    env = {**os.environ, "EDGE_API_TOKEN": link_settings.api_token,
           "EDGE_EDGE_TOKEN": link_settings.edge_token,
           "EDGE_ENCRYPTION_KEYS": link_settings.encryption_keys[0],
           "EDGE_DATA_DIR": link_settings.data_dir, "EDGE_SHORT_DOMAINS": "acme.link"}
    process, port = start_listening(lambda port: ManagedProcess(
        "shortlinks", [sys.executable, "-m", "edgectl", "shortlinks", "--workers", "2"],
        tmp_path / "shortlinks.log", env={**env, "EDGE_SHORTLINKS_PORT": str(port)}))
    try:
        workers = _children(process.popen.pid, count=2)
        os.kill(workers[0], signal.SIGKILL)  # a worker dies: another takes its place
        replaced = _children(process.popen.pid, count=2, without=workers[0])
        assert workers[0] not in replaced
        for agent in (BROWSER, BROWSER, BROWSER, "python-requests/2.32"):
            answer = requests.get(f"http://127.0.0.1:{port}/go", allow_redirects=False,
                                  headers={"Host": "acme.link", "User-Agent": agent}, timeout=5)
            assert answer.status_code == 302
            assert answer.headers["Location"] == "https://example.com/landing"
        process.popen.send_signal(signal.SIGTERM)  # a clean stop flushes buffered visits
        process.popen.wait(timeout=20)
    finally:
        process.stop()
    services = Services.from_settings(link_settings)
    try:
        link = services.links.get("acme.link", "go")
        assert (link["visits"], link["bots"]) == (3, 1)  # a script's request is a bot's
    finally:
        services.close()


def test_qr_codes_for_a_link(client: FlaskClient) -> None:
    client.post("/api/v1/links", headers=AUTH, json={
        "domain": "acme.link", "target": "https://example.com/", "owner": "p", "slug": "qr"})
    svg = client.get("/api/v1/links/acme.link/qr/qr.svg", headers=AUTH)
    assert svg.status_code == 200 and svg.mimetype == "image/svg+xml" and b"<svg" in svg.data
    png = client.get("/api/v1/links/acme.link/qr/qr.png", headers=AUTH)
    assert png.data.startswith(b"\x89PNG")
    assert client.get("/api/v1/links/acme.link/qr/qr.gif", headers=AUTH).status_code == 400


JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                       | st.text(max_size=60),
                       lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
FIELDS = st.sampled_from(["domain", "target", "owner", "slug", "code", "valid_until",
                          "max_visits", "disabled"])


@pytest.mark.slow
@given(body=st.dictionaries(FIELDS, JSONISH, max_size=8))
@hsettings(max_examples=200, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_link_api_never_answers_5xx(client: FlaskClient, body: dict[str, object]) -> None:
    assert client.post("/api/v1/links", headers=AUTH, json=body).status_code < 500
    assert client.patch("/api/v1/links/acme.link/x", headers=AUTH, json=body).status_code < 500


def published(services: Services) -> dict[str, str]:
    """``host/slug -> map value`` of the redirects in the edge state (a snapshot)."""
    state = services.edge_state.load()
    assert state is not None
    return dict(state["redirects"])


def test_every_plain_link_is_published_to_the_edge_as_it_changes(
        link_settings: Settings) -> None:
    services = Services.from_settings(link_settings)
    try:
        client = create_app(services).test_client()
        for slug in ("a", "b"):
            services.links.create("acme.link", f"https://example.com/{slug}", "pub_1", slug=slug)
        services.links.create("acme.link", "https://example.com/l", "pub_1", slug="limited",
                              max_visits=10)
        assert published(services) == {"acme.link/a": "302|0|https://example.com/a",
                                       "acme.link/b": "302|0|https://example.com/b"}, \
            "each as it is made, never a visit-limited one"
        revision = services.edge_state.meta()["revision"]  # type: ignore[index]
        client.patch("/api/v1/links/acme.link/a", headers=AUTH, json={"disabled": True})
        client.patch("/api/v1/links/acme.link/b", headers=AUTH,
                     json={"target": "https://example.com/b2", "code": 301})
        client.patch("/api/v1/links/acme.link/limited", headers=AUTH, json={"max_visits": None})
        assert published(services) == {"acme.link/b": "301|0|https://example.com/b2",
                                       "acme.link/limited": "302|0|https://example.com/l"}
        delta = services.edge_state.changes_since(revision)
        assert delta is not None and sorted(delta["redirect_changes"]) == [
            ["acme.link/a", None], ["acme.link/b", "301|0|https://example.com/b2"],
            ["acme.link/limited", "302|0|https://example.com/l"]], "one change per link"
        client.delete("/api/v1/links/acme.link/b", headers=AUTH)
        assert list(published(services)) == ["acme.link/limited"]
    finally:
        services.close()


def test_a_link_leaves_the_edge_when_it_expires_by_its_due_time(
        link_settings: Settings, clock: FakeClock) -> None:
    services = Services.from_settings(link_settings, clock=clock)
    now = clock()
    try:
        services.links.create("acme.link", "https://example.com/a", "pub_1", slug="brief",
                              valid_until=now + 3600.7)
        services.links.create("acme.link", "https://example.com/b", "pub_1", slug="lasting")
        assert published(services)["acme.link/brief"] == \
            f"302|{int(now + 3600.7)}|https://example.com/a", "HAProxy checks the expiry itself"
        assert services.publisher.expire_links() == 0, "nothing due: one index query"
        clock.advance(3601)
        assert services.publisher.expire_links() == 1
        assert list(published(services)) == ["acme.link/lasting"]
        # A reconciliation (at start) publishes exactly the plain links that are live.
        services.edge_state.change({}, redirects={"acme.link/stale": None})
        services.lifecycle.publish_routes()
        assert list(published(services)) == ["acme.link/lasting"]
    finally:
        services.close()


def test_a_target_the_map_cannot_hold_stays_on_the_python_path(link_settings: Settings) -> None:
    services = Services.from_settings(link_settings)
    try:
        made = services.links.create("acme.link", "https://example.org/", "pub_1", slug="uni")
        # Stored by a version that kept targets as given (they are ASCII URIs now).
        services.links.table.put({**made, "target": "https://bücher.example/ä"})
        services.links.create("acme.link", "https://example.com/b", "pub_1", slug="plain")
        services.lifecycle.publish_routes()  # would raise RenderError on the agents otherwise
        assert list(published(services)) == ["acme.link/plain"]
    finally:
        services.close()


def test_a_non_latin_1_target_is_stored_as_an_ascii_uri(client: FlaskClient) -> None:
    """Battery finding 2 through the API: 201 with the target as it will be served."""
    made = client.post("/api/v1/links", headers=AUTH, json={
        "domain": "acme.link", "target": "https://example.org/日本", "owner": "p", "slug": "jp"})
    assert made.status_code == 201, made.text
    assert made.get_json()["target"] == "https://example.org/%E6%97%A5%E6%9C%AC"
    for target in ("https://example.org/\u2028", "https://example.org/\u2029x"):
        refused = client.post("/api/v1/links", headers=AUTH, json={
            "domain": "acme.link", "target": target, "owner": "p"})
        assert refused.status_code == 400 and "U+2028" in refused.get_json()["error"]
    patched = client.patch("/api/v1/links/acme.link/jp", headers=AUTH,
                           json={"target": "https://例え.jp/ü"})
    assert patched.get_json()["target"] == "https://xn--r8jz45g.jp/%C3%BC"


def test_a_visit_limit_past_a_trillion_is_refused(client: FlaskClient,
                                                  services: Services) -> None:
    """Each visit of a limited link is a conditional ADD against its limit, and DynamoDB's
    numbers hold 38 digits: a larger limit would fail every visit, so none past 10**12 is
    kept, through the API or the service (the CSV import, the settings pages)."""
    body = {"domain": "acme.link", "target": "https://example.com/", "owner": "pub_1"}
    made = client.post("/api/v1/links", headers=AUTH,
                       json={**body, "slug": "most", "max_visits": 10**12})
    assert made.status_code == 201 and made.get_json()["max_visits"] == 10**12
    for limit in (10**12 + 1, 10**40):
        for answer in (client.post("/api/v1/links", headers=AUTH,
                                   json={**body, "slug": "many", "max_visits": limit}),
                       client.patch("/api/v1/links/acme.link/most", headers=AUTH,
                                    json={"max_visits": limit})):
            refused = answer.get_json()
            assert answer.status_code == 400 and refused["field"] == "max_visits", refused
            assert "1000000000000" in refused["error"], refused
        with pytest.raises(InvalidLink, match="at most 1,000,000,000,000"):
            services.links.create("acme.link", "https://example.com/", "pub_1",
                                  max_visits=limit)
        with pytest.raises(InvalidLink, match="at most 1,000,000,000,000"):
            services.links.update("acme.link", "most", {"max_visits": limit})
    assert services.links.get("acme.link", "most")["max_visits"] == 10**12
    with pytest.raises(LinkNotFound):
        services.links.get("acme.link", "many")

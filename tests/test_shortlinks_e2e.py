"""Short domains end to end: connected through the domains lifecycle (a Pebble certificate),
routed by the edge to `edgectl shortlinks` (cold links) or answered by HAProxy from its map
(hot links), over HTTPS through real processes."""
from __future__ import annotations

import ssl
import time
from typing import Callable, Iterator

import pytest

from devtools.demo import LocalStack
from devtools.pebble import PebbleStack
from devtools.probe import Probe, https_get

SHORT = "acme.example.test"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory,
          pebble: PebbleStack) -> Iterator[LocalStack]:
    local = LocalStack(tmp_path_factory.mktemp("links-stack"), pebble=pebble, shortlinks=True,
                       extra_env={"EDGE_SHORT_DOMAINS": SHORT, "EDGE_HOT_LINKS": "1"})
    yield local
    local.stop()


def get(stack: LocalStack, path: str) -> Probe:
    return https_get(stack.edge_https_port, SHORT, path, cafile=str(stack.pebble.root_path))


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, ssl.SSLError):  # the edge does not serve the new certificate yet
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_short_domain_redirects_on_the_python_path_and_the_map_path(stack: LocalStack) -> None:
    created = stack.api("POST", "/api/v1/domains",
                        json={"hostname": SHORT, "publication_id": "pub_1"})
    assert created.status_code == 201, created.text
    stack.create_records(created.json()["dns_records"])
    stack.wait_active(SHORT)
    # A visit limit keeps "cold" off the map (HAProxy could not enforce it): Python answers it.
    for body in ({"slug": "cold", "target": "https://example.com/cold", "max_visits": 1000},
                 {"slug": "hot", "target": "https://example.com/hot", "code": 301}):
        response = stack.api("POST", "/api/v1/links", json={"domain": SHORT, "owner": "pub_1",
                                                            **body})
        assert response.status_code == 201, response.text
    # An edit republishes the hot set at once (else within hot_refresh).
    assert stack.api("PATCH", f"/api/v1/links/{SHORT}/hot", json={"code": 308}).ok

    cold_visits = 0

    def cold_served() -> bool:
        nonlocal cold_visits
        cold_visits += get(stack, "/cold").status == 302
        return cold_visits > 0

    wait_for(cold_served, "the cold link through the edge")
    cold = get(stack, "/cold")
    cold_visits += 1
    assert cold.headers["location"] == "https://example.com/cold"
    assert cold.headers["cache-control"] == "private, no-store"
    assert cold.headers["x-robots-tag"] == "noindex"
    assert "x-request-id" in cold.headers, "went through a backend (the redirect app)"
    assert "Pebble" in cold.certificate.issuer.rfc4514_string()
    assert get(stack, "/nope").status == 404

    hot_visits = 0

    def hot_from_map() -> bool:
        nonlocal hot_visits
        probe = get(stack, "/hot")
        hot_visits += probe.status == 308
        return probe.status == 308 and "x-request-id" not in probe.headers

    wait_for(hot_from_map, "the hot link answered by HAProxy from its map")
    hot = get(stack, "/hot")
    hot_visits += 1
    assert hot.headers["location"] == "https://example.com/hot"
    assert hot.headers["cache-control"] == "public, max-age=86400"
    assert hot.headers["x-robots-tag"] == "noindex"
    assert "server" not in hot.headers and "strict-transport-security" not in hot.headers

    # Proof there is no Python in the map path: stop the redirect app, the hot link still works.
    links = next(p for p in stack.processes if p.name == "shortlinks")
    links.stop()  # each of its processes flushes its buffered visit counts on the way out
    assert stack.api("GET", f"/api/v1/links/{SHORT}/cold").json()["visits"] == cold_visits
    for _ in range(5):
        assert get(stack, "/hot").status == 308
        hot_visits += 1
    assert get(stack, "/cold").status == 503

    # Every visit is counted once, whichever path answered it (map-served ones through the
    # stick table -> agent -> control service).
    def counted() -> int:
        return int(stack.api("GET", f"/api/v1/links/{SHORT}/hot").json()["visits"])
    wait_for(lambda: counted() >= hot_visits, f"{hot_visits} hot visits counted")
    time.sleep(1.0)  # a few more agent rounds: nothing is counted twice
    assert counted() == hot_visits

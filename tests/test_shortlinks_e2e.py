"""Short domains end to end: connected through the domains lifecycle (a Pebble certificate),
routed by the edge to `edgectl shortlinks` (cold links) or answered by HAProxy from its map
(hot links), over HTTPS through real processes."""
from __future__ import annotations

import ssl
import time
from typing import Callable, Iterator

import pytest

from control.publisher import EXPIRED_LINKS_EVERY
from devtools.demo import LocalStack
from devtools.pebble import PebbleStack
from devtools.probe import Probe, https_get
from edge.node import EdgeNode

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("links-stack")]

SHORT = "acme.example.test"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory,
          pebble: PebbleStack) -> Iterator[LocalStack]:
    local = LocalStack(tmp_path_factory.mktemp("links-stack"), pebble=pebble, shortlinks=True,
                       extra_env={"EDGE_SHORT_DOMAINS": SHORT})
    yield local
    local.stop()


def get(stack: LocalStack, path: str, timeout: float = 10) -> Probe:
    return https_get(stack.edge_https_port, SHORT, path, cafile=str(stack.pebble.root_path),
                     timeout=timeout)


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


def connect(stack: LocalStack, host: str = SHORT) -> None:
    """A short domain, connected through the lifecycle (once per module) and on the edge."""
    if stack.api("GET", f"/api/v1/domains/{host}").status_code != 200:
        created = stack.api("POST", "/api/v1/domains",
                            json={"hostname": host, "publication_id": "pub_1"})
        assert created.status_code == 201, created.text
        stack.create_records(created.json()["dns_records"])
    stack.wait_active(host)
    wait_for(lambda: https_get(stack.edge_https_port, host, "/nope",
                               cafile=str(stack.pebble.root_path)).status == 404,
             "the short domain on the edge")


def from_map(probe: Probe, location: str, status: int = 302) -> bool:
    """Answered by HAProxy from its map (no backend: no request id) with this redirect."""
    return probe.status == status and probe.headers.get("location") == location \
        and "x-request-id" not in probe.headers


def node_map(stack: LocalStack) -> dict[str, str]:
    """The redirects map as the running HAProxy holds it (its runtime API)."""
    node = EdgeNode(stack.directory / "data" / "edge")
    return node.runtime.show_map(node.current.resolve() / "redirects.map")


def test_every_plain_link_reaches_the_map_through_the_long_poll_and_limited_ones_stay_exact(
        stack: LocalStack) -> None:
    connect(stack)
    response = stack.api("POST", "/api/v1/links", json={
        "domain": SHORT, "owner": "pub_1", "slug": "fresh", "target": "https://example.com/f"})
    assert response.status_code == 201, response.text
    # The agent's long poll hands the new link to the node: no reload, no timer.
    wait_for(lambda: from_map(get(stack, "/fresh"), "https://example.com/f"),
             "a new plain link answered from the map", timeout=15)
    assert stack.api("PATCH", f"/api/v1/links/{SHORT}/fresh",
                     json={"target": "https://example.com/g", "code": 307}).ok
    wait_for(lambda: from_map(get(stack, "/fresh"), "https://example.com/g", 307),
             "the edit in the map", timeout=15)
    assert node_map(stack)[f"{SHORT}/fresh"] == "307|0|https://example.com/g"

    # An expiring link: answered from the map until its second, then by the redirect app
    # (410). Its entry leaves the map on the worker's next ask of the expiry index, at most
    # EXPIRED_LINKS_EVERY after the due time (HAProxy itself stops answering it at its second).
    until = time.time() + 5.0  # in the map well before
    assert stack.api("POST", "/api/v1/links", json={
        "domain": SHORT, "owner": "pub_1", "slug": "brief", "target": "https://example.com/b",
        "valid_until": until}).status_code == 201
    wait_for(lambda: from_map(get(stack, "/brief"), "https://example.com/b"),
             "the expiring link in the map", timeout=max(0.1, until - time.time()))
    time.sleep(max(0.0, until - time.time()))
    gone = get(stack, "/brief")
    assert gone.status == 410 and "x-request-id" in gone.headers, "past it: the Python path"
    wait_for(lambda: f"{SHORT}/brief" not in node_map(stack), "the expired entry removed",
             timeout=EXPIRED_LINKS_EVERY + 5.0)

    # UTM parameters make a fixed URL: the map holds it with them; device targets ride along
    # in the same entry, HAProxy picking one by User-Agent.
    assert stack.api("POST", "/api/v1/links", json={
        "domain": SHORT, "owner": "pub_1", "slug": "tagged", "target": "https://example.com/t",
        "utm": {"utm_source": "news", "utm_campaign": "fall"}}).status_code == 201
    wait_for(lambda: from_map(get(stack, "/tagged"),
                              "https://example.com/t?utm_source=news&utm_campaign=fall"),
             "a UTM link answered from the map", timeout=15)
    assert stack.api("POST", "/api/v1/links", json={
        "domain": SHORT, "owner": "pub_1", "slug": "device", "target": "https://example.com/d",
        "device_targets": {"ios": "https://apps.apple.com/app/id1"}}).status_code == 201
    wait_for(lambda: from_map(get(stack, "/device"), "https://example.com/d"),
             "a device link answered from the map", timeout=15)
    assert node_map(stack)[f"{SHORT}/device"] == ("d302|0|https://example.com/d|https://apps."
                                                  "apple.com/app/id1|https://example.com/d"
                                                  "|https://example.com/d")

    # A visit limit keeps a link on the Python path, exact across its processes.
    assert stack.api("POST", "/api/v1/links", json={
        "domain": SHORT, "owner": "pub_1", "slug": "three", "target": "https://example.com/3",
        "max_visits": 3}).status_code == 201
    assert f"{SHORT}/three" not in node_map(stack)
    wait_for(lambda: get(stack, "/three").status in (302, 410), "the limited link served")
    answers = [get(stack, "/three") for _ in range(5)]
    served = 1 + sum(probe.status == 302 for probe in answers)  # the one wait_for saw
    assert served == 3 and answers[-1].status == 410
    assert all("x-request-id" in probe.headers for probe in answers), "never from the map"


def test_short_domain_redirects_on_the_python_path_and_the_map_path(stack: LocalStack) -> None:
    connect(stack)
    # A visit limit keeps "cold" off the map (HAProxy could not enforce it): Python answers it.
    for body in ({"slug": "cold", "target": "https://example.com/cold", "max_visits": 1000},
                 {"slug": "hot", "target": "https://example.com/hot", "code": 301}):
        response = stack.api("POST", "/api/v1/links", json={"domain": SHORT, "owner": "pub_1",
                                                            **body})
        assert response.status_code == 201, response.text
    # An edit reaches the edge's map at once.
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
        # Every redirect is a counted visit, also one that met the link's previous code (301)
        # before the PATCH reached this node's map.
        hot_visits += probe.status in (301, 302, 307, 308)
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
    # HAProxy tries the app again for a few seconds (a restart costs no request), then 503.
    assert get(stack, "/cold", timeout=30).status == 503

    # Every visit is counted once, whichever path answered it (map-served ones through the
    # stick table -> agent -> control service).
    def counted() -> int:
        return int(stack.api("GET", f"/api/v1/links/{SHORT}/hot").json()["visits"])
    wait_for(lambda: counted() >= hot_visits, f"{hot_visits} hot visits counted")
    time.sleep(1.0)  # a few more agent rounds: nothing is counted twice
    assert counted() == hot_visits

"""Short domains end to end: connected through the domains lifecycle (a Pebble certificate),
routed by the edge to `edgectl shortlinks` (cold links) or answered by HAProxy from its map
(hot links), over HTTPS through real processes."""
from __future__ import annotations

import datetime
import http.client
import socket
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
    return https_get(stack.edge_https_port, SHORT, path, cafile=str(stack.pebble.root_path),
                     headers={"User-Agent": DESKTOP})


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


def connect_short_domain(stack: LocalStack) -> None:
    """The short domain connected and active (once for the module's tests)."""
    created = stack.api("POST", "/api/v1/domains",
                        json={"hostname": SHORT, "publication_id": "pub_1"})
    if created.status_code == 200 and created.json()["status"] == "active":
        return  # connected by an earlier test (connecting again is idempotent)
    assert created.status_code == 201, created.text
    stack.create_records(created.json()["dns_records"])
    stack.wait_active(SHORT)


IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Version/17.0 Safari/604.1"
ANDROID = "Mozilla/5.0 (Linux; Android 14; Pixel 8) Chrome/124.0 Mobile Safari/537.36"
DESKTOP = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36"


def head(stack: LocalStack, path: str, agent: str) -> int:
    context = ssl.create_default_context(cafile=str(stack.pebble.root_path))
    connection = http.client.HTTPSConnection("127.0.0.1", stack.edge_https_port, timeout=10,
                                             context=context)
    connection.sock = context.wrap_socket(
        socket.create_connection(("127.0.0.1", stack.edge_https_port), 10),
        server_hostname=SHORT)
    try:
        connection.request("HEAD", path, headers={"Host": SHORT, "User-Agent": agent})
        return connection.getresponse().status
    finally:
        connection.close()


def test_rules_and_visit_stats_on_the_python_path_through_the_edge(stack: LocalStack) -> None:
    """Issue 18: per-device targets and UTM fields served by Python behind HAProxy, an
    exhausted link sent to its expired_url, bots and HEAD counted apart, and the day's stats
    adding up exactly; bad input answered 400."""
    connect_short_domain(stack)
    rules = {"targets": {"ios": "https://apps.apple.com/app/id1",
                         "android": "https://play.google.com/store/apps/details?id=x"},
             "utm": {"utm_source": "e2e", "utm_medium": "short link"}}
    for body in ({"slug": "app", "target": "https://example.com/app", **rules},
                 {"slug": "once", "target": "https://example.com/once", "max_visits": 1,
                  "expired_url": "https://example.com/sold-out"}):
        response = stack.api("POST", "/api/v1/links", json={"domain": SHORT, "owner": "pub_1",
                                                            **body})
        assert response.status_code == 201, response.text
    for bad, field in (({"targets": {"ios": "javascript:alert(1)"}}, "targets.ios"),
                       ({"expired_url": f"https://{SHORT.upper()}/loop"}, "expired_url"),
                       ({"utm": {"utm_source": "x" * 201}}, "utm.utm_source"),
                       ({"targets": {"tv": "https://example.com/"}}, "targets.tv")):
        refused = stack.api("POST", "/api/v1/links", json={
            "domain": SHORT, "owner": "pub_1", "target": "https://example.com/", **bad})
        assert (refused.status_code, refused.json()["field"]) == (400, field), refused.text
    for query in ("days=0", "days=91", "days=ten", "format=xml", "days=7&extra=1"):
        refused = stack.api("GET", f"/api/v1/links/{SHORT}/app/stats?{query}")
        assert refused.status_code == 400 and refused.json()["error"], query
    assert stack.api("GET", f"/api/v1/links/{SHORT}/nope/stats").status_code == 404

    def served(agent: str, referrer: str = "") -> Probe:
        return https_get(stack.edge_https_port, SHORT, "/app", cafile=str(stack.pebble.root_path),
                         headers={"User-Agent": agent, "Referer": referrer})

    wait_for(lambda: served(DESKTOP).status == 302, "the link through the edge")  # 1 visit
    utm = "utm_source=e2e&utm_medium=short%20link"
    iphone = served(IPHONE, "https://news.example.org/post/1")
    assert (iphone.status, iphone.headers["location"]) == (
        302, f"https://apps.apple.com/app/id1?{utm}")
    assert iphone.headers["vary"] == "User-Agent" and "x-request-id" in iphone.headers
    assert served(ANDROID).headers["location"] == \
        f"https://play.google.com/store/apps/details?id=x&{utm}"
    assert served(DESKTOP).headers["location"] == f"https://example.com/app?{utm}"
    bot = served("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)")
    assert bot.headers["location"] == f"https://example.com/app?{utm}"
    assert head(stack, "/app", DESKTOP) == 302
    once = [https_get(stack.edge_https_port, SHORT, "/once", cafile=str(stack.pebble.root_path))
            for _ in range(2)]
    assert [o.headers["location"] for o in once] == ["https://example.com/once",
                                                     "https://example.com/sold-out"]

    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    expected = {"days": [{"date": today, "visits": 4, "bots": 2}],
                "referrers": [{"host": "news.example.org", "visits": 1}]}

    def stats() -> object:
        return stack.api("GET", f"/api/v1/links/{SHORT}/app/stats?days=1").json()
    wait_for(lambda: stats() == expected, "the visits flushed (every 2 s)")
    link = stack.api("GET", f"/api/v1/links/{SHORT}/app").json()
    assert (link["visits"], link["bots"]) == (4, 2)
    csv = stack.api("GET", f"/api/v1/links/{SHORT}/app/stats.csv?days=2")
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[-1] == f"{today},4,2"
    time.sleep(2.5)  # another flush: nothing counted twice
    assert stats() == expected


def test_short_domain_redirects_on_the_python_path_and_the_map_path(stack: LocalStack) -> None:
    connect_short_domain(stack)
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

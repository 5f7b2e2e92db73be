"""Issue 18 end to end through HAProxy (a short domain with a Pebble certificate): the rules
in both paths (per-device targets and UTM parameters from the edge's map and from Python, an
exhausted link's expired_url), bots and HEAD requests counted apart, the day's statistics
exact, and the API's 400s."""
from __future__ import annotations

import datetime
import http.client
import socket
import ssl
import time
from typing import Iterator

import pytest

from devtools.demo import LocalStack
from devtools.pebble import PebbleStack
from devtools.probe import Probe, https_get
from tests.test_shortlinks_e2e import connect, from_map, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("rules-stack")]

SHORT = "rules.example.test"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory,
          pebble: PebbleStack) -> Iterator[LocalStack]:
    local = LocalStack(tmp_path_factory.mktemp("rules-stack"), pebble=pebble, shortlinks=True,
                       extra_env={"EDGE_SHORT_DOMAINS": SHORT})
    yield local
    local.stop()


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
    """Issue 18: per-device targets and UTM fields served by Python behind HAProxy (the link
    has a visit limit, so each visit passes the resolver), an exhausted link sent to its
    expired_url, bots and HEAD counted apart, and the day's stats adding up exactly; bad input
    answered 400."""
    connect(stack, SHORT)
    rules = {"device_targets": {"ios": "https://apps.apple.com/app/id1",
                         "android": "https://play.google.com/store/apps/details?id=x"},
             "utm": {"utm_source": "e2e", "utm_medium": "short link"}}
    for body in ({"slug": "app", "target": "https://example.com/app", "max_visits": 1000,
                  **rules},
                 {"slug": "once", "target": "https://example.com/once", "max_visits": 1,
                  "expired_url": "https://example.com/sold-out"}):
        response = stack.api("POST", "/api/v1/links", json={"domain": SHORT, "owner": "pub_1",
                                                            **body})
        assert response.status_code == 201, response.text
    for bad, field in (({"device_targets": {"ios": "javascript:alert(1)"}}, "device_targets.ios"),
                       ({"expired_url": f"https://{SHORT.upper()}/loop"}, "expired_url"),
                       ({"utm": {"utm_source": "x" * 201}}, "utm.utm_source"),
                       ({"device_targets": {"tv": "https://example.com/"}}, "device_targets.tv")):
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

    early = 0  # every redirect while waiting is a counted visit

    def through_the_edge() -> bool:
        nonlocal early
        early += served(DESKTOP).status == 302
        return early > 0

    wait_for(through_the_edge, "the link through the edge")
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
    expected = {"days": [{"date": today, "visits": 3 + early, "bots": 2}],
                "referrers": [{"host": "news.example.org", "visits": 1}]}

    def stats() -> object:
        return stack.api("GET", f"/api/v1/links/{SHORT}/app/stats?days=1").json()
    wait_for(lambda: stats() == expected, "the visits flushed (every 2 s)")
    link = stack.api("GET", f"/api/v1/links/{SHORT}/app").json()
    # A limited link's count is what its processes took from the limit: every visit, and at
    # most as many again, or a first block of 8 each, held in their leases (shortlinks/leases.py).
    assert 5 + early <= link["visits"] <= 2 * (5 + early) + 16, link["visits"]
    csv = stack.api("GET", f"/api/v1/links/{SHORT}/app/stats.csv?days=2")
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[-1] == f"{today},{3 + early},2"
    time.sleep(2.5)  # another flush: nothing counted twice
    assert stats() == expected


def test_device_targets_and_utm_answered_by_the_edge_map(stack: LocalStack) -> None:
    """A plain link with device targets is answered by HAProxy from its map (no request id:
    no Python), the target picked by User-Agent as the Python path picks it, with Vary; an
    edit that drops them reaches the map and the answer stops varying."""
    connect(stack, SHORT)
    response = stack.api("POST", "/api/v1/links", json={
        "domain": SHORT, "owner": "pub_1", "slug": "store", "target": "https://example.com/s",
        "device_targets": {"ios": "https://apps.apple.com/app/id2",
                           "android": "https://play.google.com/store/apps/details?id=y"},
        "utm": {"utm_campaign": "edge"}})
    assert response.status_code == 201, response.text

    def served(agent: str) -> Probe:
        return https_get(stack.edge_https_port, SHORT, "/store",
                         cafile=str(stack.pebble.root_path), headers={"User-Agent": agent})

    ios = "https://apps.apple.com/app/id2?utm_campaign=edge"
    wait_for(lambda: from_map(served(IPHONE), ios), "the device link in the map", timeout=5)
    for agent, location in ((IPHONE, ios),
                            ("Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X)", ios),
                            (ANDROID, "https://play.google.com/store/apps/details?id=y"
                                      "&utm_campaign=edge"),
                            (DESKTOP, "https://example.com/s?utm_campaign=edge"),
                            ("", "https://example.com/s?utm_campaign=edge")):
        probe = served(agent)
        assert from_map(probe, location), (agent, probe.status, probe.headers)
        assert probe.headers.get("vary") == "User-Agent", agent
    assert stack.api("PATCH", f"/api/v1/links/{SHORT}/store",
                     json={"device_targets": None}).ok
    plain = "https://example.com/s?utm_campaign=edge"
    wait_for(lambda: from_map(served(IPHONE), plain), "the edit in the map", timeout=5)
    assert "vary" not in served(IPHONE).headers

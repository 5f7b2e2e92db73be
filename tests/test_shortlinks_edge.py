"""Hot short links through a real HAProxy: visits HAProxy answers from its map are counted in a
stick table, reported by the edge agent and added to the links' counts (SQLite and dynalite)."""
from __future__ import annotations

import dataclasses
import http.client
import ssl
import threading
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import requests

from admin_app import create_app
from control.wiring import Services
from devtools.probe import https_get
from edge.agent import EdgeAgent
from edge.node import EdgeNode
from edge.state import DesiredState, Route
from kit.settings import Settings
from kit.x509 import self_signed
from tests.conftest import serving, wait_until

EDGE = {"Authorization": "Bearer edge-token-0123456789"}
API = {"Authorization": "Bearer test-token-0123456789"}


@pytest.fixture(params=["sqlite", "dynamodb"])
def control(request: pytest.FixtureRequest,
            settings: Settings) -> Iterator[tuple[Services, str]]:
    backend = {}
    if request.param == "dynamodb":
        backend = {"storage_backend": "dynamodb",
                   "dynamodb_endpoint_url": request.getfixturevalue("dynalite"),
                   "dynamodb_table_prefix": f"v{uuid.uuid4().hex[:8]}_"}
    services = Services.from_settings(dataclasses.replace(
        settings, short_domains=["acme.link"], **backend))
    with serving(create_app(services)) as url:
        yield services, url
    services.close()


def publish_route(services: Services) -> None:
    _, pem = self_signed("acme.link")
    services.edge_state.save(DesiredState((Route("acme.link", "pub_1", pem),),
                                          ("127.0.0.1:9",), ("127.0.0.1:9",)))


def hot_link_agent(services: Services, url: str, node: EdgeNode) -> EdgeAgent:
    """An agent whose node serves the plain link acme.link/go from its map."""
    publish_route(services)
    services.links.create("acme.link", "https://example.com/go", "pub_1", slug="go")
    agent = EdgeAgent(node, url, "edge-token-0123456789", node_id="n1")
    assert agent.sync() is True
    return agent


def visit(node: EdgeNode, slug: str, times: int) -> None:
    for _ in range(times):
        probe = https_get(node.layout.https_port, "acme.link", f"/{slug}")
        assert probe.status == 302 and probe.headers["location"] == "https://example.com/go"


def post(node: EdgeNode, path: str) -> int:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    connection = http.client.HTTPSConnection("127.0.0.1", node.layout.https_port,
                                             context=context, timeout=10)
    try:
        connection.request("POST", path, body=b"x", headers={"Host": "acme.link"})
        return connection.getresponse().status
    finally:
        connection.close()


def visits(services: Services, slug: str) -> int:
    """The link's total, checked against its visits per day (both from the same reports)."""
    total = int(services.links.get("acme.link", slug).get("visits") or 0)
    days = services.links.visit_stats("acme.link", slug, 90)["days"]
    assert sum(day["visits"] for day in days) == days[-1]["visits"] == total
    return total


def stats_api(url: str, slug: str) -> dict[str, object]:
    answer = requests.get(f"{url}/api/v1/links/acme.link/{slug}/stats?days=2", headers=API,
                          timeout=5)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_visits_of_map_served_links_reach_the_link_counts(
        control: tuple[Services, str], node: EdgeNode) -> None:
    services, url = control
    agent = hot_link_agent(services, url, node)
    assert node.runtime.show_map(node.current.resolve() / "redirects.map"), "served from the map"
    visit(node, "go", 7)
    https_get(node.layout.https_port, "acme.link", "/cold")  # not in the map: not counted here
    assert post(node, "/go") != 302, "only GET and HEAD are answered from the map"
    assert agent.report_visits() == 7
    assert visits(services, "go") == 7
    assert agent.report_visits() == 0, "only deltas are reported"
    assert visits(services, "go") == 7
    kept = node.directory / "hot_visits.json"
    written = kept.stat().st_ino  # each write replaces the file (kit.files.write_atomic)
    assert agent.report_visits() == 0 and kept.stat().st_ino == written, \
        "an idle round writes (and syncs) nothing"

    visit(node, "go", 3)
    # A restarted agent keeps its baseline (a file): it reports only the 3 new visits.
    restarted = EdgeAgent(node, url, "edge-token-0123456789", node_id="n1")
    assert restarted.report_visits() == 3
    assert visits(services, "go") == 10

    node.haproxy.reload()  # a new worker counts from zero again: 11 there is 11 new visits,
    visit(node, "go", 11)  # not 11 - 10 (the old worker's count)
    assert restarted.report_visits() == 11
    assert visits(services, "go") == 21
    days = stats_api(url, "go")["days"]  # the same, through the API
    assert [day["visits"] for day in days] == [0, 21]  # type: ignore[index]


def test_visits_are_reported_while_the_agent_waits_for_a_change(
        control: tuple[Services, str], node: EdgeNode) -> None:
    """Visits go out every round of their own while the agent holds its long poll: neither
    waits for the other (a big visit table takes a while to read, and a change must not
    wait behind it)."""
    services, url = control
    hot_link_agent(services, url, node)
    agent = EdgeAgent(node, url, "edge-token-0123456789", node_id="n1", watch=30)
    stop = threading.Event()
    running = threading.Thread(target=agent.run, args=(0.2, stop), daemon=True)
    running.start()
    try:
        visit(node, "go", 5)  # no change comes: the long poll is held its whole 30 s

        def counted() -> int:
            try:
                return visits(services, "go")
            except AssertionError:  # a report half applied: its day counts follow its total
                return -1

        wait_until(lambda: counted() == 5, 10, "the five visits reported", interval=0.1)
        assert visits(services, "go") == 5
        services.links.create("acme.link", "https://example.com/go", "pub_1", slug="new")
        wait_until(lambda: "x-request-id" not in https_get(  # the Python path's mark
            node.layout.https_port, "acme.link", "/new").headers, 10, "the map serving the link",
            interval=0.05)
        assert "x-request-id" not in https_get(node.layout.https_port, "acme.link",
                                               "/new").headers, "the change was applied"
    finally:
        stop.set()  # and a change, to end the long poll the agent holds
        services.links.create("acme.link", "https://example.com/go", "pub_1", slug="bye")
        running.join(timeout=40)
    assert not running.is_alive()


def test_undelivered_visits_are_kept_and_sent_later(
        control: tuple[Services, str], node: EdgeNode, tmp_path: Path) -> None:
    services, url = control
    hot_link_agent(services, url, node)
    visit(node, "go", 4)
    wrong = EdgeAgent(node, url, "not-the-edge-token-000", node_id="n1")
    with pytest.raises(requests.HTTPError):
        wrong.report_visits()
    assert visits(services, "go") == 0
    assert wrong.visits.unreported() == {"acme.link/go": 4}
    assert EdgeAgent(node, url, "edge-token-0123456789").report_visits() == 4
    assert visits(services, "go") == 4


def test_a_report_resent_after_a_lost_answer_counts_once(
        control: tuple[Services, str], node: EdgeNode) -> None:
    services, url = control
    agent = hot_link_agent(services, url, node)
    visit(node, "go", 3)
    agent.visits.read()
    report = agent.visits.next_report(1000)
    assert report is not None
    # The control service counts it, but the answer never reaches the agent...
    first = requests.post(f"{url}/api/v1/edge/visits", headers=EDGE, timeout=5,
                          json={"report_id": report[0], "visits": report[1]})
    assert first.json() == {"added": 3}
    # ...which sends the same report again (also after a restart: it is on disk).
    restarted = EdgeAgent(node, url, "edge-token-0123456789", node_id="n1")
    assert restarted.visits.sealed == report
    visit(node, "go", 2)
    assert restarted.report_visits() == 5  # the resent 3 (counted once) and 2 new
    assert visits(services, "go") == 5  # its day too, once


REPORT_ID = "0123456789abcdef0123456789abcdef"
BAD_REPORTS = [
    None, [], {"visits": {"acme.link/go": 1}}, {"report_id": "x", "visits": {"acme.link/go": 1}},
    *({"report_id": REPORT_ID, "visits": visits} for visits in (
        [], {"acme.link/go": -1}, {"acme.link/go": True}, {"acme.link/go": 1.5},
        {"acme.link/../x": 1}, {"acme.link/go b": 1},
        {f"acme.link/s{n}": 1 for n in range(5001)}))]


def test_visit_reports_are_checked(control: tuple[Services, str]) -> None:
    services, url = control
    services.links.create("acme.link", "https://example.com/go", "pub_1", slug="go")
    for body in BAD_REPORTS:
        response = requests.post(f"{url}/api/v1/edge/visits", json=body, headers=EDGE,
                                 timeout=5)
        assert response.status_code == 400, body
    platform = requests.post(f"{url}/api/v1/edge/visits", headers=API, timeout=5,
                             json={"report_id": REPORT_ID, "visits": {"acme.link/go": 1}})
    assert platform.status_code == 401, "only edge agents report visits"
    ok = requests.post(f"{url}/api/v1/edge/visits", headers=EDGE, timeout=5,
                       json={"report_id": REPORT_ID,
                             "visits": {"acme.link/go": 2, "acme.link/gone": 5}})
    assert ok.json() == {"added": 2}, "unknown links are skipped, never created"
    assert visits(services, "go") == 2
    assert services.links.table.get("acme.link/gone") is None


def test_short_domains_need_redirect_servers_and_clean_names() -> None:
    from edge.render import RenderError, validate
    base = DesiredState((), ("127.0.0.1:9",), ("127.0.0.1:9",))
    validate(dataclasses.replace(base, short_domains=("acme.link",),
                                 shortlink_servers=("127.0.0.1:8100",)))
    for bad in ({"short_domains": ("acme.link",)},
                {"short_domains": ("acme.link evil",), "shortlink_servers": ("127.0.0.1:1",)},
                {"short_domains": ("*.acme.link",), "shortlink_servers": ("127.0.0.1:1",)},
                {"short_domains": ("acme.link",), "shortlink_servers": ("x y:1",)}):
        with pytest.raises(RenderError):
            validate(dataclasses.replace(base, **bad))
    assert dataclasses.replace(base, short_domains=("acme.link",),
                               shortlink_servers=("127.0.0.1:1",)).version != base.version

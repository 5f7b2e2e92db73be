"""The edge state over HTTP as agents see it: deltas since a revision (tombstones for removed
routes, a snapshot after compaction) and long polls woken by a change here or on another
control replica."""
from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from cryptography.fernet import Fernet

from control.wiring import Services
from edge.agent import EdgeAgent, StateUnavailable
from edge.node import EdgeNode
from edge.state import DesiredState, Redirect, StateDelta, fingerprint
from edge.state_changes import cert_key
from edge.state_store import (EDGE_CERTS, EDGE_NODES, EDGE_ROUTES, EDGE_STATE, EDGE_VISIT_REPORTS,
                              EdgeStateStore)
from kit.procs import free_port
from kit.settings import Settings
from kit.vault import KeyVault
from kit.x509 import self_signed
from admin_app import create_app
from edge import feed_log
from edge.state_feed import FeedLagging
from store import Backend
from tests.conftest import ServicesWith, serving
from tests.dynamo_nemesis import Nemesis

EDGE = {"Authorization": "Bearer edge-token-0123456789"}


@pytest.fixture
def control(any_backend: Settings, services_with: ServicesWith) -> Iterator[tuple[Services, str]]:
    """The control app over HTTP on each backend: the feed is an index query, which dynalite
    answers at once and the nemesis answers as DynamoDB does."""
    services = services_with(base=any_backend)
    with serving(create_app(services)) as url:
        yield services, url


@pytest.fixture(params=["one-key", "spread"])
def lagging(request: pytest.FixtureRequest, dynamo_nemesis: Nemesis, nemesis: str,
            settings: Settings, services_with: ServicesWith
            ) -> Iterator[tuple[Services, str, Nemesis]]:
    """The control app on DynamoDB whose indexes show a write only 300 ms after it: its feed
    index keys under one value each (the store before schema 3), or spread (after)."""
    services = services_with(base=dataclasses.replace(
        settings, storage_backend="dynamodb", dynamodb_endpoint_url=nemesis,
        dynamodb_table_prefix=f"lag{free_port()}_"))
    if request.param == "spread":
        services.backend.spread_keys()
    dynamo_nemesis.lag = 0.3
    with serving(create_app(services)) as url:
        yield services, url, dynamo_nemesis


def link(n: int, target: str) -> Redirect:
    return Redirect("s.example.test", f"l{n}", 302, target)


def route(services: Services, hostname: str, publication: str | None) -> None:
    services.edge_state.change({hostname: (publication, self_signed(hostname)[1])
                                if publication else None}, services.publisher.config())


def state(url: str, **params: Any) -> requests.Response:
    return requests.get(f"{url}/api/v1/edge/state", params=params, headers=EDGE, timeout=40)


def test_an_agent_gets_only_the_routes_changed_since_its_revision(
        control: tuple[Services, str]) -> None:
    services, url = control
    for n in range(30):
        route(services, f"h{n}.example.test", "pub_1")
    snapshot = state(url).json()
    assert len(snapshot["routes"]) == 30 and "delta" not in snapshot
    route(services, "h3.example.test", "pub_2")
    route(services, "h4.example.test", None)
    delta = state(url, since=snapshot["revision"]).json()
    assert delta["delta"] is True and delta["revision"] == snapshot["revision"] + 2
    assert sorted((c["hostname"], c.get("publication_id"), c.get("removed"))
                  for c in delta["changes"]) == [("h3.example.test", "pub_2", None),
                                                 ("h4.example.test", None, True)]
    assert state(url, since=delta["revision"]).json()["changes"] == []  # nothing newer
    route(services, "h4.example.test", "pub_4")  # back on the edge, over its tombstone
    again = state(url, since=delta["revision"]).json()
    assert [(c["hostname"], c["publication_id"]) for c in again["changes"]] == [
        ("h4.example.test", "pub_4")]
    route(services, "h4.example.test", None)
    # A reconciliation drops the tombstones: an agent from before it gets a snapshot.
    services.lifecycle.publish_routes()
    after = state(url, since=snapshot["revision"]).json()
    assert "delta" not in after and "h4.example.test" not in {r["hostname"]
                                                                for r in after["routes"]}
    assert services.edge_state.routes.get("h4.example.test") is None, "tombstone dropped"
    route(services, "h4.example.test", "pub_4")
    assert "h4.example.test" in {r["hostname"] for r in state(url).json()["routes"]}
    assert state(url, since="nope").status_code == 400


def test_an_agent_applies_deltas_to_a_real_node(control: tuple[Services, str],
                                                tmp_path: Path) -> None:
    services, url = control
    node = EdgeNode(tmp_path / "edge", http_port=free_port(), https_port=free_port())
    agent = EdgeAgent(node, url, "edge-token-0123456789", node_id="n1", watch=0.2)
    try:
        for n in range(3):
            route(services, f"h{n}.example.test", "pub_1")
        assert agent.sync()
        route(services, "h1.example.test", None)
        route(services, "h9.example.test", "pub_9")
        assert agent.sync()
        assert agent._revision == services.edge_state.meta()["revision"]  # type: ignore[index]
        assert sorted(node.existing_routes()) == ["h0.example.test", "h2.example.test",
                                                  "h9.example.test"]
        assert node.applied_version == services.edge_state.current_version()
        assert not agent.sync(), "unchanged: a 304 after the long poll's wait"
        # A one-route change costs the agent that route, not the fleet: the digest follows
        # the delta, which holds that route only, on top of the version the node serves.
        route(services, "h2.example.test", "pub_2")
        desired = agent.fetch()
        assert isinstance(desired, StateDelta)
        assert desired.version == services.edge_state.current_version()
        assert desired.base == node.applied_version and list(desired.routes) == [
            "h2.example.test"]
        assert node.can_apply_delta(desired) and node.apply_delta(desired)
        assert node.existing_routes()["h2.example.test"].publication_id == "pub_2"
        assert not (node.current / "hosts.map").read_text().count("pub_2"), \
            "a delta is journaled, not written into the maps"
        node.compact()
        assert "h2.example.test pub_2" in (node.current / "hosts.map").read_text()
        # A delta whose version its changes do not explain is refused, and the next fetch
        # starts again from a snapshot.
        assert agent._digest is not None
        agent._digest += 1
        route(services, "h0.example.test", "pub_0")
        with pytest.raises(StateUnavailable):
            agent.fetch()
        assert agent.fetch() is not None and agent._digest is not None
    finally:
        node.stop()


def test_a_change_costs_its_commit_and_its_items_only(control: tuple[Services, str]) -> None:
    """A route changed in its extras alone (a redirect set, say) reads the version item and
    the route, and writes them: its certificate, named already, is not stored again, and the
    route item read for the commit is written over without a second read."""
    services, _ = control
    _, pem = self_signed("h0.example.test")
    services.edge_state.change({"h0.example.test": ("pub_0", pem)})
    certs = services.edge_state.certs.get(cert_key("h0.example.test", fingerprint(pem)))
    before = services.backend.requests
    assert services.edge_state.change({"h0.example.test": ("pub_0", pem, "r=x.example.test")})
    # the version item read and committed, the route read and written, the outbox cleared
    assert services.backend.requests - before == 5
    assert services.edge_state.certs.get(cert_key("h0.example.test", fingerprint(pem))) == certs
    assert services.edge_state.routes.get("h0.example.test")["extras"] == "r=x.example.test"


def test_a_commit_of_many_routes_reads_them_and_their_certificates_in_batches(
        control: tuple[Services, str]) -> None:
    """What a replica's first start or a shard move commits, ``CHUNK`` routes at a time: the
    routes and certificates it replaces are read in batches (``store.BATCH_GET`` keys a
    request), so such a commit costs its writes and a few reads, not three reads a route."""
    services, _ = control
    routes = {f"h{n}.example.test": ("pub_0", self_signed(f"h{n}.example.test")[1])
              for n in range(150)}
    before = services.backend.requests
    assert services.edge_state.change(routes)
    writes = 150 * 3 + 2  # per route its item and its certificate twice; the commit, settled
    assert writes < services.backend.requests - before <= writes + 12
    assert services.edge_state.meta()["routes_count"] == 150
    assert services.edge_state.certificate("h7.example.test") is not None


def test_a_restarted_agent_goes_on_with_deltas(control: tuple[Services, str],
                                              tmp_path: Path) -> None:
    """A restarted agent does not start over from a snapshot (a million links): it resumes
    from the revision its node's state came from, and still checks the digest."""
    services, url = control
    node = EdgeNode(tmp_path / "edge", http_port=free_port(), https_port=free_port())
    try:
        route(services, "h0.example.test", "pub_1")
        assert EdgeAgent(node, url, "edge-token-0123456789", node_id="n1").sync()
        restarted = EdgeAgent(node, url, "edge-token-0123456789", node_id="n1")
        route(services, "h1.example.test", "pub_1")
        resumed = restarted.fetch(node.applied_version)
        assert isinstance(resumed, StateDelta) and list(resumed.routes) == ["h1.example.test"]
        assert node.apply_delta(resumed)
        (node.directory / "agent_sync.json").write_text('{"revision": 1, "version": "x"}')
        route(services, "h2.example.test", "pub_1")
        stale = EdgeAgent(node, url, "edge-token-0123456789", node_id="n1")
        assert isinstance(stale.fetch(node.applied_version), DesiredState), \
            "a sync point of another version: a snapshot"
    finally:
        node.stop()


def test_long_link_targets_commit_in_outboxes_that_stay_small(
        control: tuple[Services, str]) -> None:
    """The outbox rides in the version item (400 KB at most on DynamoDB): links with 2 kB
    targets commit about 100 kB at a time, whatever their number."""
    services, _ = control
    before = int((services.edge_state.meta() or {}).get("revision") or 0)
    target = "https://example.com/" + "a" * 1900
    services.edge_state.change({}, redirects={
        f"acme.link/s{n}": Redirect("acme.link", f"s{n}", 302, target) for n in range(120)})
    meta = services.edge_state.meta()
    assert meta is not None and int(meta["revision"]) - before == 3
    snapshot = services.edge_state.load()
    assert snapshot is not None and len(snapshot["redirects"]) == 120


def _long_poll(url: str, have: str, out: list[requests.Response]) -> threading.Thread:
    thread = threading.Thread(target=lambda: out.append(state(url, have=have, wait=30)),
                              daemon=True)
    thread.start()
    return thread


def test_a_long_poll_wakes_on_a_change_here_and_on_another_replica(
        control: tuple[Services, str], any_backend: Settings) -> None:
    services, url = control
    route(services, "a.example.test", "pub_1")
    first = services.edge_state.current_version()
    assert first is not None
    out: list[requests.Response] = []
    waiting = _long_poll(url, first, out)
    waiting.join(0.5)
    assert waiting.is_alive(), "nothing changed: the request waits"
    route(services, "b.example.test", "pub_1")
    waiting.join(10)  # far below the 30 s the request may wait: it was woken
    assert not waiting.is_alive() and out[0].status_code == 200
    second = out[0].json()["version"]
    assert second != first

    other = Services.from_settings(any_backend)  # a second replica on the same store
    try:
        waiting = _long_poll(url, second, out)
        waiting.join(0.5)
        route(other, "c.example.test", "pub_1")
        waiting.join(10)
        assert not waiting.is_alive() and out[1].status_code == 200
        assert "c.example.test" in {r["hostname"] for r in out[1].json()["routes"]}
    finally:
        other.close()


def test_closing_the_services_stops_the_watch_before_the_store_closes(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    services = Services.from_settings(settings)
    route(services, "w.example.test", "pub_1")
    have = services.edge_state.current_version()
    assert have is not None
    waiter = threading.Thread(target=services.edge_state.watch.wait, args=(have, 30))
    waiter.start()
    while not any(t.name == "edge-watch" for t in threading.enumerate()):
        threading.Event().wait(0.01)
    services.close()
    waiter.join(timeout=5)
    assert not waiter.is_alive(), "a waiting agent is answered when the store closes"
    assert not any(t.name == "edge-watch" for t in threading.enumerate())
    assert "reading the edge state version failed" not in caplog.text


def test_the_clock_given_dates_commits_and_reports(backend: Backend) -> None:
    now = [1_000_000.0]
    edge = EdgeStateStore(backend.table(EDGE_STATE), backend.table(EDGE_ROUTES),
                          backend.table(EDGE_CERTS), backend.table(EDGE_NODES),
                          KeyVault([Fernet.generate_key().decode()]),
                          backend.table(EDGE_VISIT_REPORTS), clock=lambda: now[0])
    edge.save(DesiredState((), ("127.0.0.1:8",), ("127.0.0.1:9",)))
    assert edge.meta()["published_at"] == now[0]  # type: ignore[index]
    edge.report("n1", None, None, True)
    now[0] += 30
    [node] = edge.list_nodes()
    assert (node["last_seen_seconds"], node["lag_seconds"], node["in_sync"]) == (30, 30, False)


@pytest.mark.slow
def test_a_lagging_index_delays_a_delta_and_never_loses_a_change(
        lagging: tuple[Services, str, Nemesis], node: EdgeNode,
        monkeypatch: pytest.MonkeyPatch) -> None:
    services, url, nemesis = lagging
    monkeypatch.setattr(feed_log, "KEYS_BYTES", 0)  # no revision's keys named: the index
    agent = EdgeAgent(node, url, "edge-token-0123456789", node_id="n1")
    route(services, "h0.example.test", "pub_0")
    assert agent.sync() and agent.snapshots == 1
    links: dict[str, str] = {}
    for n in range(12):
        # Every change is read through the index right after it is written: the
        # nemesis hides it for 300 ms, the feed reads again until the log's count is met.
        value = None if n % 4 == 3 else f"https://t.example/{n}"
        key = link(n % 5, "x").key
        services.edge_state.change({}, redirects={key: link(n % 5, value)
                                                  if value else None})
        links = {k: v for k, v in {**links, key: value}.items() if v}
        if n % 3 == 0:
            route(services, f"h{n}.example.test", f"pub_{n}")
        assert agent.sync()
        assert {k: v.split("|")[-1] for k, v in node.existing_redirects().items()} == links
        assert node.applied_version == services.edge_state.current_version()
    assert agent.snapshots == 1, "every change came in a delta: no snapshot to recover"
    assert nemesis.hidden > 0, "the index did lag"


@pytest.mark.slow
def test_an_index_lagging_longer_answers_not_yet_then_the_missing_range(
        lagging: tuple[Services, str, Nemesis], node: EdgeNode,
        monkeypatch: pytest.MonkeyPatch) -> None:
    services, url, nemesis = lagging
    monkeypatch.setattr(feed_log, "KEYS_BYTES", 0)  # no revision's keys named: the index
    agent = EdgeAgent(node, url, "edge-token-0123456789", node_id="n1")
    route(services, "h0.example.test", "pub_0")
    assert agent.sync()
    nemesis.lag = 600.0  # longer than the reads below take, however loaded the machine
    services.edge_state.change({}, redirects={link(1, "x").key: link(1, "https://t/1")})
    since = agent._revision
    assert since is not None
    with pytest.raises(FeedLagging):
        services.edge_state.changes_since(since)
    assert state(url, since=since).status_code == 503  # "not yet", never a short delta
    with pytest.raises(requests.HTTPError):
        agent.sync()
    nemesis.lag = 0.3  # the index catches up
    assert agent.sync() and agent.snapshots == 1, "the missing range, not a snapshot"
    assert list(node.existing_redirects()) == [link(1, "x").key]


@pytest.mark.slow
def test_a_delta_a_few_changes_behind_is_read_by_key_whatever_the_index_shows(
        lagging: tuple[Services, str, Nemesis], node: EdgeNode) -> None:
    """The version item names the keys its last revisions wrote: an agent a few changes
    behind gets its delta from one consistent batch read per table, at once, however far the
    index lags (on DynamoDB an index read is a query per spread partition, and lags)."""
    services, url, nemesis = lagging
    agent = EdgeAgent(node, url, "edge-token-0123456789", node_id="n1")
    route(services, "h0.example.test", "pub_0")
    assert agent.sync() and agent.snapshots == 1
    nemesis.lag = 600.0  # the index shows nothing written from now on
    for n in range(3):
        services.edge_state.change({}, redirects={link(n, "x").key: link(n, f"https://t/{n}")})
    route(services, "h1.example.test", "pub_1")
    route(services, "h0.example.test", None)
    since = agent._revision
    assert since is not None
    before = services.backend.requests
    delta = services.edge_state.changes_since(since)
    assert delta is not None
    assert services.backend.requests - before == 3, "the version item, one batch per table"
    assert sorted(c["hostname"] for c in delta["changes"]) == ["h0.example.test",
                                                               "h1.example.test"]
    assert sorted(k for k, _ in delta["redirect_changes"]) == [link(n, "x").key
                                                              for n in range(3)]
    assert agent.sync() and agent.snapshots == 1, "a delta, not a snapshot"
    assert sorted(node.existing_redirects()) == [link(n, "x").key for n in range(3)]
    assert node.applied_version == services.edge_state.current_version()
    lagging_index = services.edge_state.redirects.query_range("feed", "routes", lower=since + 0.5)
    assert lagging_index.items == [] and nemesis.hidden > 0, "the index did lag"


def test_the_version_item_names_the_keys_of_its_last_revisions_while_they_fit(
        control: tuple[Services, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Past ``KEYS_BYTES`` the oldest revisions' keys go: an agent further behind reads the
    index, and gets the same delta."""
    services, url = control
    monkeypatch.setattr(feed_log, "KEYS_BYTES", 200)
    route(services, "h0.example.test", "pub_0")
    first = services.edge_state.meta()
    assert first is not None and first[feed_log.KEYS] == [[["h0.example.test"], []]]
    for n in range(8):
        services.edge_state.change({}, redirects={link(n, "x").key: link(n, f"https://t/{n}")})
    meta = services.edge_state.meta()
    assert meta is not None
    revision, start = meta["revision"], meta[feed_log.KEYS_FROM]
    assert first["revision"] < start < revision and \
        len(meta[feed_log.KEYS]) == revision - start + 1
    assert feed_log.keys_since(meta, start - 1) is not None
    assert feed_log.keys_since(meta, start - 2) is None, "older than the keys: the index"
    written = {link(n, "x").key: first["revision"] + 1 + n for n in range(8)}
    for since in (start - 2, start - 1, revision - 1):
        delta = state(url, since=since).json()
        assert delta["delta"] and sorted(k for k, _ in delta["redirect_changes"]) == sorted(
            key for key, at in written.items() if at > since)
    monkeypatch.setattr(feed_log, "KEYS_BYTES", 10)  # a change too big names no revision
    services.edge_state.change({}, redirects={link(9, "x").key: link(9, "https://t/9")})
    big = services.edge_state.meta()
    assert big is not None and big[feed_log.KEYS] == [] and \
        big[feed_log.KEYS_FROM] == big["revision"] + 1
    assert feed_log.keys_since(big, big["revision"] - 1) is None
    assert [k for k, _ in state(url, since=revision).json()["redirect_changes"]] == [
        link(9, "x").key]


def test_a_version_item_of_the_release_before_is_read_as_that_release_read_it(
        control: tuple[Services, str]) -> None:
    services, url = control
    route(services, "h0.example.test", "pub_0")
    meta = services.edge_state.meta()
    assert meta is not None and meta[feed_log.COUNTS] == [1]
    old = {k: v for k, v in meta.items() if k not in (feed_log.FROM, feed_log.COUNTS,
                                                       feed_log.KEYS_FROM, feed_log.KEYS)}
    services.edge_state.state.put(old, expected_version=meta["version"])
    assert state(url, since=0).json()["changes"][0]["hostname"] == "h0.example.test"
    route(services, "h1.example.test", "pub_1")  # the next commit starts a log
    after = services.edge_state.meta()
    assert after is not None and after[feed_log.FROM] == after[feed_log.KEYS_FROM] \
        == after["revision"]
    assert [c["hostname"] for c in state(url, since=meta["revision"]).json()["changes"]] == [
        "h1.example.test"]
    assert "delta" not in state(url, since=0).json(), "older than the log: a snapshot"


def test_a_replica_reconciling_at_start_keeps_a_route_its_lagging_index_misses(
        lagging: tuple[Services, str, Nemesis]) -> None:
    """Found by the chaos test through the nemesis: a replica restarting reconciles the edge
    with the domains its status index lists, and a domain activated a moment before was not
    listed yet, so its live route was taken off for a few seconds. The reconciliation reads
    such a domain by its key before it touches its route."""
    services, _, nemesis = lagging
    nemesis.lag = 600.0  # the status index shows nothing written from now on
    hostname = "live.example.test"
    domain, _ = services.domains.connect(hostname, "pub_1")
    cert, combined = self_signed(hostname)
    services.certificates.save([hostname], cert, combined.encode())
    services.domains.transition(domain, "active", "seeded")
    services.publisher.route_changes({hostname: "pub_1"})  # as the activation's outbox does
    assert hostname in services.publisher.routed()
    assert hostname not in {d["hostname"] for d in services.domains.each_with_status("active")}
    services.lifecycle.publish_routes()  # a replica's start
    assert hostname in services.publisher.routed(), "the live route stays"
    assert nemesis.hidden > 0, "the index did lag"

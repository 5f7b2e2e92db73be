"""Work proportional to change, counted at the backends (SQLite transactions, requests to
dynalite): an idle worker round and a one-route change cost the same whatever the number of
domains; racing publishers and a publisher that dies mid-change leave no stale route."""
from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Callable, ContextManager

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from admin.summary import FAILING_GRACE, Summary
from control import publisher
from control.wiring import Services
from domains import drain
from edge.state import RouteRef, routes_digest
from edge.state_store import EdgeStateStore
from kit.settings import Settings
from kit.x509 import self_signed
from tests.conftest import FakeClock, ServicesWith, dynamodb_is_slow, fair_weather

KEY = ec.generate_private_key(ec.SECP256R1())
KEY_PEM = KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())


@pytest.fixture
def services(services_both: Services) -> Services:
    return services_both


Calm = Callable[[], ContextManager[None]]


@pytest.fixture
def calm(services: Services) -> Calm:
    """Seeding is not what these tests measure: through the nemesis it runs in fair weather
    (the SDK's backoff on injected faults made it most of the test's time), and so does the
    reconciliation that publishes the seeded routes (hundreds of requests for 150 domains, most
    of what was left); the steps measured, and the round before each, run in the nemesis'
    usual weather. Elsewhere it changes nothing."""
    return lambda: fair_weather(services.settings)


def at_once(seed_one: Callable[[int], None], numbers: range) -> None:
    """``seed_one(n)`` for each number, four at a time, as concurrent API calls would: a
    seeded domain is about a dozen store requests, and 150 of them one after the other were
    most of a DynamoDB run's time (each request waits on the store in turn)."""
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(seed_one, numbers))


def seed_active(services: Services, count: int, start: int = 0) -> None:
    """``count`` active domains with certificates, none due for an hour."""
    def seed_one(n: int) -> None:
        hostname = f"d{n}.scale.example.test"
        domain, _ = services.domains.connect(hostname, f"pub_{n % 7}")
        cert, _ = self_signed(hostname, KEY)
        services.certificates.save([hostname], cert, KEY_PEM)
        services.domains.transition(domain, "active", "seeded",
                                    next_attempt_at=time.time() + 3600)
    at_once(seed_one, range(start, start + count))


@pytest.fixture
def no_window_ends(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker round asks an index again ``WINDOW`` (10) seconds after its last ask, whatever
    happened (work a dead process left, a write of the release before): by time, not by the
    number of domains. A measured round that straddled a window's end asked again (38 requests
    instead of 3, when seeding took 8 to 10 s on a loaded machine), so the windows here are an
    hour."""
    monkeypatch.setattr(services.domains.repository.hints, "window", 3600.0)
    monkeypatch.setattr(drain, "WINDOW", 3600.0)
    monkeypatch.setattr(publisher, "EXPIRED_LINKS_EVERY", 3600.0)


def idle_round(services: Services) -> int:
    """The store requests of a worker round with nothing due, once the due hints settled (an
    index whose work moved is asked again for ``lag`` seconds: it may lag its items)."""
    services.lifecycle.tick()
    time.sleep(services.domains.repository.hints.lag)
    services.lifecycle.tick()
    return requests_of(services, services.lifecycle.tick)


def requests_of(services: Services, step: object) -> int:
    before = services.backend.requests
    step()  # type: ignore[operator]
    return services.backend.requests - before


@dynamodb_is_slow
@pytest.mark.usefixtures("no_window_ends")
def test_an_idle_round_costs_the_same_with_ten_times_the_domains(services: Services,
                                                                 calm: Calm) -> None:
    with calm():
        seed_active(services, 15)
        services.lifecycle.publish_routes()  # the reconciliation at start
    small = idle_round(services)
    with calm():
        seed_active(services, 135, start=15)
        services.lifecycle.publish_routes()
    large = idle_round(services)
    # Each index read is one query, on DynamoDB one per stored value of a spread key (a
    # status, a work queue's flag: store/dynamo_spread.py), however many domains there are.
    # Within a window of the last asks none is read: not the due indexes when nothing moved
    # (domains/due_hints.py), nor outboxes left behind (domains/drain.py), nor expired links
    # (control/publisher.py). What is left is three reads by key: the due counts, the shard
    # registry, the edge's config.
    assert small == large <= 3, (small, large)  # 55 on DynamoDB before, 122 before that
    assert services.moves is not None
    assert requests_of(services, services.moves.tick) == 1, "never sharded: no move asked"
    assert len(services.edge_state.load()["routes"]) == 150  # type: ignore[index]


@dynamodb_is_slow
def test_one_route_change_costs_the_same_with_ten_times_the_domains(
        services: Services, calm: Calm) -> None:
    def change_cost(hostname: str) -> int:
        return requests_of(services,
                           lambda: services.publisher.route_changes({hostname: "pub_x"}))

    with calm():
        seed_active(services, 15)
        services.lifecycle.publish_routes()
    small = change_cost("d3.scale.example.test")
    with calm():
        seed_active(services, 135, start=15)
        services.lifecycle.publish_routes()
    large = change_cost("d40.scale.example.test")
    assert small == large <= 12, (small, large)
    state = services.edge_state.load()
    assert state is not None and state["version"] == services.edge_state.meta()["edge_version"]
    assert {r["hostname"]: r["publication_id"] for r in state["routes"]}[
        "d40.scale.example.test"] == "pub_x"


def _replica(services: Services) -> EdgeStateStore:
    """A second control replica's view of the same tables."""
    store = services.edge_state
    return EdgeStateStore(store.state, store.routes, store.certs, store.nodes,
                          store._vault, store.reports)


def _consistent(store: EdgeStateStore) -> dict[str, str]:
    """The routes, after checking that the route items are exactly what the version names."""
    meta = store.meta()
    state = store.load()
    assert meta is not None and state is not None
    assert state["version"] == meta["edge_version"], "a route item the version does not name"
    refs = [RouteRef(**r) for r in state["routes"]]
    assert f"{routes_digest(refs):032x}" == meta["routes_digest"]
    return {r.hostname: r.publication_id for r in refs}


def test_racing_publishers_leave_no_stale_route(services: Services) -> None:
    hosts = [f"race{n}.example.test" for n in range(4)]
    pems = {h: self_signed(h, KEY)[1] for h in hosts}
    replicas = [services.edge_state, _replica(services)]

    def publish(replica: int) -> None:
        store = replicas[replica]
        for n in range(15):
            host = hosts[(n + replica) % len(hosts)]
            store.change({host: None if (n + replica) % 3 == 0 else (f"pub_{replica}",
                                                                     pems[host])})

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _consistent(replicas[0]) == _consistent(replicas[1])


def test_a_change_committed_by_a_replica_that_died_is_applied_by_the_next(
        services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    pem = self_signed("crash.example.test", KEY)[1]
    services.edge_state.change({"kept.example.test": ("pub_1", self_signed(
        "kept.example.test", KEY)[1])})
    dying = _replica(services)

    def die(*args: object) -> None:
        raise SystemExit("killed between the commit and the route items")

    monkeypatch.setattr(dying.changes, "_write_route", die)
    with pytest.raises(SystemExit):
        dying.change({"crash.example.test": ("pub_2", pem)})
    assert services.edge_state.routes.get("crash.example.test") is None  # not written yet
    survivor = _replica(services)
    assert _consistent(survivor) == {"kept.example.test": "pub_1", "crash.example.test": "pub_2"}
    assert survivor.certificate("crash.example.test")["pem"] == pem  # type: ignore[index]


def test_counts_by_status_follow_every_change_and_an_old_store_is_counted(
        services: Services) -> None:
    seed_active(services, 3)
    services.domains.connect("new.scale.example.test", "pub_1")
    services.lifecycle.remove("d1.scale.example.test")
    expected = {"pending_dns": 1, "verified": 0, "issuing": 0, "awaiting_traffic": 0,
                "active": 2, "suspended": 0}
    assert services.domains.by_status() == expected
    services.lifecycle.suspend("d2.scale.example.test")
    assert services.domains.by_status()["suspended"] == 1
    # A store from before the counts: the first process to open it counts what is there.
    services.domains.counts.table.delete("by_status")  # type: ignore[union-attr]
    reopened = Services.from_settings(services.settings)
    try:
        assert reopened.domains.by_status() == {**expected, "active": 1, "suspended": 1}
        before = reopened.backend.requests
        reopened.domains.by_status()
        assert reopened.backend.requests - before == 1
    finally:
        reopened.close()


def test_a_status_change_whose_writer_died_keeps_its_event(
        any_backend: Settings, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    services = Services.from_settings(any_backend, clock=clock)
    try:
        domain, _ = services.domains.connect("outbox.example.test", "pub_1")

        def die(*args: object) -> None:
            raise SystemExit("killed between the domain's write and its event's")

        with monkeypatch.context() as patch:
            patch.setattr(services.domains.outbox, "drain", die)
            with pytest.raises(SystemExit):
                services.domains.transition(domain, "verified", "DNS is right")
        left = services.domains.get("outbox.example.test")
        written = [e["what"] for e in services.domains.events.query("claim", left["claim"]).items]
        assert "pending_dns -> verified" not in written  # not in the events table yet...
        assert "pending_dns -> verified" in [e["what"] for e in services.domains.timeline(left)]
        assert services.domains.drain_outboxes() == 0, "a writer may still be on it"
        clock.advance(60)  # ...now it is long gone
        assert services.domains.drain_outboxes() == 1  # what every worker round does first
        written = [e["what"] for e in services.domains.events.query("claim", left["claim"]).items]
        assert written.count("pending_dns -> verified") == 1, written
        assert services.domains.get("outbox.example.test").get("outbox") == []
    finally:
        services.close()


@dynamodb_is_slow
def test_the_dashboard_overview_costs_the_same_with_ten_times_the_domains(
        any_backend: Settings, services_with: ServicesWith, clock: FakeClock,
        calm: Calm) -> None:
    services = services_with(base=any_backend, max_pending_domains=0, clock=clock)

    def seed(start: int, count: int) -> None:
        def seed_one(n: int) -> None:
            hostname = f"o{n}.scale.example.test"
            domain, _ = services.domains.connect(hostname, "pub_1")
            services.certificates.save([hostname], self_signed(hostname, KEY, days=365)[0],
                                       KEY_PEM)
            services.domains.transition(domain, "active", "seeded")
        at_once(seed_one, range(start, start + count))

    with calm():
        seed(0, 15)
    failing = services.domains.get("o3.scale.example.test")
    services.domains.defer(failing, [{"message": "DNS moved away"}])
    clock.advance(FAILING_GRACE + 1)  # the overview lists a domain failing past its grace
    summary = Summary(services, ttl=0)
    before = services.backend.requests
    small = summary.figures(fresh=True)
    small_cost = services.backend.requests - before
    with calm():
        seed(15, 135)
    before = services.backend.requests
    large = summary.figures(fresh=True)
    assert services.backend.requests - before == small_cost, "the overview reads no whole table"
    assert [d["hostname"] for d in large.failing] == ["o3.scale.example.test"]
    assert large.failing_total == small.failing_total == 1
    assert large.by_status["active"] == 150 and large.expiring_30 == []

"""A reconciliation (a replica's start) against changes other replicas commit while it reads.

Found by the chaos test through the nemesis: a restarting replica read the active domains
(slowly, throttled), another replica activated a domain and published its route meanwhile, and
the reconciliation then took that live route off, as it was not in what it had read: both edge
nodes served the default certificate for the domain until its next change. A reconciliation
now leaves every route and link that a commit after its start wrote as that commit made it.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import pytest

from control.wiring import Services
from domains import outbox, pairs
from domains.redirects import DomainOptions
from domains.repository import ACTIVE, SUSPENDED
from edge.shards import ShardNode
from edge.state import EdgeConfig, Redirect
from kit.settings import Settings
from kit.x509 import self_signed
from tests.conftest import ServicesWith


def _active(services: Services, hostname: str) -> None:
    domain, _ = services.domains.connect(hostname, "pub_1")
    cert, combined = self_signed(hostname)
    services.certificates.save([hostname], cert, combined.encode())
    services.domains.transition(domain, "active", "seeded")
    services.publisher.route_changes({hostname: "pub_1"})  # as the activation's outbox does


def test_routes_changed_while_a_replica_reads_for_its_reconciliation_stay_changed(
        services_both: Services) -> None:
    services = services_both
    _active(services, "kept.example.test")
    _active(services, "going.example.test")
    read: list[str] = []

    def routes_read_slowly(routed: set[str]) -> dict:
        routes = services.lifecycle._routes_to_publish(routed)
        read.extend(routes)
        # Meanwhile another replica activates one domain and removes another.
        _active(services, "new.example.test")
        services.lifecycle.remove("going.example.test")
        services.publisher.route_changes({"going.example.test": None})
        return routes

    services.publisher.publish(routes_read_slowly)
    assert sorted(read) == ["going.example.test", "kept.example.test"], "it read before"
    assert services.publisher.routed() == {"kept.example.test", "new.example.test"}
    services.lifecycle.publish_routes()  # the next one, with nothing changing, agrees
    assert services.publisher.routed() == {"kept.example.test", "new.example.test"}


def test_links_changed_after_a_reconciliation_began_stay_changed(
        services_both: Services) -> None:
    state = services_both.edge_state
    old, new = (Redirect("s.example.test", slug, 302, f"https://t.example/{slug}")
                for slug in ("old", "new"))
    state.change({}, redirects={old.key: old})
    since = state.mark()
    state.change({}, redirects={new.key: new, old.key: None})  # after it began reading
    # What it read (the old link, not the new one) is older than both changes: it keeps them.
    assert not state.reconcile_redirects({old.key: old}, since)
    loaded = state.load()
    assert loaded is not None and [r[0] for r in loaded["redirects"]] == [new.key]
    assert state.reconcile_redirects({old.key: old})  # one that began now puts it back
    loaded = state.load()
    assert loaded is not None and [r[0] for r in loaded["redirects"]] == [old.key]


# --- lagging reads: what a read missed is not proof that it is gone ------------------------

CONFIG = EdgeConfig(("127.0.0.1:9",), ("127.0.0.1:9",))


@pytest.fixture
def sharded(any_backend: Settings, services_with: ServicesWith) -> Services:
    """The control service's objects with two edge shards: a shard's routes and links are
    read through the feed index (store/namespace.py), which lags on DynamoDB."""
    services = services_with(base=any_backend, max_pending_domains=0)
    assert services.shards is not None
    for n, shard in enumerate(("a", "b")):
        services.shards.put_shard(shard, [ShardNode(f"127.0.0.{n + 2}", 8443, 8080)])
    return services


def test_a_route_a_lagging_read_of_the_edge_missed_stays(
        sharded: Services, lag: Callable[[float], None]) -> None:
    """A replica restarts a moment after two activations: its index reads of the domains and
    of the edge both miss them, and the edge's own scan, a little later, finds them. Before,
    it took both routes off (nothing it read said they were live)."""
    services = sharded
    _active(services, "kept.example.test")
    _active(services, "new.example.test")
    lag(600.0)

    def routes_read_while_lagging(routed: set[str]) -> dict:
        routes = services.lifecycle._routes_to_publish(routed)
        lag(0.0)  # the edge's own scan, after, sees them
        return routes

    services.publisher.publish(routes_read_while_lagging)
    assert services.publisher.routed() == {"kept.example.test", "new.example.test"}
    services.lifecycle.publish_routes()
    assert services.publisher.routed() == {"kept.example.test", "new.example.test"}


def test_a_reconciliation_takes_off_only_routes_its_read_of_the_edge_saw(
        services_both: Services) -> None:
    state = services_both.edge_shards
    pems = {host: self_signed(host)[1] for host in ("seen.example.test", "missed.example.test")}
    state.change({host: ("pub_1", pem) for host, pem in pems.items()}, CONFIG)
    # Neither is in what was read of the domains; the edge's read saw only one of them (an
    # index lagging): the other one's route is not confirmed off, and stays.
    assert state.reconcile({}, pems.get, CONFIG, state.marks(), {"seen.example.test"})
    assert state.routed() == {"missed.example.test"}
    assert state.reconcile({}, pems.get, CONFIG, state.marks(), state.routed())
    assert state.routed() == set()


def test_a_lagging_scan_leaves_the_digest_and_the_count(
        sharded: Services, lag: Callable[[float], None]) -> None:
    """The scan's digest was written over the stored one whenever they differed: a scan that
    lagged a change made just before it (a replica's start) wrote a wrong digest and count."""
    services, hosts = sharded, [f"d{n}.example.test" for n in range(6)]
    for host in hosts:
        _active(services, host)
    state = services.edge_shards
    before = {shard: state.store(shard).meta() for shard in ("a", "b")}
    assert sum(int((meta or {}).get("routes_count", 0)) for meta in before.values()) == 6
    lag(600.0)
    services.lifecycle.publish_routes()
    lag(0.0)
    for shard, meta in before.items():
        after = state.store(shard).meta()
        assert meta is not None and after is not None
        assert (after["routes_digest"], after["routes_count"]) == (
            meta["routes_digest"], meta["routes_count"])
    assert services.publisher.routed() == set(hosts)


def test_a_router_entry_is_never_switched_nor_dropped_by_a_lagging_read(
        sharded: Services, lag: Callable[[float], None]) -> None:
    """A shard is added (its moves not done yet) and a replica reconciles: its read of the
    router's entries lags, so every hostname looked unplaced, and the ones now assigned to
    the new shard were switched there at once, before its nodes held them (and dropped
    from the shard serving them); a hostname the reads of the domains and of the edge missed
    lost its router entry, so the router sent it to a shard without it."""
    services, state = sharded, sharded.edge_shards
    assert services.shards is not None
    hosts = [f"r{n}.router.test" for n in range(12)]
    pems = {host: self_signed(host)[1] for host in hosts}
    state.change({host: ("pub_1", pem) for host, pem in pems.items()}, CONFIG)
    placed = {host: state.router.holding(host) for host in hosts}
    services.shards.put_shard("c", [ShardNode("127.0.0.4", 8443, 8080)])
    assert any(services.shards.load().assign(host) == "c" for host in hosts)
    missed = hosts[0]
    since, seen = state.marks(), state.routed() - {missed}
    lag(600.0)

    def pem_of(host: str) -> str:
        lag(0.0)  # the shards' and the router's own scans, after, see everything
        return pems[host]

    state.reconcile({host: "pub_1" for host in hosts if host != missed}, pem_of, CONFIG,
                    since, seen)
    assert {host: state.router.holding(host) for host in hosts} == placed, "no switch"
    for host, shard in placed.items():
        assert shard is not None and state.holding(shard, host) is not None


def test_a_link_due_by_the_index_but_valid_by_its_key_stays_on_the_map(
        any_backend: Settings, services_with: ServicesWith) -> None:
    """The worker reads the due links from the expiry index and took each off the map; a
    link given a later expiry meanwhile (or by an index that lags it) was taken off too."""
    services = services_with(base=dataclasses.replace(
        any_backend, short_domains=["go.race.example.test"]))
    services.links.create("go.race.example.test", "https://t.example/x", "pub_1", slug="x")
    key = "go.race.example.test/x"
    [(_, value)] = _map(services)
    # The map entry as it was before the link got a later expiry: due a minute ago.
    stale = Redirect("go.race.example.test", "x", 302, "https://t.example/x",
                     int(time.time()) - 60)
    services.edge_shards.change({}, redirects={key: stale})
    assert services.publisher.expire_links() == 1
    assert _map(services) == [(key, value)], "the link as it is, by its key"
    services.links.update("go.race.example.test", "x", {"disabled": True})
    services.edge_shards.change({}, redirects={key: stale})
    assert services.publisher.expire_links() == 1
    assert _map(services) == []


def _map(services: Services) -> list[tuple[str, str]]:
    loaded = services.edge_state.load()
    assert loaded is not None
    return [tuple(entry) for entry in loaded["redirects"]]


def test_a_pair_going_active_at_once_ends_with_its_www_redirecting(
        services_both: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen in CI: the www's activation read its apex as not yet active, the apex went active
    and published the www's redirect, then the www's stale route (no redirect) landed: the www
    was served, not redirected, until its next change. A route change now reads its routes
    again after its write and writes them again until they hold."""
    services = services_both
    pairs.connect(services.domains, "duo.test", "pub_1", None, {})
    for hostname in ("duo.test", "www.duo.test"):
        cert, combined = self_signed(hostname)
        services.certificates.save([hostname], cert, combined.encode())
    write = services.publisher.route_changes
    interleaved: list[dict] = []

    def late(changes: dict) -> None:
        if list(changes) == ["www.duo.test"] and not interleaved:
            interleaved.append(changes)  # read with the apex pending; the apex goes active now
            apex = services.domains.get("duo.test")
            services.domains.transition(apex, ACTIVE, "test", effects=[
                outbox.route("duo.test", "pub_1")])
            assert '"to":"duo.test"' in published(), "the apex's change published the redirect"
        write(changes)

    def published() -> str:
        state = services.edge_state.load() or {}
        return next((r.get("extras") or "" for r in state["routes"]
                     if r["hostname"] == "www.duo.test"), "not routed")

    monkeypatch.setattr(services.publisher, "route_changes", late)
    www = services.domains.get("www.duo.test")
    services.domains.transition(www, ACTIVE, "test", effects=[
        outbox.route("www.duo.test", "pub_1")])
    assert interleaved == [{"www.duo.test": "pub_1"}], "the www's first write was stale"
    assert '"to":"duo.test"' in published()


def test_a_domain_suspended_while_its_activation_drains_goes_off_the_edge(
        services_both: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    services = services_both
    domain, _ = services.domains.connect("h.example.test", "pub_1")
    cert, combined = self_signed("h.example.test")
    services.certificates.save(["h.example.test"], cert, combined.encode())
    write = services.publisher.route_changes
    suspended: list[bool] = []

    def late(changes: dict) -> None:
        if changes == {"h.example.test": "pub_1"} and not suspended:
            suspended.append(True)  # read active; suspended (and taken off) before it lands
            services.domains.transition(services.domains.get("h.example.test"), SUSPENDED,
                                        "test", effects=[outbox.route("h.example.test", None)])
        write(changes)

    monkeypatch.setattr(services.publisher, "route_changes", late)
    services.domains.transition(domain, ACTIVE, "test", effects=[
        outbox.route("h.example.test", "pub_1")])
    assert suspended and "h.example.test" not in services.publisher.routed()


def redirecting_pair(services: Services) -> None:
    """t.example.test and s.example.test, which redirects to it, both active for pub_1."""
    for hostname, extra in (("t.example.test", None),
                            ("s.example.test", {"redirect_to": "t.example.test"})):
        domain, _ = services.domains.connect(hostname, "pub_1", extra=extra)
        cert, combined = self_signed(hostname)
        services.certificates.save([hostname], cert, combined.encode())
        services.domains.transition(domain, ACTIVE, "test", effects=[
            outbox.route(hostname, "pub_1")])


def test_a_redirect_dropped_while_its_targets_change_drains_stays_dropped(
        services_both: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """The target's change read the source as redirecting to it; the source drops its
    redirect and publishes its plain route before the target's stale write lands."""
    services = services_both
    redirecting_pair(services)
    assert services.edge_state.routes.get("s.example.test")["extras"]
    write = services.publisher.route_changes
    dropped: list[bool] = []

    def late(changes: dict) -> None:
        if set(changes) == {"t.example.test", "s.example.test"} and not dropped:
            dropped.append(True)
            DomainOptions(services.domains).change(services.domains.get("s.example.test"),
                                                   {"redirect_to": None})
        write(changes)

    monkeypatch.setattr(services.publisher, "route_changes", late)
    DomainOptions(services.domains, meta_keys=["plan"]).change(
        services.domains.get("t.example.test"), {"metadata": {"plan": "pro"}})
    assert dropped
    assert not services.edge_state.routes.get("s.example.test").get("extras"), "stale redirect"


def test_a_redirect_to_a_domain_another_publication_took_over_stops(
        services_both: Services) -> None:
    """A redirect leads only to the same publication's domain: when its target changes hands
    (a takeover), the source is served itself, both as the target's route change follows it
    and in a reconciliation, and not sent to the new holder's site."""
    services = services_both
    redirecting_pair(services)
    assert services.edge_state.routes.get("s.example.test")["extras"], "it redirects"
    target = services.domains.get("t.example.test")  # taken over, active again for pub_2
    services.domains.repository.write(target, {**target, "publication_id": "pub_2"})
    services.lifecycle.follow_route(outbox.route("t.example.test", "pub_2"))
    source = services.edge_state.routes.get("s.example.test")
    assert source["publication_id"] == "pub_1" and not source.get("extras")
    assert services.lifecycle._routes_to_publish(set())["s.example.test"] == "pub_1"



def test_a_workers_copy_of_a_removed_claim_cannot_write_over_the_next_owners(
        services_both: Services) -> None:
    """The worker's round read a claim in its due list; meanwhile its publication removed it
    and another connected the hostname. The stale copy's lease (a write conditional on its
    version) must not land on the new claim: the new one reaches the same version number
    only if versions start again at 1 when an item is made again."""
    services = services_both
    first, _ = services.domains.connect("aba.example.test", "pub_a")
    stale = services.domains.find("aba.example.test")
    assert stale is not None and stale["claim"] == first["claim"]
    services.lifecycle.remove("aba.example.test")
    services.domains.connect("aba.example.test", "pub_b")
    assert services.domains.repository.lease(stale, "worker-1", 60) is None
    now = services.domains.get("aba.example.test")
    assert now["publication_id"] == "pub_b" and now["claim"] != first["claim"]

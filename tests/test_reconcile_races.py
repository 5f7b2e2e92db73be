"""A reconciliation (a replica's start) against changes other replicas commit while it reads.

Found by the chaos test through the nemesis: a restarting replica read the active domains
(slowly, throttled), another replica activated a domain and published its route meanwhile, and
the reconciliation then took that live route off, as it was not in what it had read: both edge
nodes served the default certificate for the domain until its next change. A reconciliation
now leaves every route and link that a commit after its start wrote as that commit made it.
"""
from __future__ import annotations

from control.wiring import Services
from edge.state import Redirect
from kit.x509 import self_signed


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

    def routes_read_slowly() -> dict:
        routes = services.lifecycle._routes_to_publish()
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

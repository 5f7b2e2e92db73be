"""Moving hostnames between shards (issue 29 item 4): a shard added moves about 1/K of them,
each published to the new shard before its router entry switches, the switch only once every
node of the new shard holds it, the old shard drops it after the grace; a move interrupted
resumes, and a removed shard drains, then goes. Node reports here are written as the edge API
writes them (test_shard_moves_edge.py runs real agents and HAProxy)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

from control.wiring import Services
from edge.moves import Mover, move_key
from edgectl.app import create_app
from edgectl.backup import run_backup, run_restore
from edge.router_feed import ROUTER
from edge.sharded_state import ShardedState
from edge.shards import DEFAULT_SHARD, ShardNode
from edge.state import EdgeConfig, Redirect
from kit.settings import Settings
from kit.x509 import self_signed
from store import SPREAD, all_items
from tests.conftest import FakeClock, ServicesWith, wait_until

CONFIG = EdgeConfig(("127.0.0.1:9",), ("127.0.0.1:9",))
HOSTS = [f"m{n}.moves.test" for n in range(45)]
EDGE = {"Authorization": "Bearer edge-token-0123456789"}


@pytest.fixture
def moving(any_backend: Settings, services_with: ServicesWith,
           clock: FakeClock) -> Iterator[Services]:
    yield populated(services_with(base=any_backend, clock=clock, shard_move_grace_seconds=30.0))


def populated(services: Services) -> Services:
    """Shards a and b, and HOSTS (one with a short link) spread over them."""
    assert services.shards is not None
    for n, shard in enumerate(("a", "b")):
        services.shards.put_shard(shard, [ShardNode(f"127.0.0.{n + 2}", 8443, 8080)])
    services.edge_shards.change({host: ("pub_1", self_signed(host)[1]) for host in HOSTS},
                                CONFIG,
                                {f"{HOSTS[1]}/go": Redirect(HOSTS[1], "go", 302,
                                                            "https://example.com/")})
    return services


def report_in_sync(services: Services, *shards: str) -> None:
    """Each shard's node reports the version it holds now, as the edge API records it."""
    for shard in shards:
        store = services.edge_shards.store(shard)
        meta = store.meta()
        store.report(f"{shard}1", meta["edge_version"] if meta else None, None, True, shard)


def until_done(mover: Mover) -> None:
    """Rounds until no move is in flight: a round drops a tenth of a shard at most."""
    for _ in range(50):
        if not mover.in_flight():
            return
        mover.tick()
    assert mover.in_flight() == {}


def mover_of(services: Services) -> Mover:
    assert services.moves is not None
    return services.moves


def add_c(services: Services) -> None:
    """A third shard of one node, whose share of the hostnames the mover then moves."""
    assert services.shards is not None
    services.shards.put_shard("c", [ShardNode("127.0.0.4", 8443, 8080)])


def placement(state: ShardedState) -> dict[str, str]:
    """Where the router sends each of HOSTS now."""
    return {host: str(state.router.holding(host)) for host in HOSTS}


def switch(services: Services, mover: Mover, clock: FakeClock, shard: str = "c") -> None:
    """The target shard's node reports holding what was published, and the mover's next check
    (a poll, worker_interval, later) switches the router."""
    report_in_sync(services, shard)
    clock.advance(3)
    mover.tick()


def past_the_grace(mover: Mover, clock: FakeClock) -> None:
    """The grace (30 s here) runs out and the moves finish: old copies dropped."""
    clock.advance(31)
    until_done(mover)


def test_a_shard_added_moves_its_share_after_its_nodes_hold_it(
        moving: Services, clock: FakeClock) -> None:
    services, state = moving, moving.edge_shards
    assert services.shards is not None
    report_in_sync(services, "a", "b")
    before = placement(state)
    assert set(before.values()) == {"a", "b"}
    add_c(services)
    shards = services.shards.load()
    moved = [host for host in HOSTS if shards.assign(host) == "c"]
    assert 5 <= len(moved) <= 25, "about a third of the hostnames"
    mover_of(services).tick()
    for host in moved:
        assert state.holding("c", host) is not None, "published to the new shard"
        assert state.router.holding(host) == before[host], "the router has not switched yet"
    assert mover_of(services).in_flight()["c"] == {"from": 0, "to": len(moved)}

    mover_of(services).tick()
    assert all(state.router.holding(host) == before[host] for host in moved), \
        "c's node has not reported: no switch"
    switch(services, mover_of(services), clock)
    for host in moved:
        assert state.router.holding(host) == "c"
        assert state.holding(before[host], host) is not None, "the old shard keeps it"
    past_the_grace(mover_of(services), clock)
    for host in moved:
        assert state.holding(before[host], host) is None, "dropped after the grace"
    assert mover_of(services).in_flight() == {}
    unmoved = [host for host in HOSTS if host not in moved]
    assert all(state.router.holding(host) == before[host] for host in unmoved)
    if HOSTS[1] in moved:
        links = state.store("c").redirects
        assert links is not None and links.get(f"{HOSTS[1]}/go") is not None, "its link moved"
    assert not [item for item in all_items(mover_of(services).table)
                if str(item["key"]).startswith("move#")]


def router_reports(services: Services, node: str, running: bool = True) -> None:
    """A router's report of the router map it holds now, as the edge API's
    ``POST /router/nodes/<id>`` records it."""
    router = services.edge_shards.router
    services.edge_shards.store(ROUTER).report(node, router.versions()[1], None, running,
                                              shard=ROUTER, revision=router.mark())


def test_the_old_shard_drops_a_hostname_only_once_every_router_holds_its_switch(
        moving: Services, clock: FakeClock) -> None:
    """A router that serves and reports but has not applied the switch (behind, or refusing a
    delta) still sends the hostname's visitors to the old shard: the drop waits for it, past
    the grace, however much the map changed since. A router away (its report stale) or whose
    HAProxy does not run serves nobody, and holds nothing up."""
    services, state = moving, moving.edge_shards
    assert services.shards is not None
    report_in_sync(services, "a", "b")
    before = placement(state)
    router_reports(services, "away")
    clock.advance(mover_of(services).stale + 1)
    router_reports(services, "behind")
    router_reports(services, "stopped", running=False)
    add_c(services)
    moved = [host for host in HOSTS if services.shards.load().assign(host) == "c"]
    mover_of(services).tick()
    switch(services, mover_of(services), clock)
    assert all(state.router.holding(host) == "c" for host in moved)
    clock.advance(31)
    for _ in range(3):
        mover_of(services).tick()
        clock.advance(3)
    assert all(state.holding(before[host], host) is not None for host in moved), \
        "dropped while a router still sent visitors there"
    assert mover_of(services).in_flight()["c"]["to"] == len(moved)
    state.router.assign({"new.moves.test": "a"})  # the map moves on: a revision never read
    router_reports(services, "behind")
    clock.advance(31)
    until_done(mover_of(services))
    assert all(state.holding(before[host], host) is None for host in moved)


def test_a_router_left_on_the_timeline_a_restore_replaced_holds_the_drop_back(
        settings: Settings, services_with: ServicesWith, clock: FakeClock,
        tmp_path: Path) -> None:
    """A restore puts the router map's revision back. A router that has not applied the
    restored map (its snapshot refused, its HAProxy serving the old one) goes on reporting a
    revision of the timeline the restore replaced, which the switch of a move restored in
    flight, or made after, could take for its own. The restore moves every feed's revision past
    those (past the store's it replaced too: a second restore), and the moves' switches with
    it, so the drop waits for that router as for any router behind. A router that holds the
    restored map is answered again at the new revision, which its reports then name."""
    first = populated(services_with(clock=clock, shard_move_grace_seconds=30.0))
    report_in_sync(first, "a", "b")
    before = placement(first.edge_shards)
    add_c(first)
    assert first.shards is not None
    moved = [host for host in HOSTS if first.shards.load().assign(host) == "c"]
    mover_of(first).tick()
    switch(first, mover_of(first), clock)  # in flight: switched, dropped after the grace
    backup = tmp_path / "edge.backup"
    assert run_backup(argparse.Namespace(file=str(backup)), settings) == 0
    for n in range(8):  # the replaced timeline goes on
        first.edge_shards.router.assign({f"new{n}.moves.test": "a"})
    replaced = first.edge_shards.router.mark()
    restored = dataclasses.replace(settings, sqlite_path=str(tmp_path / "restored.db"))
    assert run_restore(argparse.Namespace(file=str(backup), force=False), restored) == 0
    services = services_with(base=restored, clock=clock, shard_move_grace_seconds=30.0)
    state = services.edge_shards
    assert state.router.mark() > replaced
    assert not state.router.answer(since=replaced)["delta"]
    assert {item["router_revision"] for item in all_items(mover_of(services).table)
            if "router_revision" in item} == {state.router.mark()}

    def stuck_reports() -> None:
        state.store(ROUTER).report("stuck", "v-replaced", "refused", True, shard=ROUTER,
                                   revision=replaced)
    clock.advance(31)
    for _ in range(3):
        stuck_reports()
        mover_of(services).tick()
        clock.advance(3)
    assert moved and all(state.holding(before[host], host) is not None for host in moved), \
        "dropped while the router left on the replaced timeline sent visitors there"
    edge = create_app(services).test_client()
    answer = edge.get("/api/v1/edge/router", headers=EDGE, query_string={
        "have": state.router.versions()[1], "since": replaced - 8})  # restored, renumbered
    assert answer.status_code == 200 and answer.get_json()["revision"] == state.router.mark()
    router_reports(services, "stuck")  # it applied the restored map, and the switch
    clock.advance(31)
    until_done(mover_of(services))
    assert all(state.holding(before[host], host) is None for host in moved)
    now = state.router.mark()
    assert run_restore(argparse.Namespace(file=str(backup), force=True), restored) == 0
    assert services_with(base=restored).edge_shards.router.mark() > now, "a second restore"


def test_a_round_s_moves_are_one_change_of_each_shard_they_touch(
        moving: Services, clock: FakeClock) -> None:
    """The moves a round takes to one shard are one change of it, their switch one change of
    the router's map, and their drop one change of each source: a node (and a router)
    follows one version for them, not one per hostname."""
    services, state = moving, moving.edge_shards
    report_in_sync(services, "a", "b")
    before = placement(state)
    add_c(services)
    mover = mover_of(services)
    revisions = {shard: state.revision(shard) for shard in ("a", "b", "c")}
    mover.tick()
    moved = [host for host in HOSTS if state.holding("c", host) is not None]
    assert len(moved) >= 5 and state.revision("c") == revisions["c"] + 1
    router = state.router.mark()
    switch(services, mover, clock)
    assert all(state.router.holding(host) == "c" for host in moved)
    assert state.router.mark() == router + 1, "one change of the map for every switch"
    clock.advance(31)
    mover.tick()  # the drops due: a tenth of each source a round (two of its ~20 here)
    dropped = {shard: [host for host in moved if before[host] == shard
                       and state.holding(shard, host) is None] for shard in ("a", "b")}
    assert max(len(hosts) for hosts in dropped.values()) >= 2
    for shard, hosts in dropped.items():
        assert state.revision(shard) == revisions[shard] + (1 if hosts else 0)
    until_done(mover)
    assert all(state.holding(before[host], host) is None for host in moved)


def test_a_move_a_second_shard_retargets_before_it_published_is_counted_once(
        moving: Services) -> None:
    services = moving
    assert services.shards is not None
    report_in_sync(services, "a", "b")
    add_c(services)
    mover = mover_of(services)
    assert mover.discover(*services.shards.current())
    services.shards.put_shard("d", [ShardNode("127.0.0.5", 8443, 8080)])
    assert mover.discover(*services.shards.current())  # before any move was taken
    targets = [target for _, target in mover.flying().values()]
    assert {"c", "d"} <= set(targets)
    counts = mover.in_flight()
    assert (counts["c"]["to"], counts["d"]["to"]) == (targets.count("c"), targets.count("d"))


def test_a_retarget_that_lost_its_lease_leaves_the_count_to_the_replica_that_moved_it(
        moving: Services) -> None:
    """A step taken on a move another replica changed meanwhile (its lease ran out) writes
    nothing, so it counts nothing: the counts stay those of the move items."""
    services, registry = moving, moving.shards
    assert registry is not None
    report_in_sync(services, "a", "b")
    add_c(services)
    mover = mover_of(services)
    assert mover.discover(*registry.current())
    stale = [move for item in mover.due() if (move := mover.leased(item)) is not None]
    registry.remove_shard("c")
    registry.put_shard("d", [ShardNode("127.0.0.5", 8443, 8080)])
    assert mover.discover(*registry.current())  # retargets c's moves that d takes now
    shards = registry.load()
    taken = [move for move in stale if mover.flying()[move["hostname"]][1] == "d"]
    assert taken, "some of c's moves go to d now"
    for move in taken:
        mover._steps._retarget(move, shards)  # the replica whose lease ran out
    for shard in ("c", "d"):
        assert mover.in_flight().get(shard, {"from": 0, "to": 0}) == mover.recount(shard)


def test_an_ordinary_change_never_switches_an_entry(moving: Services) -> None:
    services, state = moving, moving.edge_shards
    assert services.shards is not None
    add_c(services)
    shards = services.shards.load()
    host = next(h for h in HOSTS if shards.assign(h) == "c")
    old = state.router.holding(host)
    state.change({host: ("pub_2", self_signed(host)[1])}, CONFIG)
    assert state.router.holding(host) == old, "only the mover switches it"
    state.change({"brand-new.moves.test": ("pub_2", self_signed("brand-new.moves.test")[1])})
    assert state.router.holding("brand-new.moves.test") == shards.assign("brand-new.moves.test")


def test_an_interrupted_move_resumes_in_another_replica(
        moving: Services, services_with: ServicesWith, any_backend: Settings,
        clock: FakeClock) -> None:
    services, state = moving, moving.edge_shards
    assert services.shards is not None
    report_in_sync(services, "a", "b")
    add_c(services)
    first = Mover(state, services.shards, mover_of(services).table, grace=30, lease=10,
                  page=5, pages=1, owner="first", clock=clock)
    assert first.discover(*services.shards.current()) is False, "one page, then it dies"
    other = services_with(base=any_backend, clock=clock, shard_move_grace_seconds=30.0)
    second = mover_of(other)
    second.pages = 1000
    second.tick()
    shards = services.shards.load()
    moved = [host for host in HOSTS if shards.assign(host) == "c"]
    assert all(state.holding("c", host) is not None for host in moved), "nothing lost"

    leased = first.leased(first.due()[0])
    assert leased is not None
    assert leased["hostname"] not in [item["hostname"] for item in second.due()], \
        "a leased move is no other replica's"
    report_in_sync(services, "c")
    clock.advance(11)  # the first replica died holding its lease: it runs out
    second.tick()
    assert all(state.router.holding(host) == "c" for host in moved)
    past_the_grace(second, clock)
    assert second.in_flight() == {}
    assert all(state.holding(shard, host) is None for host in moved for shard in ("a", "b"))


def test_a_removed_shard_drains_then_goes(moving: Services, clock: FakeClock) -> None:
    services, state = moving, moving.edge_shards
    assert services.shards is not None
    report_in_sync(services, "a", "b")
    on_b = [host for host in HOSTS if state.router.holding(host) == "b"]
    services.shards.remove_shard("b")
    shards = services.shards.load()
    assert shards.names == ["a"] and shards.all_names == ["a", "b"]
    router = state.router.answer(None)
    assert "b" in router["shards"], "routers still reach b's nodes while it drains"
    mover_of(services).tick()
    assert all(state.holding("a", host) is not None for host in on_b)
    assert all(state.router.holding(host) == "b" for host in on_b)
    switch(services, mover_of(services), clock, "a")
    assert all(state.router.holding(host) == "a" for host in on_b)
    assert "b" in services.shards.load().shards, "still draining during the grace"
    past_the_grace(mover_of(services), clock)
    assert "b" not in services.shards.load().shards, "drained and removed"
    assert all(state.holding("b", host) is None for host in on_b)
    assert services.shards.load().draining == frozenset()
    assert move_key(on_b[0]) not in {item["key"] for item in all_items(mover_of(services).table)}


def test_a_hostname_drained_to_the_default_shard_keeps_an_entry_naming_it(
        any_backend: Settings, services_with: ServicesWith, clock: FakeClock) -> None:
    """The switch to the default shard names it in the router's map, and the entry stays:
    taking the entries off would be a removal routers refuse (test_shard_moves_edge.py)."""
    services = services_with(base=any_backend, clock=clock, shard_move_grace_seconds=30.0)
    state, registry = services.edge_shards, services.shards
    assert registry is not None
    for n, shard in enumerate((DEFAULT_SHARD, "a")):
        registry.put_shard(shard, [ShardNode(f"127.0.0.{n + 2}", 8443, 8080)])
    state.change({host: ("pub_1", self_signed(host)[1]) for host in HOSTS}, CONFIG)
    on_a = [host for host in HOSTS if state.router.holding(host) == "a"]
    assert on_a and all(state.router.holding(host) is None for host in HOSTS
                        if host not in on_a), "the default shard's hostnames have no entry"
    registry.remove_shard("a")
    mover = mover_of(services)
    mover.tick()
    switch(services, mover, clock, DEFAULT_SHARD)
    assert all(state.router.holding(host) == DEFAULT_SHARD for host in on_a)
    past_the_grace(mover, clock)
    assert "a" not in registry.load().shards
    assert all(state.router.holding(host) == DEFAULT_SHARD for host in on_a)
    assert all(state.holding(DEFAULT_SHARD, host) is not None for host in HOSTS)


def test_an_idle_round_reads_the_registry_and_one_index(moving: Services) -> None:
    mover = mover_of(moving)
    mover.tick()  # the registry's revision is seen once (its scan) and not again
    before = moving.backend.requests
    assert mover.tick() == 0
    per_query = 1 if moving.settings.storage_backend == "sqlite" else SPREAD + 1
    assert moving.backend.requests - before <= 1 + per_query, "a GetItem and the due query"


def test_a_worker_round_reads_the_registry_once(moving: Services) -> None:
    registry, mover = moving.shards, mover_of(moving)
    assert registry is not None
    mover.tick()
    with registry.once():  # what run_worker wraps a round in
        before = moving.backend.requests
        moving.publisher.refresh()  # asks the shard set for its change and for due links
        publisher_reads = moving.backend.requests - before
        mover.tick()
        assert registry.load() is registry.load()
    assert moving.backend.requests - before <= publisher_reads + \
        (1 if moving.settings.storage_backend == "sqlite" else SPREAD + 1), \
        "the mover's round adds its due query only"


CHILD = """
import json, sys
from kit.settings import load_settings
from control.wiring import Services
services = Services.from_settings(load_settings(env={}, **json.loads(sys.argv[1])))
services.moves.page, services.moves.pages, services.moves.lease = 2, 1, 1.0
while True:  # a replica's worker, killed wherever it is
    services.moves.tick()
"""


@pytest.mark.slow
def test_a_replica_killed_mid_move_loses_nothing(settings: Settings,
                                                 services_with: ServicesWith) -> None:
    services = services_with(shard_move_grace_seconds=0.2)
    state, registry = services.edge_shards, services.shards
    assert registry is not None
    for n, shard in enumerate(("a", "b")):
        registry.put_shard(shard, [ShardNode(f"127.0.0.{n + 2}", 8443, 8080)])
    state.change({host: ("pub_1", self_signed(host)[1]) for host in HOSTS}, CONFIG)
    before = placement(state)
    report_in_sync(services, "a", "b")
    registry.put_shard("c", [ShardNode("127.0.0.4", 8443, 8080)])
    moved = [host for host in HOSTS if registry.load().assign(host) == "c"]
    fields = {name: getattr(settings, name) for name in (
        "api_token", "edge_token", "encryption_keys", "data_dir", "platform_domains",
        "edge_cname_target", "edge_addresses")}
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(fields)],
                             env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        wait_until(lambda: any(state.holding("c", host) for host in moved), 60,
                   "the replica's first publish")
    finally:
        child.kill()  # SIGKILL: no cleanup of any kind
        child.wait(10)
    mover = mover_of(services)
    report_in_sync(services, "c")
    def resumed() -> bool:  # the moves themselves, not their counts: the kill can land
        mover.tick()        # between a move's write and its count's
        report_in_sync(services, "c")  # its node follows
        return mover.flying() == {}

    wait_until(resumed, 60, "the moves resumed by this replica")
    for host in HOSTS:
        shard = "c" if host in moved else before[host]
        assert state.router.holding(host) == shard and state.holding(shard, host) is not None
        assert [s for s in ("a", "b", "c") if state.holding(s, host) is not None] == [shard]
    wait_until(lambda: mover.tick() == 0 and mover.in_flight() == {}, 30, "the counts settled")


def test_a_reconciliation_during_a_move_switches_nothing(moving: Services) -> None:
    services, state = moving, moving.edge_shards
    assert services.shards is not None
    report_in_sync(services, "a", "b")
    before = placement(state)
    add_c(services)
    mover_of(services).tick()  # published to c, not switched
    moved = [host for host in HOSTS if services.shards.load().assign(host) == "c"]
    pems = {host: self_signed(host)[1] for host in HOSTS}
    state.reconcile({host: "pub_1" for host in HOSTS}, pems.get, CONFIG)  # a replica's start
    for host in moved:
        assert state.router.holding(host) == before[host], "the router still sends it there"
        assert state.holding(before[host], host) is not None, "which still serves it"
        assert state.holding("c", host) is not None
    report_in_sync(services, "c")
    mover_of(services).tick()
    assert all(state.router.holding(host) == "c" for host in moved), "the mover switches"


def test_a_shard_removed_before_its_moves_switched_gives_them_back(
        moving: Services, clock: FakeClock) -> None:
    services, state = moving, moving.edge_shards
    assert services.shards is not None
    report_in_sync(services, "a", "b")
    before = placement(state)
    add_c(services)
    mover = mover_of(services)
    mover.tick()  # published to c; its node never comes
    moved = [host for host in HOSTS if state.holding("c", host) is not None]
    assert moved
    services.shards.remove_shard("c")
    clock.advance(3)
    for _ in range(5):
        mover.tick()
    assert mover.in_flight() == {}
    assert "c" not in services.shards.load().shards, "nothing moves to or from it: it goes"
    for host in HOSTS:
        assert state.router.holding(host) == before[host]
        assert state.holding(before[host], host) is not None and state.holding("c", host) is None


def link_in(services: Services, shard: str, key: str) -> bool:
    links = services.edge_shards.store(shard).redirects
    item = links.get(key) if links is not None else None
    return item is not None and not item.get("removed")


def misplaced_after_the_scan(services: Services, clock: FakeClock) -> tuple[str, str, Mover]:
    """Shard c added and the move scan past every hostname, then a hostname that belongs on c
    placed by a replica that read the shard set before c: (hostname, its shard, the mover)."""
    state = services.edge_shards
    assert services.shards is not None
    report_in_sync(services, "a", "b")
    old = services.shards.load()
    add_c(services)
    mover = mover_of(services)
    mover.tick()
    shards = services.shards.load()
    host = next(h for h in (f"late{n}.moves.test" for n in range(100))
                if shards.assign(h) == "c")
    stale = ShardedState(state.tables, state._vault, lambda: old, clock=clock)
    stale.change({host: ("pub_1", self_signed(host)[1])})
    return host, old.assign(host), mover


def test_a_hostname_a_stale_replica_misplaced_moves_to_its_shard(
        moving: Services, clock: FakeClock) -> None:
    services, state = moving, moving.edge_shards
    host, placed, mover = misplaced_after_the_scan(services, clock)
    assert state.router.holding(host) == placed
    state.change({host: ("pub_2", self_signed(host)[1])})  # a replica that reads the new one
    assert state.router.holding(host) == placed, "no switch before c's node holds it"
    assert mover.table.get(move_key(host)) is not None, "a move is enqueued"
    mover.tick()
    switch(services, mover, clock)
    assert state.router.holding(host) == "c"
    assert str(state.store("c").routes.get(host)["publication_id"]) == "pub_2"
    past_the_grace(mover, clock)
    assert state.holding(placed, host) is None, "dropped from where it was misplaced"


def test_a_reconciliation_in_the_grace_keeps_the_old_shard(
        moving: Services, clock: FakeClock) -> None:
    services, state = moving, moving.edge_shards
    assert services.shards is not None
    report_in_sync(services, "a", "b")
    before = placement(state)
    add_c(services)
    mover = mover_of(services)
    mover.tick()
    switch(services, mover, clock)
    moved = [host for host in HOSTS if services.shards.load().assign(host) == "c"]
    assert all(state.router.holding(host) == "c" for host in moved), "switched"
    pems = {host: self_signed(host)[1] for host in HOSTS}
    state.reconcile({host: "pub_1" for host in HOSTS}, pems.get, CONFIG)  # a replica's start
    for host in moved:
        assert state.holding(before[host], host) is not None, "routers catching up find it"
    past_the_grace(mover, clock)
    assert all(state.holding(before[host], host) is None for host in moved)


def test_the_links_of_a_moving_host_follow_its_move(
        moving: Services, clock: FakeClock) -> None:
    services, state = moving, moving.edge_shards
    assert services.shards is not None
    report_in_sync(services, "a", "b")
    before = placement(state)
    add_c(services)
    mover = mover_of(services)
    mover.tick()  # published to c, not switched
    host = next(h for h in HOSTS if services.shards.load().assign(h) == "c")
    key = f"{host}/new"
    state.reconcile_redirects({key: Redirect(host, "new", 302, "https://example.com/")})
    assert link_in(services, before[host], key), "where the router sends its visitors now"
    assert link_in(services, "c", key)
    switch(services, mover, clock)
    assert state.router.holding(host) == "c"
    assert link_in(services, before[host], key), "kept during the grace"
    past_the_grace(mover, clock)
    assert not link_in(services, before[host], key), "dropped with the route"
    assert link_in(services, "c", key)


def test_a_count_a_crash_left_too_low_is_zeroed_once_the_moves_end(
        moving: Services, clock: FakeClock) -> None:
    services = moving
    assert services.shards is not None
    report_in_sync(services, "a", "b")
    before = placement(services.edge_shards)
    add_c(services)
    mover = mover_of(services)
    mover.tick()
    source = before[next(h for h in HOSTS if services.shards.load().assign(h) == "c")]
    mover.counts.add(source, "c", -1)  # a replica died between a move's write and its count
    switch(services, mover, clock)
    for _ in range(50):
        if not mover.flying():
            break
        clock.advance(31)
        mover.tick()
    assert mover.flying() == {}
    assert mover.in_flight() != {}, "one below zero once the moves ended"
    clock.advance(31)
    mover.tick()
    assert mover.in_flight() == {}


def test_the_counts_stay_while_the_due_index_lags_the_moves(
        moving: Services, lag: Callable[[float], None]) -> None:
    services = moving
    assert services.shards is not None
    report_in_sync(services, "a", "b")
    lag(600.0)  # the due index shows no move written from now on
    add_c(services)
    mover = mover_of(services)
    mover.tick()  # enqueues them, takes none (none shows as due) and checks the counts
    moved = [h for h in HOSTS if services.shards.load().assign(h) == "c"]
    assert len(mover.flying()) == len(moved)
    assert mover.in_flight()["c"] == {"from": 0, "to": len(moved)}


def test_a_count_left_off_by_a_crash_corrects_itself(
        moving: Services, clock: FakeClock) -> None:
    services, state = moving, moving.edge_shards
    assert services.shards is not None
    report_in_sync(services, "a", "b")
    mover = mover_of(services)
    mover.counts.add("b", "a", 1)  # a crash after a move's drop, before its count went down
    services.shards.remove_shard("b")
    mover.tick()
    switch(services, mover, clock, "a")
    for _ in range(50):  # each a grace apart, until b is recounted and gone
        if "b" not in mover.in_flight() and "b" not in services.shards.load().shards:
            break
        clock.advance(31)
        mover.tick()
    assert "b" not in mover.in_flight(), "recounted"
    assert "b" not in services.shards.load().shards, "drained and removed"
    assert all(state.holding("b", host) is None for host in HOSTS)

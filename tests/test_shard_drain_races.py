"""Shard removals and moves racing what else goes on: a draining shard goes only once its
hostnames have moved off (not merely once no move is left: the scan that finds them may still
be under way, page by page, or a stale replica may have put one there after it), a shard added
again under a drained one's name serves the config of now, and a domain removed while a move
publishes it stays removed."""
from __future__ import annotations

from typing import Any, Callable

import pytest

from control.wiring import Services
from edge.moves import Mover, move_key
from edge.sharded_state import EdgeTables, ShardedState
from edge.shards import ShardNode, assign
from edge.state import EdgeConfig, Redirect
from kit.settings import Settings
from kit.x509 import self_signed
from store import Item, Table
from tests.conftest import FakeClock, ServicesWith
from tests.test_shard_moves import link_in, report_in_sync

CONFIG = EdgeConfig(("127.0.0.1:9",), ("127.0.0.1:9",))
HOSTS = [f"d{n}.drain.test" for n in range(30)]


def sharded(services: Services, *names: str) -> None:
    """Shards ``names`` of one node each, and HOSTS spread over them."""
    assert services.shards is not None
    for n, shard in enumerate(names):
        services.shards.put_shard(shard, [ShardNode(f"127.0.0.{n + 2}", 8443, 8080)])
    pem = self_signed(HOSTS[0])[1]
    services.edge_shards.change({host: ("pub_1", pem) for host in HOSTS}, CONFIG)


def small_pages(services: Services, clock: FakeClock) -> Mover:
    """A replica's mover whose scan reads 2 rows a round: a fleet bigger than one round's
    scan (20 pages of 500 by default), without 10,000 routes."""
    assert services.shards is not None and services.moves is not None
    return Mover(services.edge_shards, services.shards, services.moves.table, grace=30.0,
                 poll=1.0, page=2, pages=1, clock=clock)


def rounds(services: Services, mover: Mover, clock: FakeClock, count: int,
           shards: tuple[str, ...] = ("a", "b")) -> None:
    """Worker rounds a second apart, the shards' nodes reporting in sync after each."""
    for _ in range(count):
        mover.tick()
        report_in_sync(services, *shards)
        clock.advance(1.0)


def test_a_draining_shard_stays_until_the_scan_of_its_revision_found_its_hostnames(
        any_backend: Settings, services_with: ServicesWith, clock: FakeClock) -> None:
    services = services_with(base=any_backend, clock=clock, shard_move_grace_seconds=30.0)
    state, registry = services.edge_shards, services.shards
    assert registry is not None
    sharded(services, "a", "b", "c")
    mover = small_pages(services, clock)
    rounds(services, mover, clock, 40)  # the scan of this revision done: nothing moves
    on_c = [host for host in HOSTS if state.holding("c", host) is not None]
    assert on_c
    registry.remove_shard("c")
    clock.advance(31)  # an idle round is due to recount the draining shards
    mover.tick()  # the new revision's scan has read a page of a's rows only
    assert "c" in registry.load().shards, "c holds every hostname it had"
    for _ in range(300):
        if "c" not in registry.load().shards:
            break
        assert all(state.holding("c", host) is not None or
                   state.router.holding(host) in ("a", "b") for host in on_c), \
            "c goes only once every hostname it held is served elsewhere"
        rounds(services, mover, clock, 1)
    assert "c" not in registry.load().shards, "drained and removed"
    assert all(state.router.holding(host) in ("a", "b") and state.holding("c", host) is None
               for host in on_c)


def test_a_draining_shard_a_stale_replica_wrote_to_after_the_scan_stays(
        services_with: ServicesWith, clock: FakeClock) -> None:
    """No move is left off c, but c holds a route a replica that read the shard set before
    the removal put there: c stays (its kept figures say so) until a reconciliation hands
    the hostname to the mover, and goes once that move has taken it off."""
    services = services_with(clock=clock, shard_move_grace_seconds=30.0)
    state, registry, mover = services.edge_shards, services.shards, services.moves
    assert registry is not None and mover is not None
    sharded(services, "a", "b", "c")
    before = registry.load()
    registry.remove_shard("c")
    mover.tick()  # the scan: c's hostnames all have moves, published to a and b
    late = next(host for host in (f"late{n}.drain.test" for n in range(100))
                if before.assign(host) == "c")
    stale = ShardedState(state.tables, state._vault, lambda: before, clock=clock)
    stale.change({late: ("pub_1", self_signed(late)[1])})
    assert state.router.holding(late) == "c"
    rounds(services, mover, clock, 5)
    clock.advance(31)
    rounds(services, mover, clock, 20)
    assert mover.in_flight() == {}, "every move the scan found is done"
    assert "c" in registry.load().shards, "c still serves a hostname"
    assert state.holding("c", late) is not None and state.router.holding(late) == "c"
    pems = {host: self_signed(host)[1] for host in HOSTS + [late]}
    state.reconcile({host: "pub_1" for host in HOSTS + [late]}, pems.get, CONFIG)
    assert mover.table.get(move_key(late)) is not None, "handed to the mover"
    rounds(services, mover, clock, 5)
    clock.advance(31)
    rounds(services, mover, clock, 20)
    assert "c" not in registry.load().shards
    assert state.router.holding(late) == registry.load().assign(late)
    assert state.holding(registry.load().assign(late), late) is not None


def test_a_shard_added_again_under_a_drained_name_serves_the_config_of_now(
        services_with: ServicesWith, clock: FakeClock) -> None:
    services = services_with(clock=clock, shard_move_grace_seconds=5.0)
    state, registry, mover = services.edge_shards, services.shards, services.moves
    assert registry is not None and mover is not None
    sharded(services, "a", "b", "c")
    registry.remove_shard("c")
    for _ in range(6):
        rounds(services, mover, clock, 10)
        clock.advance(6)
    assert "c" not in registry.load().shards, "c drained and deleted"
    assert state.store("c").meta() is not None, "its namespace keeps its old version item"
    moved_on = EdgeConfig(("10.9.9.9:80",), ("10.9.9.9:80",))
    state.change({}, moved_on)  # the app fleet moved: every configured shard gets it
    registry.put_shard("c", [ShardNode("127.0.0.4", 8443, 8080)])
    mover.tick()  # the scan, and the publish of c's share with the config
    assert any(state.holding("c", host) is not None for host in HOSTS)
    configs = {shard: (state.store(shard).meta() or {}).get("config") for shard in "abc"}
    assert configs == dict.fromkeys("abc", moved_on.to_json())


class Interleaved:
    """An edge table that runs ``meanwhile`` once, just after the first read of a key that
    starts with ``prefix``: the other side of a race, at the worst moment."""

    def __init__(self, table: Table, prefix: str, meanwhile: Callable[[], object]) -> None:
        self._table, self._prefix = table, prefix
        self._meanwhile: Callable[[], object] | None = meanwhile
        self.spec, self.lacking = table.spec, table.lacking

    def get(self, key: str) -> Item | None:
        found = self._table.get(key)
        if key.startswith(self._prefix) and self._meanwhile is not None:
            meanwhile, self._meanwhile = self._meanwhile, None
            meanwhile()
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)


@pytest.mark.parametrize("shards, added", [(("a", "b"), "c"), (("b", "c"), "a")])
def test_a_domain_removed_while_its_move_publishes_it_stays_removed(
        any_backend: Settings, services_with: ServicesWith, clock: FakeClock,
        shards: tuple[str, str], added: str) -> None:
    """The publisher removes the domain between the move's read of the old shard's route and
    certificate and its commit in the new one (which sorts before or after the old one)."""
    services = services_with(base=any_backend, clock=clock, shard_move_grace_seconds=5.0)
    registry = services.shards
    assert registry is not None and services.moves is not None
    sharded(services, *shards)
    registry.put_shard(added, [ShardNode("127.0.0.9", 8443, 8080)])
    victim = next(host for host in HOSTS if registry.load().assign(host) == added)
    source = services.edge_shards.router.holding(victim)
    assert source in shards
    tables = services.edge_shards.tables
    racing = Interleaved(tables.certs, f"{source}|{victim}/",
                         lambda: state.change({victim: None}))
    state = ShardedState(EdgeTables(tables.state, tables.routes, racing,  # type: ignore[arg-type]
                                    tables.nodes, tables.reports, tables.redirects),
                         services.edge_shards._vault, registry.load, clock=clock)
    mover = Mover(state, registry, services.moves.table, grace=5.0, poll=1.0, clock=clock)
    mover.tick()  # the scan, then the publish: the removal lands in the middle
    assert racing._meanwhile is None, "the removal ran during the publish"
    assert state.holding(source, victim) is None
    for _ in range(20):
        report_in_sync(services, added)
        clock.advance(10)
        mover.tick()
    assert state.holding(added, victim) is None, "the removed domain is served nowhere"
    assert state.router.holding(victim) is None
    assert mover.table.get(move_key(victim)) is None
    moved = [host for host in HOSTS if registry.load().assign(host) == added and host != victim]
    assert moved and all(state.router.holding(host) == added for host in moved)


def test_a_link_removed_while_its_host_s_move_publishes_it_stays_removed(
        services_with: ServicesWith, clock: FakeClock) -> None:
    services = services_with(clock=clock, shard_move_grace_seconds=5.0)
    registry = services.shards
    assert registry is not None and services.moves is not None
    sharded(services, "a", "b")
    host = next(host for host in HOSTS if assign(host, ["a", "b", "c"]) == "c")
    link = Redirect(host, "go", 302, "https://example.com/")
    services.edge_shards.change({}, redirects={link.key: link})
    registry.put_shard("c", [ShardNode("127.0.0.9", 8443, 8080)])
    source = services.edge_shards.router.holding(host)
    assert source in ("a", "b") and link_in(services, source, link.key)
    tables = services.edge_shards.tables
    racing = Interleaved(tables.redirects, f"{source}|{link.key}",
                         lambda: state.change({}, redirects={link.key: None}))
    state = ShardedState(EdgeTables(tables.state, tables.routes, tables.certs, tables.nodes,
                                    tables.reports, racing),  # type: ignore[arg-type]
                         services.edge_shards._vault, registry.load, clock=clock)
    mover = Mover(state, registry, services.moves.table, grace=5.0, poll=1.0, clock=clock)
    mover.tick()  # the scan, then the publish: the removal lands in the middle
    assert racing._meanwhile is None, "the removal ran during the publish"
    for _ in range(20):
        report_in_sync(services, "c")
        clock.advance(10)
        mover.tick()
    assert state.router.holding(host) == "c" and state.holding("c", host) is not None
    assert not any(link_in(services, shard, link.key) for shard in ("a", "b", "c")), \
        "the removed link is served nowhere"

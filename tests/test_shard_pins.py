"""A pin or unpin moves its one hostname (edge/moves.py, edge/shard_registry.py): the mover
finds it in the registry's log and enqueues its move alone, so a pin costs the same store
requests at 10 and at 1,000 domains (DESIGN.md, "Work proportional to change"); a shard
changed, or a change the log does not hold (the release before's), still has every route read.
"""
from __future__ import annotations

from typing import Iterator

import pytest

from control.wiring import Services
from edge.shard_registry import CONFIG as REGISTRY_CONFIG
from edge.shards import ShardNode
from edge.state_changes import RouteChange
from kit.settings import Settings
from kit.x509 import self_signed
from store import VERSION
from tests.conftest import FakeClock, ServicesWith
from tests.test_shard_moves import (CONFIG, HOSTS, link_in, mover_of, populated, report_in_sync,
                                    until_done)

PEM = self_signed("pins.test")[1]


@pytest.fixture
def moving(any_backend: Settings, services_with: ServicesWith,
           clock: FakeClock) -> Iterator[Services]:
    yield populated(services_with(base=any_backend, clock=clock, shard_move_grace_seconds=30.0))


def other(services: Services, host: str) -> str:
    assert services.shards is not None
    return "b" if services.shards.load().assign(host) == "a" else "a"


def pinned_through(services: Services, clock: FakeClock, host: str) -> dict[tuple[str, str], int]:
    """Pin ``host`` to the other shard and take the worker round that enqueues and publishes
    its move: the store requests of both, by (table, operation). Then the move ends."""
    assert services.shards is not None
    mover = mover_of(services)
    target = other(services, host)
    before = dict(services.backend.operations)
    services.shards.pin(host, target)
    assert mover.tick() == 1, "its move, published"
    spent = {op: count - before.get(op, 0) for op, count in services.backend.operations.items()
             if count != before.get(op, 0)}
    report_in_sync(services, target)
    clock.advance(3)
    mover.tick()
    assert services.edge_shards.router.holding(host) == target, "switched"
    clock.advance(31)
    until_done(mover)
    return spent


@pytest.mark.slow  # 1,000 routes written, on each store
def test_a_pin_costs_the_same_with_10_or_1000_domains(moving: Services,
                                                       clock: FakeClock) -> None:
    mover = mover_of(moving)
    report_in_sync(moving, "a", "b")
    mover.tick()  # the shards' own scan
    pinned_through(moving, clock, HOSTS[2])  # the first move writes the counts item
    small = pinned_through(moving, clock, HOSTS[3])
    many: dict[str, RouteChange] = {f"bulk{n}.pins.test": ("pub_2", PEM) for n in range(1000)}
    moving.edge_shards.change(many, CONFIG)
    report_in_sync(moving, "a", "b")
    large = pinned_through(moving, clock, HOSTS[4])
    assert large == small, "the same requests on every table"
    assert not any(table.endswith("edge_routes") and op in ("scan", "query", "query_range")
                   for table, op in large), f"no route listed: {large}"


@pytest.mark.parametrize("wired", [False, True], ids=["links-read", "links-of"])
def test_a_pin_moves_the_links_of_its_host(moving: Services, clock: FakeClock,
                                           wired: bool) -> None:
    """The host's links found by reading the source shard's, or by ``links_of`` (what the
    wiring hands the mover: the link service's links of a short domain)."""
    host, key = HOSTS[1], f"{HOSTS[1]}/go"
    assert moving.shards is not None
    source = moving.shards.load().assign(host)
    mover = mover_of(moving)
    mover.links_of = (lambda name: [f"{name}/go", f"{name}/gone"] if name == host else []) \
        if wired else None
    mover.tick()
    target = other(moving, host)
    pinned_through(moving, clock, host)
    assert target != source and link_in(moving, target, key)
    assert not link_in(moving, source, key), "dropped from the old shard with the route"
    moving.shards.unpin(host)
    mover.tick()
    report_in_sync(moving, source)
    clock.advance(3)
    mover.tick()
    clock.advance(31)
    until_done(mover)
    assert moving.edge_shards.router.holding(host) == source, "an unpin moves it back"
    assert link_in(moving, source, key) and not link_in(moving, target, key)


def test_a_shard_added_by_a_release_that_logs_nothing_is_still_found(
        moving: Services) -> None:
    """The release before writes the config without a log line: its revision missing from
    the log, the mover reads every route, as before."""
    assert moving.shards is not None
    mover = mover_of(moving)
    mover.tick()
    moving.shards.pin(HOSTS[5], other(moving, HOSTS[5]))  # a logged change on top of it
    table = moving.shards.table
    stored = table.get(REGISTRY_CONFIG)
    assert stored is not None
    old = {key: value for key, value in stored.items() if key != VERSION}
    old["shards"] = {**old["shards"], "c": [ShardNode("127.0.0.4", 8443, 8080).to_json()]}
    old["revision"] = int(stored["revision"]) + 1
    table.put(old, expected_version=stored[VERSION])
    mover.tick()
    assert moving.shards.load().names == ["a", "b", "c"]
    expected = {h for h in HOSTS if moving.shards.load().assign(h) == "c"}
    assert expected and set(mover.flying()) >= expected, "the shard's share found"


def test_a_pin_during_a_shard_s_scan_lets_the_scan_go_on(moving: Services) -> None:
    """A shard added takes several rounds to scan; a pin landing meanwhile enqueues its
    hostname and the scan goes on from its cursor, under the new revision."""
    assert moving.shards is not None
    mover = mover_of(moving)
    mover.tick()
    mover.page, mover.pages = 5, 1
    moving.shards.put_shard("c", [ShardNode("127.0.0.4", 8443, 8080)])
    mover.tick()  # one page of the scan
    before = mover.table.get("scan")
    assert before is not None and before["phase"] == "routes" and before["cursor"]
    host = next(h for h in HOSTS[10:] if moving.shards.load().assign(h) != "c")
    moving.shards.pin(host, "c")
    mover.tick()
    after = mover.table.get("scan")
    assert after is not None and after["revision"] == moving.shards.current()[0]
    assert after["cursor"] != before["cursor"] and after["cursor"], "on from the cursor"
    assert host in mover.flying(), "the pinned hostname enqueued at once"
    for _ in range(40):
        if (mover.table.get("scan") or {}).get("phase") == "end":
            break
        mover.tick()
    shards = moving.shards.load()
    expected = {h for h in HOSTS if shards.assign(h) == "c"}
    assert expected <= set(mover.flying()) | {h for h in HOSTS if
                                              moving.edge_shards.router.holding(h) == "c"}


def test_a_pin_moves_the_links_the_link_service_holds_for_its_host(
        any_backend: Settings, services_with: ServicesWith, clock: FakeClock) -> None:
    """As the control service wires the mover: the host's links found by the link table's
    domain index, whichever shard serves them."""
    host = HOSTS[1]
    services = populated(services_with(base=any_backend, clock=clock, short_domains=[host],
                                       shard_move_grace_seconds=30.0))
    made = services.links.create(host, "https://example.com/made", "pub_1", slug="made",
                                 code=302)
    key = f"{host}/{made['slug']}"
    assert services.shards is not None
    source = services.shards.load().assign(host)
    assert link_in(services, source, key), "published where its host is served"
    mover_of(services).tick()
    target = other(services, host)
    pinned_through(services, clock, host)
    assert link_in(services, target, key) and not link_in(services, source, key)


@pytest.mark.parametrize("stage", ["switch", "drop"])
def test_an_unpin_while_the_pins_move_runs_brings_the_links_back_too(
        moving: Services, clock: FakeClock, stage: str) -> None:
    """The move's last step starts the move back when the host's shard changed meanwhile: it
    carried no links, so they stayed on the shard the router no longer sends the host to."""
    host, key = HOSTS[1], f"{HOSTS[1]}/go"
    assert moving.shards is not None
    source = moving.shards.load().assign(host)
    mover = mover_of(moving)
    mover.links_of = None  # the link was made on the edge directly: read the shard's links
    report_in_sync(moving, "a", "b")
    mover.tick()
    target = other(moving, host)
    moving.shards.pin(host, target)
    assert mover.tick() == 1, "enqueued and published"
    if stage == "drop":
        report_in_sync(moving, target)
        clock.advance(3)
        mover.tick()
        assert moving.edge_shards.router.holding(host) == target
    moving.shards.unpin(host)
    for _ in range(30):
        report_in_sync(moving, "a", "b")
        clock.advance(31)
        mover.tick()
        if not mover.flying():
            break
    assert not mover.flying()
    assert moving.edge_shards.router.holding(host) == source, "back where the hash says"
    assert link_in(moving, source, key), "its link served where its host is"

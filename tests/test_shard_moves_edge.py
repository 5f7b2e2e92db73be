"""A shard added while real edge nodes serve (issue 29 item 4): the moved hostnames reach the new
shard's node (a real EdgeAgent and HAProxy) first, the router's map switches only once that node
reported them applied, and the old shard's node drops them after the grace."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from admin_app import create_app
from control.wiring import Services
from edge.agent import EdgeAgent
from edge.moves import move_key
from edge.node import EdgeNode
from edge.router_agent import RouterAgent
from edge.router_feed import ROUTER
from edge.shards import DEFAULT_SHARD, ShardNode
from edge.state import EdgeConfig
from kit.procs import free_port
from kit.settings import Settings
from kit.x509 import self_signed
from tests.conftest import ServicesWith, serving, wait_until
from tests.test_router_ports import router_synced

EDGE = {"Authorization": "Bearer edge-token-0123456789"}
HOSTS = [f"e{n}.moves.test" for n in range(12)]


@pytest.fixture
def control(any_backend: Settings,
            services_with: ServicesWith) -> Iterator[tuple[Services, str]]:
    services = services_with(base=any_backend, shard_move_grace_seconds=1.0)
    with serving(create_app(services)) as url:
        yield services, url


@pytest.mark.slow
def test_a_shard_added_under_real_nodes_moves_without_a_gap(
        control: tuple[Services, str], tmp_path: Path) -> None:
    services, url = control
    state, registry, mover = services.edge_shards, services.shards, services.moves
    assert registry is not None and mover is not None
    mover.poll = 0.1
    registry.put_shard("a", [ShardNode("127.0.0.2", 8443, 8080)])
    state.change({host: ("pub_1", self_signed(host)[1]) for host in HOSTS},
                 EdgeConfig(("127.0.0.1:9",), ("127.0.0.1:9",)))
    nodes = {shard: EdgeNode(tmp_path / shard, http_port=free_port(), https_port=free_port())
             for shard in ("a", "c")}
    agents = {shard: EdgeAgent(nodes[shard], url, "edge-token-0123456789",
                               node_id=f"{shard}1", shard=shard, watch=0.0)
              for shard in ("a", "c")}
    try:
        assert agents["a"].sync() is True
        assert sorted(nodes["a"].existing_routes()) == sorted(HOSTS)
        registry.put_shard("c", [ShardNode("127.0.0.4", 8443, 8080)])
        moved = [host for host in HOSTS if registry.load().assign(host) == "c"]
        assert moved, "some hostnames go to the new shard"
        mover.tick()
        assert all(state.holding("c", host) is not None for host in moved), "published"
        wait_until(lambda: mover.tick() == 0 or True, 1, "a round")  # c's node has not synced
        assert all(state.router.holding(host) == "a" for host in moved), "no switch yet"

        assert agents["c"].sync() is True  # loads the moved certificates, then reports
        assert sorted(nodes["c"].existing_routes()) == sorted(moved)
        wait_until(lambda: mover.tick() is not None and all(
            state.router.holding(host) == "c" for host in moved), 20, "the switch")
        router = requests.get(f"{url}/api/v1/edge/router", headers=EDGE, timeout=10).json()
        assert {host: router["hosts"][host] for host in moved} == {h: "c" for h in moved}
        agents["a"].sync()
        assert set(moved) <= set(nodes["a"].existing_routes()), "a serves them in the grace"

        wait_until(lambda: mover.tick() is not None and agents["a"].sync() is not None
                   and mover.in_flight() == {}, 30, "the drops after the grace, a few a round")
        assert not set(moved) & set(nodes["a"].existing_routes())
        assert sorted(nodes["a"].existing_routes()) == sorted(set(HOSTS) - set(moved))
    finally:
        for node in nodes.values():
            node.stop()


@pytest.mark.slow
def test_a_shard_drained_to_the_default_shard_leaves_a_real_router_following(
        control: tuple[Services, str], tmp_path: Path) -> None:
    """A shard removed beside the default shard: its hostnames move to the default shard. A
    router refuses a delta that takes off more than 30% of its entries, so the switch points
    each entry at the default shard rather than taking it off, however many switch at once,
    and a router that was away for the whole drain takes it too. The drop waits for a router
    that reports and has not applied the switch, not for one away."""
    services, url = control
    state, registry, mover = services.edge_shards, services.shards, services.moves
    assert registry is not None and mover is not None
    mover.poll = 0.1
    for n, shard in enumerate((DEFAULT_SHARD, "a")):
        registry.put_shard(shard, [ShardNode(f"127.0.0.{n + 2}", 8443, 8080)])
    hosts = [f"d{n}.drain.test" for n in range(30)]
    state.change({host: ("pub_1", self_signed(host)[1]) for host in hosts},
                 EdgeConfig(("127.0.0.1:9",), ("127.0.0.1:9",)))
    on_a = [host for host in hosts if registry.load().assign(host) == "a"]
    assert len(on_a) >= 10, "enough entries for the router's mass-removal check"
    router, agent = router_synced(tmp_path / "router", lambda r: RouterAgent(
        r, url, "edge-token-0123456789", "r1", watch=0.0))
    try:
        away, away_agent = router_synced(tmp_path / "away", lambda r: RouterAgent(
            r, url, "edge-token-0123456789", "r2", watch=0.0))
    except BaseException:
        router.stop()
        raise
    try:
        assert router.applied_version is not None and away.applied_version is not None
        assert router.hosts() == away.hosts() == {host: "a" for host in on_a}
        registry.remove_shard("a")
        mover.tick()  # published to the default shard
        assert all(state.holding(DEFAULT_SHARD, host) is not None for host in on_a)
        default = state.store(DEFAULT_SHARD)

        def switched() -> bool:
            meta = default.meta()  # the default shard's node holds what it has
            default.report("default1", meta["edge_version"] if meta else None, None, True,
                           DEFAULT_SHARD)
            mover.tick()
            return all(state.router.holding(host) != "a" for host in on_a)

        wait_until(switched, 20, "the switch")
        assert agent.sync() is True, "the router takes the switch"
        assert router.last_error is None
        assert set(router.hosts().values()) == {DEFAULT_SHARD}
        moves = [move_key(host) for host in on_a]
        wait_until(lambda: all(move["step"] == "drop" and move["due_at"] <= time.time()
                               for move in mover.table.get_many(moves).values()),
                   10, "the grace")
        mover.tick()
        assert all(state.holding("a", host) is not None for host in on_a), \
            "dropped while r2, which reports, had not applied the switch"
        mover.stale = 3.0  # r2 reported last before the switch: away, once it is older

        def drained() -> bool:
            agent.sync()  # r1 keeps reporting the revision it applied: it counts
            mover.tick()
            return "a" not in registry.load().shards
        wait_until(drained, 30, "a drained and removed")
        assert {node["node_id"]: node["last_seen_seconds"] > mover.stale
                for node in state.store(ROUTER).list_nodes()} == {"r1": False, "r2": True}
        assert all(state.holding("a", host) is None for host in on_a)
        assert away_agent.sync() is True, "back after the drain: it takes the whole change"
        assert away.last_error is None
        assert away.hosts() == router.hosts() == {host: DEFAULT_SHARD for host in on_a}
    finally:
        router.stop()
        away.stop()

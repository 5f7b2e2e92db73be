"""Routers forced past their safety check (edge/router_feed.py, admin/shards_api.py): a router
refuses a change that takes off most of its entries; an operator who knows the removal is
meant forces the version the routers are offered, and a real router agent then takes it. The
force names that version and ends with the next change of the map."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from control.wiring import Services
from edge.plan import UnsafePlan
from edge.router_agent import RouterAgent
from edge.sharded_state import ShardedState
from edge.shards import DEFAULT_SHARD, ShardNode
from kit.x509 import self_signed
from tests.test_edge_shards_feed import API, CONFIG, EDGE, control  # noqa: F401 (a fixture)
from tests.test_router_ports import router_synced

PLATFORM = API


def offered(url: str) -> dict[str, Any]:
    """The router feed's answer, as a router agent gets it."""
    got = requests.get(f"{url}/api/v1/edge/router", headers=EDGE, timeout=10)
    assert got.status_code == 200, got.text
    return dict(got.json())


def force(url: str, version: str) -> requests.Response:
    return requests.post(f"{url}/api/v1/ops/router/force", json={"version": version},
                         headers=PLATFORM, timeout=10)


def on_two_shards(services: Services) -> tuple[ShardedState, list[str]]:
    """The default shard and ``a``, 30 routes spread over them: the state, and a's routes."""
    state, registry = services.edge_shards, services.shards
    assert registry is not None
    for n, shard in enumerate((DEFAULT_SHARD, "a")):
        registry.put_shard(shard, [ShardNode(f"127.0.0.{n + 2}", 8443, 8080)])
    hosts = [f"f{n}.force.test" for n in range(30)]
    state.change({host: ("pub_1", self_signed(host)[1]) for host in hosts}, CONFIG)
    return state, [host for host in hosts if registry.load().assign(host) == "a"]


def test_a_router_refusing_a_large_removal_takes_it_once_forced(
        control: tuple[Services, str], tmp_path: Path) -> None:
    services, url = control
    state, on_a = on_two_shards(services)
    assert len(on_a) >= 10, "enough entries for the router's mass-removal check"
    router, agent = router_synced(tmp_path / "router", lambda r: RouterAgent(
        r, url, "edge-token-0123456789", "r1", watch=0.0))
    try:
        assert router.hosts() == {host: "a" for host in on_a}
        state.change({host: None for host in on_a})  # every domain of shard a goes, meant
        with pytest.raises(UnsafePlan):
            agent.sync()
        version = offered(url)["version"]
        assert router.last_error is not None and "refused unless forced" in router.last_error
        assert f"version {version}:" in router.last_error, "what the operator forces"
        assert offered(url).get("force") is None, "nobody forced it"

        stale = force(url, "0123456789abcdef")
        assert stale.status_code == 409
        assert version in stale.json()["error"], "the refusal names the current version"
        assert force(url, version).status_code == 200
        assert offered(url)["force"] is True
        assert agent.sync() is True, "the real agent takes the forced version"
        assert router.last_error is None and router.hosts() == {}
        assert router.applied_version == version

        state.change({on_a[0]: ("pub_1", self_signed(on_a[0])[1])})  # its entry again
        assert offered(url).get("force") is None, "the next change of the map ends the force"
    finally:
        router.stop()


def test_the_force_is_in_the_delta_a_router_behind_asks_for(
        control: tuple[Services, str]) -> None:
    services, url = control
    state, registry = services.edge_shards, services.shards
    assert registry is not None
    registry.put_shard("a", [ShardNode("127.0.0.2", 8443, 8080)])
    state.change({"one.force.test": ("pub_1", self_signed("one.force.test")[1])}, CONFIG)
    before = offered(url)
    state.change({"one.force.test": None})
    assert force(url, offered(url)["version"]).status_code == 200
    got = requests.get(f"{url}/api/v1/edge/router", params={"since": before["revision"]},
                       headers=EDGE, timeout=10).json()
    assert got["delta"] is True and got["force"] is True


def test_a_force_ends_for_good_with_the_next_change(control: tuple[Services, str]) -> None:
    """The map coming back later to the very content that was forced (emptied again, by a bug
    this time) is not forced again: the force named one version, once."""
    services, url = control
    state, on_a = on_two_shards(services)
    state.change({host: None for host in on_a})
    assert force(url, offered(url)["version"]).status_code == 200
    assert offered(url)["force"] is True
    state.change({host: ("pub_1", self_signed(host)[1]) for host in on_a})
    assert offered(url).get("force") is None, "the next change ends the force"
    state.change({host: None for host in on_a})
    assert offered(url).get("force") is None, "nobody forced this removal"

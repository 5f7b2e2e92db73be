"""A shard node with an IPv6 address (docs/shards.md): the registry keeps it bare, the router
feed sends it in brackets (the form every router agent takes, those of the release before
too), a router also takes it bare from a feed of another release, and router.cfg names it in
brackets. End to end: a real router, fed by the control service's feed through its agent,
forwards to a real edge node listening on ::1."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests

from admin_app import create_app
from control.wiring import Services
from devtools.sample_app import SampleApp
from edge.agent import EdgeAgent
from edge.haproxy import server_status
from edge.node import EdgeNode
from edge.router import Router, RouterError, RouterUpdate
from edge.router_agent import RouterAgent
from edge.router_agent import RouterFeed as AgentFeed
from edge.shard_registry import CONFIG, ShardRefused, ShardRegistry
from edge.shards import DEFAULT_SHARD, ShardNode
from edge.state import EdgeConfig
from kit.procs import free_port
from kit.x509 import self_signed
from tests.conftest import ServicesWith, serving, wait_until
from store import VERSION
from tests.test_router import tls_get
from tests.test_router_ports import router_synced

EDGE = {"Authorization": "Bearer edge-token-0123456789"}
TOKEN = "edge-token-0123456789"
RELEASE_BEFORE = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9a-fA-F:.]{2,45}\]")
"""What a router agent of the release before takes as a shard node's host."""


def answer(services: Services, url: str) -> dict[str, Any]:
    """The router feed's answer, as a router agent gets it (GET /api/v1/edge/router)."""
    got = requests.get(f"{url}/api/v1/edge/router", headers=EDGE, timeout=10)
    assert got.status_code == 200, got.text
    return dict(got.json())


@pytest.fixture
def control(services_with: ServicesWith) -> Iterator[tuple[Services, str]]:
    services = services_with()
    with serving(create_app(services)) as url:
        yield services, url


def test_the_feed_sends_an_ipv6_node_in_brackets_and_routers_take_it(
        control: tuple[Services, str], tmp_path: Path) -> None:
    services, url = control
    assert services.shards is not None
    services.shards.put_shard("a", [ShardNode("127.0.0.2", 8443, 8080)])
    services.shards.put_shard("b", [ShardNode("2001:db8::5", 8443, 8080),
                                    ShardNode("b1.nodes.test", 8443, 8080)])
    assert services.shards.load().shards["b"][0].host == "2001:db8::5", "kept bare"
    host = "x.v6.test"
    services.edge_shards.change({host: ("pub_1", self_signed(host)[1])},
                                EdgeConfig(("127.0.0.1:9",), ("127.0.0.1:9",)))
    doc = answer(services, url)
    assert [node["host"] for node in doc["shards"]["b"]] == ["[2001:db8::5]", "b1.nodes.test"]
    assert all(RELEASE_BEFORE.fullmatch(str(node["host"]))
               for nodes in doc["shards"].values() for node in nodes), "the release before"
    update = AgentFeed().take(doc)
    config = Router(tmp_path / "router").render(update)
    assert "server b1 [2001:db8::5]:8443 " in config and "server b1 [2001:db8::5]:8080 " in config
    assert "server b2 b1.nodes.test:8443 " in config
    # A feed of another release may send the address bare: taken, and named in brackets.
    bare = {**doc, "shards": {**doc["shards"], "b": [{"host": "2001:DB8::5",
                                                      "https_port": 8443, "http_port": 8080}]}}
    assert "server b1 [2001:db8::5]:8443 " in Router(tmp_path / "r2").render(
        RouterUpdate.from_json(bare))


@pytest.mark.parametrize("host", ["fe80::1%eth0", "[fe80::1%eth0]", "[10.0.0.1]", "[::g]",
                                  "[2001:db8::5", "::1]"])
def test_a_node_host_no_router_can_name_is_refused(host: str) -> None:
    doc = {"version": "v1", "revision": 1, "delta": False, "hosts": {}, "default_shard": "one",
           "shards": {"one": [{"host": host, "https_port": 1, "http_port": 2}]}}
    with pytest.raises(RouterError, match="host and ports"):
        RouterUpdate.from_json(doc)


def test_the_registry_refuses_an_ipv6_node_with_a_zone(control: tuple[Services, str]) -> None:
    services, _ = control
    assert services.shards is not None
    with pytest.raises(ShardRefused, match="IPv6 without a zone"):
        services.shards.put_shard("a", [ShardNode("fe80::1%eth0", 8443, 8080)])
    services.shards.put_shard("a", [ShardNode("::1", 8443, 8080)])


def _zone(registry: ShardRegistry, shards: dict[str, list[dict[str, object]]]) -> None:
    """Nodes as a registry written before it refused zones may hold them."""
    stored = registry.table.get(CONFIG)
    assert stored is not None
    registry.table.put({**stored, "shards": {**stored["shards"], **shards}},
                       expected_version=stored[VERSION])


def test_a_zoned_node_stored_before_the_check_is_left_out_and_routers_serve_the_rest(
        control: tuple[Services, str], tmp_path: Path) -> None:
    """A registry written before it refused zones may hold ``fe80::1%eth0``: the feed leaves
    that node out, and a real router takes the rest. A shard left with no node stays, empty:
    routers refuse the map naming it and say so, rather than send its hostnames to the default
    shard, which holds none of their certificates."""
    services, url = control
    registry = services.shards
    assert registry is not None
    registry.put_shard("a", [ShardNode("127.0.0.2", 8443, 8080)])
    registry.put_shard("z", [ShardNode("127.0.0.3", 8443, 8080)])
    zoned = {"host": "fe80::1%eth0", "https_port": 8443, "http_port": 8080}
    _zone(registry, {"a": [{"host": "127.0.0.2", "https_port": 8443, "http_port": 8080},
                           zoned]})
    registry.put_shard("b", [ShardNode("127.0.0.4", 8443, 8080)])  # a change on top of it
    hosts = [f"z{n}.v6.test" for n in range(12)]
    services.edge_shards.change({host: ("pub_1", self_signed(host)[1]) for host in hosts},
                                EdgeConfig(("127.0.0.1:9",), ("127.0.0.1:9",)))
    doc = answer(services, url)
    assert doc["shards"]["a"] == [{"host": "127.0.0.2", "https_port": 8443, "http_port": 8080}]
    router, agent = router_synced(tmp_path / "router",
                                  lambda r: RouterAgent(r, url, TOKEN, "r1"))
    try:
        assert router.last_error is None and router.haproxy.running
        served = {host: registry.load().assign(host) for host in hosts}
        assert router.hosts() == served and "fe80" not in router.config_path.read_text()
        _zone(registry, {"z": [zoned]})
        registry.put_shard("b", [ShardNode("127.0.0.5", 8443, 8080)])  # read from here on
        assert answer(services, url)["shards"]["z"] == [], "listed, with no node"
        with pytest.raises(RouterError, match="shard 'z'"):
            agent.sync()
        assert router.hosts() == served and router.haproxy.running, "it serves what it had"
    finally:
        router.stop()


@pytest.fixture
def app() -> Iterator[SampleApp]:
    instance = SampleApp("app", 0)
    yield instance
    instance.stop()


@pytest.mark.slow
def test_a_router_fed_by_the_control_service_forwards_to_a_node_on_ipv6(
        control: tuple[Services, str], edge_node: Callable[..., EdgeNode], app: SampleApp,
        tmp_path: Path) -> None:
    services, url = control
    state, registry = services.edge_shards, services.shards
    assert registry is not None
    nodes = {shard: edge_node(shard, bind=bind, proxy_https_port=free_port(),
                              proxy_http_port=free_port())
             for shard, bind in ((DEFAULT_SHARD, "127.0.0.1"), ("six", "::1"))}
    for shard, bind in ((DEFAULT_SHARD, "127.0.0.1"), ("six", "::1")):
        layout = nodes[shard].layout
        registry.put_shard(shard, [ShardNode(bind, layout.proxy_https_port,
                                             layout.proxy_http_port)])
    hosts = [f"h{n}.v6.test" for n in range(12)]
    pems = {host: self_signed(host) for host in hosts}
    state.change({host: ("pub_1", pems[host][1]) for host in hosts},
                 EdgeConfig((app.address,), ("127.0.0.1:9",)))
    on_six = [host for host in hosts if registry.load().assign(host) == "six"]
    assert on_six and len(on_six) < len(hosts)
    for shard, node in nodes.items():
        assert EdgeAgent(node, url, TOKEN, node_id=f"{shard}1", shard=shard).sync() is True
    router, _ = router_synced(tmp_path / "router", lambda r: RouterAgent(r, url, TOKEN, "r1"),
                              check_ms=200)
    try:
        assert router.applied_version is not None
        assert router.hosts() == {host: "six" for host in on_six}
        assert router.last_error is None
        wait_until(lambda: list(server_status(router.runtime_socket, "tls_six").values())
                   == ["UP"], 20, "the router's check of the node on ::1")
        port = int(str(router.listen["https_port"]))
        for host in hosts:
            got = tls_get(port, host, pems[host][0])
            assert (got.status, got.subject) == (200, f"CN={host}")
        assert [node["applied_version"] for node in state.nodes("six")] == [
            state.store("six").current_version()]
    finally:
        router.stop()

"""Feeds per shard (issue 29 item 2): each shard's agents get only its routes and certificates,
routers get the hostname -> shard map as deltas, and an edge without shards is as before."""
from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from admin_app import create_app
from control.wiring import Services
from devtools.sample_app import SampleApp
from edge.agent import EdgeAgent
from edge.node import EdgeNode
from edge.router_feed import ROUTER
from edge.shards import ShardNode, ShardSet
from edge.state import EdgeConfig, Redirect
from kit.procs import free_port
from kit.settings import Settings
from kit.x509 import self_signed
from store import all_items
from tests.conftest import ServicesWith, serving, wait_until

EDGE = {"Authorization": "Bearer edge-token-0123456789"}
API = {"Authorization": "Bearer test-token-0123456789"}
TWO = ShardSet({"a": (ShardNode("127.0.0.2", 8443, 8080),), "b": ()})
CONFIG = EdgeConfig(("127.0.0.1:9",), ("127.0.0.1:9",))


@pytest.fixture
def control(any_backend: Settings,
            services_with: ServicesWith) -> Iterator[tuple[Services, str]]:
    services = services_with(base=any_backend)
    with serving(create_app(services)) as url:
        yield services, url


def hosts_of(shard: str, count: int, shards: ShardSet = TWO) -> list[str]:
    """``count`` hostnames the rendezvous hash assigns to ``shard``."""
    found = [f"h{n}.shards.test" for n in range(400)]
    return [host for host in found if shards.assign(host) == shard][:count]


def route(hostname: str, publication: str = "pub_1") -> tuple[str, str]:
    return publication, self_signed(hostname)[1]


def get(url: str, path: str, **params: Any) -> requests.Response:
    return requests.get(f"{url}/api/v1/edge/{path}", params=params, headers=EDGE, timeout=60)


def test_without_shards_the_edge_keeps_its_keys_and_answers(
        control: tuple[Services, str]) -> None:
    services, url = control
    hosts = hosts_of("default", 2, ShardSet())
    services.edge_shards.change({host: route(host) for host in hosts}, CONFIG)
    for table in (services.edge_shards.tables.routes, services.edge_shards.tables.state,
                  services.edge_shards.tables.certs):
        assert not any("|" in str(item[table.spec.key]) for item in all_items(table))
    plain = get(url, "state")
    assert plain.status_code == 200
    assert get(url, "state", shard="default").json() == plain.json()
    assert sorted(r["hostname"] for r in plain.json()["routes"]) == sorted(hosts)
    unknown = get(url, "state", shard="elsewhere")
    assert unknown.status_code == 404 and "no shard named elsewhere" in unknown.json()["error"]
    assert get(url, "state", shard="Not A Name").status_code == 400
    router = get(url, "router").json()
    assert router == {"format": 1, "version": router["version"], "revision": 0,
                      "delta": False, "hosts": {}, "shards": {"default": []},
                      "default_shard": "default"}
    assert get(url, "router", have=router["version"]).status_code == 304
    for form, status in (("1", 200), ("2", 426), ("one", 400)):
        asked = requests.get(f"{url}/api/v1/edge/router", timeout=10,
                             headers={**EDGE, "Router-Format": form})
        assert asked.status_code == status, form
    assert "upgrade the control replicas before the agents" in requests.get(
        f"{url}/api/v1/edge/router", headers={**EDGE, "Router-Format": "2"},
        timeout=10).json()["error"]
    requests.post(f"{url}/api/v1/edge/nodes/n1", headers=EDGE, timeout=10,
                  json={"applied_version": None}).raise_for_status()
    node = requests.get(f"{url}/api/v1/edge/nodes", headers=API, timeout=10).json()["nodes"][0]
    assert "shard" not in node and node["node_id"] == "n1"


def test_each_shard_has_its_own_state_and_the_router_its_map(
        control: tuple[Services, str]) -> None:
    services, url = control
    services.edge_shards.shard_set = lambda: TWO
    in_a, in_b = hosts_of("a", 3), hosts_of("b", 2)
    services.edge_shards.change({host: route(host) for host in in_a + in_b}, CONFIG)
    for shard, hosts in (("a", in_a), ("b", in_b)):
        state = get(url, "state", shard=shard).json()
        assert sorted(r["hostname"] for r in state["routes"]) == sorted(hosts)
    assert get(url, "state").status_code == 404, "no default shard is configured"
    sha = get(url, "state", shard="b").json()["routes"][0]["cert_sha256"]
    assert get(url, f"certs/{in_b[0]}", shard="a", sha256=sha).status_code == 404
    assert get(url, f"certs/{in_b[0]}", shard="b", sha256=sha).status_code == 200
    batch = requests.post(f"{url}/api/v1/edge/certs", params={"shard": "a"}, headers=EDGE,
                          json={"format": 1, "certs": [{"hostname": in_b[0], "sha256": sha}]},
                          timeout=10).json()
    assert batch["certs"] == [] and len(batch["missing"]) == 1

    snapshot = get(url, "router").json()
    assert snapshot["hosts"] == {**{h: "a" for h in in_a}, **{h: "b" for h in in_b}}
    assert snapshot["shards"] == {"a": [{"host": "127.0.0.2", "https_port": 8443,
                                         "http_port": 8080}], "b": []}
    assert snapshot["default_shard"] == "a" and snapshot["delta"] is False
    a_revision = get(url, "state", shard="a").json()["revision"]

    services.edge_shards.change({in_b[0]: None})
    delta = get(url, "router", since=snapshot["revision"], have=snapshot["version"]).json()
    assert delta["delta"] is True and delta["hosts"] == {in_b[0]: None}
    assert delta["revision"] > snapshot["revision"] and delta["version"] != snapshot["version"]
    assert get(url, "state", shard="a").json()["revision"] == a_revision, "a did not move"
    assert get(url, "router", have=delta["version"]).status_code == 304

    def report(body: dict[str, object]) -> requests.Response:
        return requests.post(f"{url}/api/v1/edge/router/nodes/r1", headers=EDGE, json=body,
                             timeout=10)
    assert report({"applied_revision": -1}).status_code == 400
    assert report({"applied_version": delta["version"], "haproxy_running": True,
                   "applied_revision": delta["revision"]}).status_code == 200
    reported = services.edge_shards.store(ROUTER).list_nodes()
    assert [(n["node_id"], n["applied_revision"]) for n in reported] == [("r1", delta["revision"])]


def test_a_change_wakes_the_long_polls_of_its_shard_only(control: tuple[Services, str]) -> None:
    services, url = control
    shards = services.edge_shards
    shards.shard_set = lambda: TWO
    in_a, in_b = hosts_of("a", 1), hosts_of("b", 2)
    shards.change({host: route(host) for host in in_a + in_b}, CONFIG)
    answers: dict[str, int] = {}
    polls = {shard: dict(shard=shard, have=get(url, "state", shard=shard).json()["version"],
                         wait=30) for shard in ("a", "b")}
    router = get(url, "router").json()
    threads = {"router": threading.Thread(target=lambda: answers.__setitem__(
        "router", get(url, "router", have=router["version"], wait=30).status_code))}
    threads.update({shard: threading.Thread(target=lambda s=shard, p=params: answers.__setitem__(
        s, get(url, "state", **p).status_code)) for shard, params in polls.items()})
    for thread in threads.values():
        thread.start()
    wait_until(lambda: shards.store("a").watch.waiting and shards.store("b").watch.waiting
               and shards.router.watch.waiting, 10, "the long polls", interval=0.05)
    shards.change({in_b[1]: None})
    threads["b"].join(60)
    threads["router"].join(60)
    assert answers == {"b": 200, "router": 200}
    assert shards.store("a").watch.waiting == 1, "shard a's long poll still waits"
    shards.change({in_a[0]: route(in_a[0], "pub_2")})
    threads["a"].join(60)
    assert answers["a"] == 200, "and its own change answers it"


@pytest.mark.slow
def test_two_shards_agents_serve_only_their_own_hosts(
        control: tuple[Services, str], tmp_path: Path) -> None:
    services, url = control
    services.edge_shards.shard_set = lambda: TWO
    app = SampleApp("app", 0)
    config = EdgeConfig((app.address,), ("127.0.0.1:9",))
    hosts = {"a": hosts_of("a", 3), "b": hosts_of("b", 2)}
    services.edge_shards.change({h: route(h) for shard in hosts for h in hosts[shard]}, config)
    nodes = {shard: EdgeNode(tmp_path / shard, http_port=free_port(), https_port=free_port())
             for shard in hosts}
    agents = {shard: EdgeAgent(nodes[shard], url, "edge-token-0123456789",
                               node_id=f"{shard}1", shard=shard, watch=5.0) for shard in hosts}
    stop = threading.Event()
    runner = threading.Thread(target=agents["a"].run, args=(3600.0, stop), daemon=True)
    try:
        for shard, agent in agents.items():
            assert agent.sync() is True
            assert sorted(nodes[shard].existing_routes()) == sorted(hosts[shard])
            assert agent.downloads == len(hosts[shard])
        listed = requests.get(f"{url}/api/v1/edge/nodes", headers=API, timeout=10).json()
        assert {(n["node_id"], n["shard"], n["in_sync"]) for n in listed["nodes"]} == {
            ("a1", "a", True), ("b1", "b", True)}
        runner.start()
        renewed = hosts["a"][0]
        services.edge_shards.change({renewed: route(renewed, "pub_9")}, config)
        wait_until(lambda: nodes["a"].existing_routes()[renewed].publication_id == "pub_9",
                   30, "the change on shard a's node", interval=0.05)
        assert agents["b"].sync() is False, "shard b did not change"
    finally:
        stop.set()
        if runner.is_alive():
            runner.join(15)
        for node in nodes.values():
            node.stop()
        app.stop()


def test_a_reconciliation_splits_routes_and_links_and_rebuilds_the_router_map(
        control: tuple[Services, str]) -> None:
    services, url = control
    shards = services.edge_shards
    shards.shard_set = lambda: TWO
    in_a, in_b = hosts_of("a", 2), hosts_of("b", 2)
    pems = {host: route(host)[1] for host in in_a + in_b}
    shards.change({in_b[0]: route(in_b[0])}, CONFIG)
    shards.router.assign({"stale.shards.test": "b"})
    assert shards.reconcile({host: "pub_1" for host in in_a + in_b}, pems.get, CONFIG)
    links = {f"{host}/x": Redirect(host, "x", 302, "https://target.test/") for host in in_a}
    assert shards.reconcile_redirects(links)
    assert get(url, "router").json()["hosts"] == {**{h: "a" for h in in_a},
                                                   **{h: "b" for h in in_b}}
    state = get(url, "state", shard="a").json()
    assert [key for key, _ in state["redirects"]] == sorted(links)
    assert get(url, "state", shard="b").json()["redirects"] == []
    # What a move builds on: publish in a shard whatever the assignment, read who holds it.
    assert shards.publish_to("b", {in_a[0]: route(in_a[0])})
    assert shards.holding("b", in_a[0]) == shards.revision("b")
    assert shards.holding("a", in_a[0]) is not None and shards.holding("b", "x.test") is None
    assert shards.router.holding(in_a[0]) == "a", "the router's entry waits for the move"


def test_the_agent_refuses_a_shard_name_it_could_not_ask_for(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[1]),
           "EDGE_EDGE_TOKEN": "edge-token-0123456789", "EDGE_DATA_DIR": str(tmp_path),
           "EDGE_EDGE_DIR": str(tmp_path / "edge"), "EDGE_EDGE_SHARD": "Shard One"}
    by_setting = subprocess.run([sys.executable, "-m", "edgectl", "agent"], env=env,
                                capture_output=True, text=True, timeout=60)
    assert by_setting.returncode == 1 and "'Shard One' is not a shard name" in by_setting.stderr
    by_flag = subprocess.run([sys.executable, "-m", "edgectl", "agent", "--shard=-x"],
                             env=env, capture_output=True, text=True, timeout=60)
    assert by_flag.returncode == 1 and "'-x' is not a shard name" in by_flag.stderr


def test_every_hostname_reaches_the_shard_that_holds_its_route_beside_wildcards(
        control: tuple[Services, str]) -> None:
    """A router looks a hostname up, then its wildcard parent (one label up), then sends it to
    the default shard (test_router.py runs that in HAProxy). A wildcard and its exact siblings
    are assigned apart by the hash, so each sibling must still reach its own shard, whatever
    the wildcard's shard: none may reach the wildcard's (its certificate, its publication)."""
    services, url = control
    registry = services.shards
    assert registry is not None
    for n, shard in enumerate(("default", "a", "b")):
        registry.put_shard(shard, [ShardNode(f"127.0.0.{n + 2}", 8443, 8080)])
    hosts = [host for n in range(12) for host in (f"*.w{n}.test", f"x.w{n}.test")]
    services.edge_shards.change({host: route(host) for host in hosts}, CONFIG)
    router = get(url, "router").json()
    entries, default = router["hosts"], router["default_shard"]
    state = services.edge_shards
    for host in hosts:
        parent = "*" + host[host.index("."):]
        reached = entries.get(host) or entries.get(parent) or default
        assert state.holding(reached, host) is not None, f"{host} reaches shard {reached}"
    assert {registry.load().assign(host) for host in hosts if not host.startswith("*")} \
        == {"default", "a", "b"}, "the siblings are spread over the shards"

"""Route extras through a real HAProxy: redirect domains answered from a map, origin pools and
metadata headers, all changed hot (no reload), and clients' metadata headers stripped."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from devtools.probe import https_get
from devtools.sample_app import SampleApp
from edge.node import EdgeNode
from edge.render import RenderError
from edge.state import DesiredState, Route
from kit import route_extras
from kit.procs import free_port
from kit.x509 import self_signed as self_signed_pem


@pytest.fixture
def apps() -> Iterator[tuple[SampleApp, SampleApp]]:
    fleet, canary = SampleApp("fleet", 0), SampleApp("canary", 0)
    yield fleet, canary
    fleet.stop()
    canary.stop()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[EdgeNode]:
    edge = EdgeNode(tmp_path / "edge", http_port=free_port(), https_port=free_port())
    yield edge
    edge.stop()


def state(apps: tuple[SampleApp, SampleApp], *routes: Route) -> DesiredState:
    return DesiredState(routes=routes, app_servers=(apps[0].address,),
                        control_servers=("127.0.0.1:9",),
                        origin_pools=(("canary", (apps[1].address,)),))


CERTS = {name: self_signed_pem(name) for name in ("a.example.test", "www.a.example.test",
                                                  "b.example.test")}


def route(name: str, extras: str = "") -> Route:
    return Route(name, "pub_1", CERTS[name][1], extras)


def test_redirect_pool_and_metadata_change_hot(node: EdgeNode,
                                               apps: tuple[SampleApp, SampleApp]) -> None:
    port = node.layout.https_port
    node.apply(state(apps, route("a.example.test"), route("www.a.example.test"),
                     route("b.example.test", route_extras.encode(meta={"plan": "pro"}))))
    reloads = node.reloads
    served = https_get(port, "b.example.test", "/x", cadata=CERTS["b.example.test"][0],
                       headers={"X-Edge-Meta-Plan": "forged", "x-edge-meta-tier": "gold"})
    assert served.json()["instance"] == "fleet"
    assert served.json()["meta"] == {"plan": "pro"}, "clients' copies are stripped"

    node.apply(state(apps, route("a.example.test"),
                     route("www.a.example.test", route_extras.encode("a.example.test", 301)),
                     route("b.example.test", route_extras.encode(
                         pool="canary", meta={"plan": "free"}))))
    assert node.reloads == reloads, "extras changes go through the maps, no reload"
    moved = https_get(port, "www.a.example.test", "/p/1?x=1&y=2",
                      cadata=CERTS["www.a.example.test"][0])
    assert moved.status == 301
    assert moved.headers["location"] == f"https://a.example.test:{port}/p/1?x=1&y=2"
    canary = https_get(port, "b.example.test", "/x", cadata=CERTS["b.example.test"][0],
                       headers={"X-Edge-Meta-Plan": "forged"})
    assert canary.json()["instance"] == "canary"
    assert canary.json()["meta"] == {"plan": "free"}
    assert https_get(port, "a.example.test", cadata=CERTS["a.example.test"][0]).json()[
        "meta"] == {}

    # A target the edge does not route (removed, suspended) is not redirected to.
    node.apply(state(apps, route("www.a.example.test", route_extras.encode("a.example.test")),
                     route("b.example.test", route_extras.encode(meta={"plan": "free"}))))
    assert node.reloads == reloads
    assert https_get(port, "www.a.example.test", cadata=CERTS["www.a.example.test"][0]
                     ).json()["instance"] == "fleet"

    # Back to plain routes: the redirect and the pool are gone, still without a reload.
    plain = state(apps, route("a.example.test"), route("www.a.example.test"),
                  route("b.example.test", route_extras.encode(meta={"plan": "free"})))
    node.apply(plain)
    assert node.reloads == reloads
    assert https_get(port, "www.a.example.test", cadata=CERTS["www.a.example.test"][0]
                     ).json()["instance"] == "fleet"
    assert https_get(port, "b.example.test", cadata=CERTS["b.example.test"][0]
                     ).json()["instance"] == "fleet"

    # A restarted agent reads the extras back from the release's files.
    again = EdgeNode(node.directory, http_port=node.layout.http_port,
                     https_port=node.layout.https_port)
    assert again.existing_routes()["b.example.test"].extras == plain.routes[2].extras
    assert again.plan(plain).changes == []


@pytest.mark.parametrize("extras", [
    route_extras.encode(pool="nosuchpool"),
    route_extras.encode("bad host"),
    '{"redirect": {"to": "a.example.test", "code": 303}}',
    '{"meta": {"Bad_Key": "x"}}',
    '{"meta": {"k": "has space"}}',
    '{"other": 1}'])
def test_extras_that_could_harm_haproxy_are_refused(node: EdgeNode,
                                                     apps: tuple[SampleApp, SampleApp],
                                                     extras: str) -> None:
    with pytest.raises(RenderError):
        node.apply(state(apps, route("a.example.test", extras)))

"""Route extras through a real HAProxy: redirect domains answered from a map, origin pools and
metadata headers, all changed hot (no reload), and clients' metadata headers stripped."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path
from typing import Iterator

import pytest

from devtools.probe import https_get
from devtools.sample_app import SampleApp
from edge.agent import SYNC_FILE, EdgeAgent
from edge.node import EdgeNode
from edge.protocol import PROTOCOL
from edge.render import RenderError
from edge.state import DesiredState, Route, StateDelta, routes_digest
from kit import route_extras
from kit.procs import free_port
from kit.x509 import self_signed as self_signed_pem


@pytest.fixture
def apps() -> Iterator[tuple[SampleApp, SampleApp]]:
    fleet, canary = SampleApp("fleet", 0), SampleApp("canary", 0)
    yield fleet, canary
    fleet.stop()
    canary.stop()


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

    # A target this node does not hold (another shard's) is redirected to all the same: the
    # control service publishes a redirect only while its target is routed somewhere.
    node.apply(state(apps, route("www.a.example.test", route_extras.encode("a.example.test")),
                     route("b.example.test", route_extras.encode(meta={"plan": "free"}))))
    assert node.reloads == reloads
    assert https_get(port, "www.a.example.test", cadata=CERTS["www.a.example.test"][0]
                     ).status == 308

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


def test_a_changed_extras_value_is_set_in_place(node: EdgeNode,
                                               apps: tuple[SampleApp, SampleApp]) -> None:
    """HAProxy lists a map's entries in the order they came in: an entry set in place keeps
    its place, one deleted and added again (a moment when requests miss it) goes last."""
    node.apply(state(apps, route("b.example.test", route_extras.encode(
        meta={"plan": "pro", "tier": "gold"}))))
    meta = node.current.resolve() / "meta.map"
    assert list(node.runtime.show_map(meta)) == ["b.example.test/plan", "b.example.test/tier"]
    reloads = node.reloads
    node.apply(state(apps, route("b.example.test", route_extras.encode(
        meta={"plan": "free", "tier": "gold"}))))
    assert node.reloads == reloads
    assert list(node.runtime.show_map(meta).items()) == [
        ("b.example.test/plan", "free"), ("b.example.test/tier", "gold")]


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


def _delta(base: str, version: str, apps: tuple[SampleApp, SampleApp],
           *routes: Route) -> StateDelta:
    return StateDelta(base, version, state(apps).config, {r.hostname: r for r in routes}, {})


def test_an_extras_only_delta_is_applied_hot(node: EdgeNode,
                                             apps: tuple[SampleApp, SampleApp]) -> None:
    """A delta whose routes changed only their extras is a change (same certificate and
    publication), sent through the runtime API and journaled: no reload, no map file read or
    rewritten. A metadata key the running haproxy.cfg lacks is no delta: it takes a reload."""
    port = node.layout.https_port
    base = state(apps, route("a.example.test"), route("www.a.example.test"),
                 route("b.example.test", route_extras.encode(meta={"plan": "pro"})))
    node.apply(base)
    reloads, hot = node.reloads, node.hot_applies
    files = {name: (node.current / name).read_text()
             for name in ("hosts.map", "domain_redirects.map", "pools.map", "meta.map")}

    moved = route("www.a.example.test", route_extras.encode("a.example.test", 301))
    canary = route("b.example.test", route_extras.encode(pool="canary", meta={"plan": "free"}))
    first = _delta(base.version, "1" * 16, apps, moved, canary)
    assert [c.action for c in node.plan(dataclasses.replace(
        base, routes=(base.routes[0], moved, canary), known_version=None)).changes] == \
        ["update", "update"], "an extras-only change is a change"
    assert node.can_apply_delta(first) and node.apply_delta(first)
    assert (node.reloads, node.hot_applies) == (reloads, hot + 1)
    assert {name: (node.current / name).read_text() for name in files} == files, \
        "journaled, not written into the maps"
    answer = https_get(port, "www.a.example.test", "/q?z=1", cadata=CERTS["www.a.example.test"][0])
    assert (answer.status, answer.headers["location"]) == \
        (301, f"https://a.example.test:{port}/q?z=1")
    served = https_get(port, "b.example.test", cadata=CERTS["b.example.test"][0]).json()
    assert (served["instance"], served["meta"]) == ("canary", {"plan": "free"})

    # Extras dropped again (and a route removed with its extras): hot as well.
    second = _delta("1" * 16, "2" * 16, apps, route("www.a.example.test"),
                    route("b.example.test", route_extras.encode(meta={"plan": "free"})))
    assert node.can_apply_delta(second) and node.apply_delta(second)
    assert node.reloads == reloads
    assert https_get(port, "www.a.example.test", cadata=CERTS["www.a.example.test"][0]
                     ).json()["instance"] == "fleet"
    served = https_get(port, "b.example.test", cadata=CERTS["b.example.test"][0]).json()
    assert (served["instance"], served["meta"]) == ("fleet", {"plan": "free"})

    # A new metadata key needs a header line: not a delta, a whole state with a reload.
    tier = route("b.example.test", route_extras.encode(meta={"plan": "free", "tier": "gold"}))
    third = _delta("2" * 16, "3" * 16, apps, tier)
    assert not node.can_apply_delta(third)
    node.apply(state(apps, route("a.example.test"), route("www.a.example.test"), tier))
    assert node.reloads == reloads + 1
    assert https_get(port, "b.example.test", cadata=CERTS["b.example.test"][0]).json()[
        "meta"] == {"plan": "free", "tier": "gold"}


def test_extras_survive_a_restart_with_an_unfolded_journal(
        tmp_path: Path, apps: tuple[SampleApp, SampleApp]) -> None:
    """A node killed before folding its journal: the restarted node (and agent) read each
    route's extras back from the journal, and serve them once it folded it into the maps."""
    ports = {"http_port": free_port(), "https_port": free_port()}
    node = EdgeNode(tmp_path / "edge", **ports)
    restarted = EdgeNode(tmp_path / "edge", **ports)
    try:
        base = state(apps, route("a.example.test"), route("www.a.example.test"),
                     route("b.example.test", route_extras.encode(meta={"plan": "pro"})))
        node.apply(base)
        moved = route("www.a.example.test", route_extras.encode("a.example.test", 308))
        canary = route("b.example.test", route_extras.encode(pool="canary",
                                                             meta={"plan": "free"}))
        delta = _delta(base.version, "1" * 16, apps, moved, canary)
        assert node.apply_delta(delta)
        (node.directory / SYNC_FILE).write_text(json.dumps({"revision": 7, "version": "1" * 16,
                                                             "protocol": PROTOCOL}))
        for pid in [node.haproxy.pid or 0, *node.haproxy.workers()]:  # dies, journal unfolded
            os.kill(pid, signal.SIGKILL)
        assert (restarted.current / "changes.jsonl").exists()
        routes = restarted.existing_routes()
        assert (routes["www.a.example.test"].extras, routes["b.example.test"].extras) == \
            (moved.extras, canary.extras)
        assert routes["a.example.test"].extras == ""

        # The agent resumes from the node's routes: its digest is the control side's.
        agent = EdgeAgent(restarted, "http://127.0.0.1:9", "token")
        agent._resume("1" * 16)
        served = (base.routes[0], moved, canary)
        assert agent._digest == routes_digest(r.ref for r in served)
        assert agent._revision == 7

        restarted.start()  # folds the journal (extras included), then HAProxy reads the files
        assert not (restarted.current / "changes.jsonl").exists()
        assert "www.a.example.test 308|a.example.test" in \
            (restarted.current / "domain_redirects.map").read_text()
        assert "b.example.test pool_canary" in (restarted.current / "pools.map").read_text()
        assert (restarted.current / "meta.map").read_text() == "b.example.test/plan free\n"
        port = ports["https_port"]
        answer = https_get(port, "www.a.example.test", "/p", cadata=CERTS["www.a.example.test"][0])
        assert (answer.status, answer.headers["location"]) == \
            (308, f"https://a.example.test:{port}/p")
        got = https_get(port, "b.example.test", cadata=CERTS["b.example.test"][0]).json()
        assert (got["instance"], got["meta"]) == ("canary", {"plan": "free"})
        again = EdgeNode(tmp_path / "edge", **ports)
        assert again.existing_routes()["b.example.test"].extras == canary.extras
    finally:
        restarted.stop()
        node.stop()

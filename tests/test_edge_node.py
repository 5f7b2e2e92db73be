"""A real HAProxy driven through EdgeNode: routing, identity headers, 404s, refused configs."""
from __future__ import annotations

import dataclasses
import http.client
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Iterator

import pytest

from devtools.probe import https_get
from devtools.sample_app import FORWARDING, SampleApp
from edge.errors import EdgeError
from edge.haproxy import ConfigRejected, masters_running, stop_node
from edge.node import EdgeNode
from edge.plan import CertificateRejected, UnsafePlan
from edge.render import RenderError
from edge.state import DesiredState, Route
from kit.procs import free_port
from kit.x509 import self_signed as self_signed_pem
from tests.conftest import wait_until


@pytest.fixture
def app() -> Iterator[SampleApp]:
    instance = SampleApp("app-a", 0)
    yield instance
    instance.stop()


def state(app: SampleApp, *routes: Route) -> DesiredState:
    return DesiredState(routes=routes, app_servers=(app.address,),
                        control_servers=("127.0.0.1:9",))


def test_routes_by_host_and_strips_client_identity(node: EdgeNode, app: SampleApp) -> None:
    cert, pem = self_signed_pem("one.example.test")
    node.apply(state(app, Route("one.example.test", "pub_1", pem)))
    probe = https_get(node.layout.https_port, "one.example.test", "/x", cadata=cert,
                      headers={"X-Publication-Id": "forged", "X-Forwarded-For": "6.6.6.6",
                               "X-Edge-User": "admin",
                               **{name: "evil.test" for name in (*FORWARDING, "x-forwarded-host",
                                                                 "x-forwarded-port",
                                                                 "x-forwarded-prefix")}})
    assert probe.status == 200
    assert probe.json()["publication_id"] == "pub_1"
    assert probe.json()["forwarded_for"] == "127.0.0.1"
    assert probe.json()["forwarding"] == {"x-forwarded-for": "127.0.0.1",
                                          "x-forwarded-proto": "https"}
    assert probe.json()["user"] is None, "the SSO user header only ever comes from the edge"
    assert probe.certificate.subject.rfc4514_string() == "CN=one.example.test"
    unknown = https_get(node.layout.https_port, "unknown.example.test")
    assert unknown.status == 404 and b"Unknown host" in unknown.body


def test_change_of_routes_reloads_and_serves_new_host(node: EdgeNode, app: SampleApp) -> None:
    _, pem1 = self_signed_pem("one.example.test")
    cert2, pem2 = self_signed_pem("two.example.test")
    node.apply(state(app, Route("one.example.test", "pub_1", pem1)))
    assert https_get(node.layout.https_port, "two.example.test").status == 404
    changed = state(app, Route("one.example.test", "pub_1", pem1),
                    Route("two.example.test", "pub_2", pem2))
    assert node.apply(changed) is True
    assert node.apply(changed) is False
    probe = https_get(node.layout.https_port, "two.example.test", cadata=cert2)
    assert (probe.status, probe.json()["publication_id"]) == (200, "pub_2")
    assert node.applied_version == changed.version


def test_refused_certificate_never_replaces_the_running_config(node: EdgeNode,
                                                               app: SampleApp) -> None:
    cert, pem = self_signed_pem("one.example.test")
    good = state(app, Route("one.example.test", "pub_1", pem))
    node.apply(good)
    broken = state(app, Route("one.example.test", "pub_1", pem),
                   Route("two.example.test", "pub_2", "-----BEGIN CERTIFICATE-----\nnope\n"))
    with pytest.raises(CertificateRejected):
        node.apply(broken)
    assert node.applied_version == good.version
    assert node.last_error and "two.example.test" in node.last_error
    probe = https_get(node.layout.https_port, "one.example.test", cadata=cert)
    assert (probe.status, probe.json()["publication_id"]) == (200, "pub_1")


def test_broken_template_never_replaces_the_running_config(node: EdgeNode, app: SampleApp,
                                                          tmp_path: Path) -> None:
    cert, pem = self_signed_pem("one.example.test")
    node.apply(state(app, Route("one.example.test", "pub_1", pem)))
    served = node.current.resolve()
    broken = tmp_path / "templates"
    shutil.copytree(resources.files("haproxy_templates"), broken)
    config = broken / "haproxy.cfg.j2"
    config.write_text(config.read_text().replace("balance roundrobin", "balance sideways"))
    rendering = EdgeNode(node.directory, http_port=node.layout.http_port,
                         https_port=node.layout.https_port, templates=broken)
    rendering.start()  # takes over the HAProxy running, as a restarted node does
    with pytest.raises(ConfigRejected, match="balance only supports"):
        rendering.apply(state(app, Route("one.example.test", "pub_2", pem)))
    assert node.current.resolve() == served
    probe = https_get(node.layout.https_port, "one.example.test", cadata=cert)
    assert (probe.status, probe.json()["publication_id"]) == (200, "pub_1")


def test_unsafe_values_never_reach_haproxy(node: EdgeNode, app: SampleApp) -> None:
    _, pem = self_signed_pem("one.example.test")
    with pytest.raises(RenderError):
        node.apply(state(app, Route("one.example.test", "pub_1\nbackend evil", pem)))
    with pytest.raises(RenderError):
        node.apply(state(app, Route("one.example.test", "pub_1\n", pem)))
    with pytest.raises(RenderError):
        node.apply(dataclasses.replace(state(app), app_servers=("127.0.0.1:1 backup\n",)))
    assert node.applied_version is None


def test_restart_serves_the_last_applied_state(tmp_path: Path, app: SampleApp) -> None:
    ports = {"http_port": free_port(), "https_port": free_port()}
    cert, pem = self_signed_pem("one.example.test")
    first = EdgeNode(tmp_path / "edge", **ports)
    first.apply(state(app, Route("one.example.test", "pub_1", pem)))
    first.stop()
    second = EdgeNode(tmp_path / "edge", **ports)
    try:
        second.start()
        probe = https_get(ports["https_port"], "one.example.test", cadata=cert)
        assert (probe.status, probe.json()["publication_id"]) == (200, "pub_1")
    finally:
        second.stop()


def test_a_master_left_without_its_pid_file_is_adopted_and_reloaded_not_doubled(
        tmp_path: Path, app: SampleApp) -> None:
    """An agent killed between starting HAProxy and writing its PID file (the chaos test met
    it under load): the next agent finds the master in the process table and reloads it with
    what it applies. A second master would share the ports and never be updated."""
    ports = {"http_port": free_port(), "https_port": free_port()}
    _, pem1 = self_signed_pem("one.example.test")
    cert2, pem2 = self_signed_pem("two.example.test")
    first = EdgeNode(tmp_path / "edge", **ports)
    first.apply(state(app, Route("one.example.test", "pub_1", pem1)))
    master = first.haproxy.pid
    first.haproxy.pid_file.unlink()
    second = EdgeNode(tmp_path / "edge", **ports)
    try:
        second.apply(state(app, Route("one.example.test", "pub_1", pem1),
                           Route("two.example.test", "pub_2", pem2)))
        assert masters_running(second.haproxy.config_path) == [[master]]
        assert second.haproxy.adopted == master
        assert second.haproxy.pid_file.read_text() == f"{master}\n"
        probe = https_get(ports["https_port"], "two.example.test", cadata=cert2)
        assert (probe.status, probe.json()["publication_id"]) == (200, "pub_2")
    finally:
        second.stop()
        first.stop()


def test_a_node_whose_path_is_too_long_for_a_socket_leaves_nothing_in_tmp_once_stopped(
        tmp_path: Path, app: SampleApp) -> None:
    """HAProxy refuses a socket path over 97 bytes: such a node's sockets live in a private
    /tmp/edge-<hash>, made at start and removed at stop (runs of the suite left dozens)."""
    deep = tmp_path / ("d" * 60) / "edge"
    ports = {"http_port": free_port(), "https_port": free_port()}
    cert, pem = self_signed_pem("one.example.test")
    node = EdgeNode(deep, **ports)
    sockets = node.haproxy.master_socket.parent
    assert sockets.parent == Path(tempfile.gettempdir()) and sockets.name.startswith("edge-")
    try:
        for _ in range(2):  # stopped, then started again by the same node
            node.apply(state(app, Route("one.example.test", "pub_1", pem)))
            assert stat.S_IMODE(sockets.stat().st_mode) == 0o700
            assert node.runtime.command("show info").startswith("Name: HAProxy")
            probe = https_get(ports["https_port"], "one.example.test", cadata=cert)
            assert (probe.status, probe.json()["publication_id"]) == (200, "pub_1")
            assert stop_node(node.directory, node.haproxy).startswith("stopped the HAProxy")
            assert not sockets.exists(), "a stopped node leaves nothing in /tmp"
    finally:
        node.stop()
    sockets.mkdir(mode=0o755)  # another user's (or a loose) directory is never used
    try:
        with pytest.raises(EdgeError, match="is not a private directory of this user"):
            EdgeNode(deep, **ports)
    finally:
        sockets.rmdir()


def test_a_second_master_on_the_config_is_stopped_and_the_named_one_kept(
        tmp_path: Path, app: SampleApp) -> None:
    """Two masters on one node (left by an agent from before the process-table look): the next
    agent keeps the one its PID file names and has the other finish, so visitors stop being
    split with a HAProxy nobody updates."""
    ports = {"http_port": free_port(), "https_port": free_port()}
    _, pem = self_signed_pem("one.example.test")
    first = EdgeNode(tmp_path / "edge", **ports)
    first.apply(state(app, Route("one.example.test", "pub_1", pem)))
    master = first.haproxy.pid
    stray = subprocess.Popen([first.haproxy.binary, "-W", "-db", "-f",
                              str(first.haproxy.config_path), "-S", str(tmp_path / "stray.sock")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = EdgeNode(tmp_path / "edge", **ports)
    try:
        wait_until(lambda: masters_running(first.haproxy.config_path) == [sorted(
            [master, stray.pid])], 10, "the stray master running the node's config")
        second.start()
        assert second.haproxy.adopted == master
        stray.wait(10)
        assert masters_running(first.haproxy.config_path) == [[master]]
    finally:
        stray.kill()
        stray.wait()
        second.stop()
        first.stop()


def test_a_start_waits_for_every_certificate_and_a_late_one_leaves_nothing_running(
        tmp_path: Path, app: SampleApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """HAProxy parses every certificate before it serves, so how long a start (or reload) may
    take grows with the routes: a fixed limit would call a large node's start failed while it
    loads (150 s at 100,000 here). A start past its limit leaves no HAProxy loading behind."""
    import edge.node
    from edge.errors import EdgeError
    ports = {"http_port": free_port(), "https_port": free_port()}
    routes = [Route(f"h{n}.example.test", "pub_1", self_signed_pem(f"h{n}.example.test")[1])
              for n in range(20)]
    first = EdgeNode(tmp_path / "edge", **ports)
    first.apply(state(app, *routes))
    first.stop()
    monkeypatch.setattr(edge.node, "LOAD_BASE_SECONDS", 0.0)
    monkeypatch.setattr(edge.node, "LOAD_SECONDS_PER_CERT", 1e-6)
    late = EdgeNode(tmp_path / "edge", **ports)
    with pytest.raises(EdgeError, match="did not start a worker"):
        late.start()
    assert not late.haproxy.running and late.haproxy.process is not None
    assert late.haproxy.process.poll() is not None, "stopped, not left loading"
    monkeypatch.setattr(edge.node, "LOAD_SECONDS_PER_CERT", 0.25)  # 5 s for these 20
    second = EdgeNode(tmp_path / "edge", **ports)
    try:
        second.start()
        assert https_get(ports["https_port"], "h19.example.test").json()["publication_id"] \
            == "pub_1"
    finally:
        second.stop()


def test_route_and_certificate_changes_apply_hot_without_reload(tmp_path: Path,
                                                                 app: SampleApp) -> None:
    ports = {"http_port": free_port(), "https_port": free_port()}
    node = EdgeNode(tmp_path / "edge", **ports)
    try:
        cert1, pem1 = self_signed_pem("one.example.test")
        node.apply(state(app, Route("one.example.test", "pub_1", pem1)))
        workers = node.haproxy.workers()
        cert2, pem2 = self_signed_pem("two.example.test")
        node.apply(state(app, Route("one.example.test", "pub_1", pem1),
                         Route("two.example.test", "pub_2", pem2)))
        probe = https_get(ports["https_port"], "two.example.test", cadata=cert2)
        assert (probe.status, probe.json()["publication_id"]) == (200, "pub_2")
        renewed, pem1b = self_signed_pem("one.example.test")
        final = state(app, Route("one.example.test", "pub_9", pem1b))
        node.apply(final)
        probe = https_get(ports["https_port"], "one.example.test", cadata=renewed)
        assert (probe.status, probe.json()["publication_id"]) == (200, "pub_9")
        assert https_get(ports["https_port"], "two.example.test").status == 404
        assert (node.hot_applies, node.reloads) == (2, 1)
        assert node.haproxy.workers() == workers, "no reload happened"
        assert node.applied_version == final.version
    finally:
        node.stop()
    restarted = EdgeNode(tmp_path / "edge", **ports)
    try:
        restarted.start()
        probe = https_get(ports["https_port"], "one.example.test", cadata=renewed)
        assert (probe.status, probe.json()["publication_id"]) == (200, "pub_9")
        assert https_get(ports["https_port"], "two.example.test").status == 404
    finally:
        restarted.stop()


def test_plan_removing_most_routes_is_refused_unless_forced(node: EdgeNode,
                                                           app: SampleApp) -> None:
    routes = [Route(f"h{n}.example.test", "pub_1", self_signed_pem(f"h{n}.example.test")[1])
              for n in range(12)]
    node.apply(state(app, *routes))
    shrunk = state(app, *routes[:8])
    assert node.plan(shrunk).describe() == [f"- h{n}.example.test (was pub_1)"
                                            for n in (10, 11, 8, 9)]
    with pytest.raises(UnsafePlan, match="removes 4 of 12"):
        node.apply(shrunk)
    assert "removes 4 of 12" in (node.last_error or "")
    assert https_get(node.layout.https_port, "h11.example.test").status != 404
    node.apply(shrunk, force=True)
    assert https_get(node.layout.https_port, "h11.example.test").status == 404


def test_certificate_with_a_foreign_key_is_refused(node: EdgeNode, app: SampleApp) -> None:
    cert, _ = self_signed_pem("one.example.test")
    _, other = self_signed_pem("one.example.test")
    foreign_key = other[other.index("-----BEGIN PRIVATE KEY"):]
    with pytest.raises(CertificateRejected, match="does not match"):
        node.apply(state(app, Route("one.example.test", "pub_1", cert + foreign_key)))


def test_cold_start_serves_a_first_slice_then_streams_the_rest(tmp_path: Path,
                                                              app: SampleApp) -> None:
    node = EdgeNode(tmp_path / "edge", http_port=free_port(), https_port=free_port(),
                    cold_slice=3)
    try:
        from edge.state import Redirect
        routes = [Route(f"h{n}.example.test", "pub_1", self_signed_pem(f"h{n}.example.test")[1])
                  for n in range(8)]
        sent = []
        send = node.runtime.run_batch
        node.runtime.run_batch = lambda commands, timeout=120: sent.extend(commands) or send(
            commands, timeout)  # type: ignore[method-assign]
        node.apply(dataclasses.replace(state(app, *routes), redirects=(
            Redirect("acme.link", "go", 302, "https://example.com/go"),)))
        assert https_get(node.layout.https_port, "acme.link", "/go").status == 302
        assert not [line for line, _ in sent if "map" in line and "hosts" not in line], \
            "the first release holds every link: only certificates stream in"
        assert (node.reloads, node.hot_applies) == (1, 1)
        for route in routes:
            assert https_get(node.layout.https_port, route.hostname).status == 200
        assert len((node.current / "hosts.map").read_text().split()) == 16, "files hold all"
    finally:
        node.stop()


def test_wildcard_route_serves_every_name_below_it_and_exact_routes_win(
        node: EdgeNode, app: SampleApp) -> None:
    wild_cert, wild_pem = self_signed_pem("*.wild.example.test")
    exact_cert, exact_pem = self_signed_pem("exact.wild.example.test")
    node.apply(state(app, Route("*.wild.example.test", "pub_wild", wild_pem)))
    probe = https_get(node.layout.https_port, "anything.wild.example.test", cadata=wild_cert)
    assert (probe.status, probe.json()["publication_id"]) == (200, "pub_wild")
    node.apply(state(app, Route("*.wild.example.test", "pub_wild", wild_pem),
                     Route("exact.wild.example.test", "pub_exact", exact_pem)))  # hot
    probe = https_get(node.layout.https_port, "exact.wild.example.test", cadata=exact_cert)
    assert probe.json()["publication_id"] == "pub_exact"
    assert https_get(node.layout.https_port, "wild.example.test").status == 404
    assert https_get(node.layout.https_port, "a.b.wild.example.test").status == 404


def test_hot_short_links_are_answered_by_haproxy_and_change_without_reload(
        node: EdgeNode, app: SampleApp) -> None:
    from edge.state import Redirect
    _, pem = self_signed_pem("blog.example.test")
    blog = Route("blog.example.test", "pub_1", pem)
    node.apply(dataclasses.replace(state(app, blog), redirects=(
        Redirect("acme.link", "go", 302, "https://example.com/landing?a=1&b=2"),
        Redirect("acme.link", "perm", 301, "https://example.com/p"))))
    go = https_get(node.layout.https_port, "acme.link", "/go")
    assert (go.status, go.headers["location"]) == (302, "https://example.com/landing?a=1&b=2")
    assert https_get(node.layout.https_port, "acme.link", "/perm").status == 301
    assert https_get(node.layout.https_port, "acme.link", "/other").status == 404
    assert https_get(node.layout.https_port, "blog.example.test", "/go").status == 200
    reloads = node.reloads
    # ";" ends a runtime API command: a target holding one must stay one value, not a command.
    devices = Redirect("acme.link", "app", 301, "https://e.com/web|1", 0,
                       ("https://e.com/ios", "https://e.com/android", "https://e.com/desktop"))
    assert Redirect.from_map(devices.key, devices.value) == dataclasses.replace(
        devices, target="https://e.com/web%7C1"), "a | in a target cannot split the fields"
    node.apply(dataclasses.replace(state(app, blog), redirects=(
        Redirect("acme.link", "go", 307, "https://example.com/moved;prompt"), devices,
        dataclasses.replace(devices, slug="past", expires=int(time.time()) - 1))))
    go = https_get(node.layout.https_port, "acme.link", "/go")
    assert (go.status, go.headers["location"]) == (307, "https://example.com/moved;prompt")
    assert "vary" not in go.headers
    assert https_get(node.layout.https_port, "acme.link", "/perm").status == 404
    for agent, device in (("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0)", "ios"),
                          ("Mozilla/5.0 (Linux; Android 14; iPhone-like)", "android"),
                          ("curl/8.0", "desktop")):
        app_link = https_get(node.layout.https_port, "acme.link", "/app",
                             headers={"User-Agent": agent})
        assert (app_link.status, app_link.headers["location"], app_link.headers["vary"]) == (
            301, f"https://e.com/{device}", "User-Agent"), agent
    assert https_get(node.layout.https_port, "acme.link", "/past").status == 404, "expired"
    assert node.reloads == reloads, "edited and removed through the runtime API"
    for bad in (Redirect("acme.link", "x", 302, "https://e.com/a b\nbackend evil"),
                dataclasses.replace(devices, devices=("https://e.com/1", "javascript:x", "")),
                dataclasses.replace(devices, devices=("https://e.com/only-one",))):
        with pytest.raises(RenderError):
            node.apply(dataclasses.replace(state(app, blog), redirects=(bad,)))


def http_get(port: int, host: str, path: str = "/x") -> tuple[int, str | None, bytes]:
    """A plain-HTTP GET to the edge with any Host header (http.client sends it verbatim)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.getheader("Location"), response.read()
    finally:
        conn.close()


def test_the_request_id_comes_from_the_edge_only(node: EdgeNode, app: SampleApp) -> None:
    """Battery finding 4: a client's X-Request-ID reached the apps before ours, so anyone could
    plant ids in their logs."""
    cert, pem = self_signed_pem("one.example.test")
    node.apply(state(app, Route("one.example.test", "pub_1", pem)))
    probe = https_get(node.layout.https_port, "one.example.test", "/x", cadata=cert,
                      headers={"X-Request-ID": "planted-by-client"})
    seen = probe.json()["request_id"]
    assert seen and "planted" not in seen and "," not in seen
    assert probe.headers["x-request-id"] == seen, "the client gets the id the app logged"


def test_a_permanent_short_link_is_cached_no_longer_than_it_lives(
        node: EdgeNode, app: SampleApp) -> None:
    """A browser or a shared cache replays a 301/308 without asking: a day for a link without
    an end, the seconds it has left for one that expires (else it outlives its expiry)."""
    from edge.state import Redirect
    _, pem = self_signed_pem("blog.example.test")
    ends = int(time.time()) + 600
    node.apply(dataclasses.replace(state(app, Route("blog.example.test", "pub_1", pem)),
                                   redirects=(
        Redirect("acme.link", "perm", 301, "https://example.com/p"),
        Redirect("acme.link", "brief", 308, "https://example.com/b", ends),
        Redirect("acme.link", "temp", 302, "https://example.com/t", ends))))
    cached = {slug: https_get(node.layout.https_port, "acme.link", f"/{slug}").headers[
        "cache-control"] for slug in ("perm", "brief", "temp")}
    assert cached["perm"] == "public, max-age=86400"
    assert cached["temp"] == "private, no-store"
    brief = cached["brief"]
    assert brief.startswith("public, max-age=") and 590 <= int(brief.split("=")[1]) <= 600, brief


def test_plain_http_redirects_only_hosts_the_edge_routes(node: EdgeNode, app: SampleApp) -> None:
    """Battery finding 5: the HTTPS redirect was built from any Host header, so
    ``Host: blog.example.test@evil.test`` sent the visitor to evil.test."""
    _, pem = self_signed_pem("one.example.test")
    _, wild = self_signed_pem("*.wild.example.test")
    node.apply(state(app, Route("one.example.test", "pub_1", pem),
                     Route("*.wild.example.test", "pub_2", wild)))
    port, https = node.layout.http_port, node.layout.https_port
    status, location, _ = http_get(port, "One.Example.Test:80", "/p/1?q=2")
    assert (status, location) == (301, f"https://one.example.test:{https}/p/1?q=2")
    assert http_get(port, "a.wild.example.test")[:2] == (301, f"https://a.wild.example.test:{https}/x")
    for host in ("one.example.test@evil.test", "evil.test\\@one.example.test",
                 "one.example.test/.evil.test", "[::1]", "", "evil.test/one.example.test"):
        status, location, _ = http_get(port, host, "/x")
        assert status == 400 and location is None, (host, status, location)
    for host in ("evil.test", "one.example.test.evil.test", "example.test"):
        status, location, body = http_get(port, host, "/x")
        assert (status, location) == (404, None) and b"Unknown host" in body, host
    # HTTP-01 checks still reach the control service for names not routed yet (it is down here).
    status, _, _ = http_get(port, "new.example.test:80", "/.well-known/acme-challenge/t")
    assert status == 503


def test_a_node_in_a_deep_directory_still_gets_its_sockets(tmp_path: Path) -> None:
    """HAProxy refuses socket paths over 97 bytes: a deep data directory (as pytest's own,
    seen failing in CI) puts them in a short private directory instead."""
    deep = tmp_path / ("d" * 60) / ("e" * 40) / "edge"
    node = EdgeNode(deep, http_port=free_port(), https_port=free_port())
    try:
        assert len(str(node.layout.runtime_socket)) <= 97
        assert node.layout.runtime_socket.parent.stat().st_mode & 0o777 == 0o700
        node.apply(DesiredState((), ("127.0.0.1:9",), ("127.0.0.1:9",)))
        assert node.haproxy.running and node.runtime.show_map(
            node.current.resolve() / "hosts.map") == {}
    finally:
        node.stop()


def test_deltas_are_journaled_and_a_restart_serves_them(tmp_path: Path, app: SampleApp) -> None:
    """A delta costs its changes (no map rewritten); a node killed before folding its journal
    restarts serving every change, and a delta on a stale base is not applied."""
    from edge.state import Redirect, StateDelta
    ports = {"http_port": free_port(), "https_port": free_port()}
    node = EdgeNode(tmp_path / "edge", **ports)
    restarted = EdgeNode(tmp_path / "edge", **ports)
    try:
        one = self_signed_pem("one.example.test")[1]
        base = state(app, Route("one.example.test", "pub_1", one))
        node.apply(base)
        hosts_map = (node.current / "hosts.map").read_text()
        cert2, pem2 = self_signed_pem("two.example.test")
        first = StateDelta(base.version, "1" * 16, base.config,
                           {"two.example.test": Route("two.example.test", "pub_2", pem2),
                            "one.example.test": None},
                           {"acme.link/go": Redirect("acme.link", "go", 302, "https://e.com/1")})
        assert node.can_apply_delta(first) and node.apply_delta(first, force=True)
        second = StateDelta(first.version, "2" * 16, base.config, {},
                            {"acme.link/go": Redirect("acme.link", "go", 301, "https://e.com/2"),
                             "acme.link/x": Redirect("acme.link", "x", 302, "https://e.com/x")})
        assert node.apply_delta(second)
        assert not node.can_apply_delta(second), "its base is not served any more"
        assert (node.current / "hosts.map").read_text() == hosts_map, "journaled only"
        assert node.applied_version == "2" * 16
        probe = https_get(ports["https_port"], "two.example.test", cadata=cert2)
        assert (probe.status, probe.json()["publication_id"]) == (200, "pub_2")
        go = https_get(ports["https_port"], "acme.link", "/go")
        assert (go.status, go.headers["location"]) == (301, "https://e.com/2")
        assert https_get(ports["https_port"], "one.example.test").status == 404
        for pid in [node.haproxy.pid or 0, *node.haproxy.workers()]:  # dies, journal unfolded
            os.kill(pid, signal.SIGKILL)
        restarted.start()  # folds the journal, then HAProxy reads the files
        assert restarted.applied_version == "2" * 16
        probe = https_get(ports["https_port"], "two.example.test", cadata=cert2)
        assert (probe.status, probe.json()["publication_id"]) == (200, "pub_2")
        assert https_get(ports["https_port"], "acme.link", "/x").headers["location"] == \
            "https://e.com/x"
        assert https_get(ports["https_port"], "one.example.test").status == 404
        assert "two.example.test pub_2" in (restarted.current / "hosts.map").read_text()
        assert not (restarted.current / "changes.jsonl").exists()
        assert not (restarted.current / "certs" / "one.example.test.pem").exists(), \
            "a removed route's key goes once no file names it"
    finally:
        restarted.stop()
        node.stop()


def test_a_state_dropping_most_short_links_is_refused_unless_forced(node: EdgeNode,
                                                                    app: SampleApp) -> None:
    from edge.state import Redirect
    blog = Route("blog.example.test", "pub_1", self_signed_pem("blog.example.test")[1])
    links = tuple(Redirect("acme.link", f"s{n}", 302, f"https://e.com/{n}") for n in range(12))
    node.apply(dataclasses.replace(state(app, blog), redirects=links))
    with pytest.raises(UnsafePlan, match="removes 5 of 12 short links"):
        node.apply(dataclasses.replace(state(app, blog), redirects=links[:7]))
    assert https_get(node.layout.https_port, "acme.link", "/s11").status == 302
    node.apply(dataclasses.replace(state(app, blog), redirects=links[:7]), force=True)
    assert https_get(node.layout.https_port, "acme.link", "/s11").status == 404

"""An edge node recovering from what a real HAProxy and a real disk do to it: a reload that
fails after `haproxy -c` passed, HAProxy dying while the control service is away, a journal
line torn by a crash, a release the disk could not hold."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

from devtools.probe import https_get
from devtools.sample_app import SampleApp
from edge.agent import EdgeAgent
from edge.errors import EdgeError
from edge.haproxy import HAProxy
from edge.node import EdgeNode
from edge.router import Router, RouterUpdate
from edge.router_agent import RouterAgent
from edge.state import DesiredState, Route, StateDelta
from kit.procs import free_port
from kit.x509 import self_signed as self_signed_pem
from tests.conftest import wait_until
from tests.test_edge_node import app, state  # noqa: F401 (app: the fixture, shared)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process listens on: a HAProxy config binding it passes `haproxy -c`
    and fails to load."""
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


def route(hostname: str, publication: str) -> tuple[str, Route]:
    cert, pem = self_signed_pem(hostname)
    return cert, Route(hostname, publication, pem)


def served(node: EdgeNode, hostname: str, cert: str) -> str | None:
    """The publication HAProxy serves ``hostname`` for (with its certificate ``cert``), None
    if it does not know it."""
    probe = https_get(node.layout.https_port, hostname)
    if probe.status != 200:
        return None
    assert probe.certificate.subject.rfc4514_string() == f"CN={hostname}", cert
    return str(probe.json()["publication_id"])


def node_serving(edge_node: Callable[..., EdgeNode], app: SampleApp,
                 *routes: Route) -> tuple[dict[str, int], EdgeNode, DesiredState]:
    """A node on ports of its own serving ``routes``: its ports (for a node that takes its
    HAProxy over, as a restarted agent does), the node and the state it serves."""
    ports = {"http_port": free_port(), "https_port": free_port()}
    first = edge_node(**ports)
    served_state = state(app, *routes)
    first.apply(served_state)
    return ports, first, served_state


def test_a_reload_that_fails_leaves_the_node_on_the_release_haproxy_serves(
        edge_node: Callable[..., EdgeNode], app: SampleApp, taken_port: int) -> None:
    """The agent restarted with a PROXY bind whose port is taken: `haproxy -c` passes, the
    reload fails and the old worker serves on. The node says so (not the new version), keeps
    the release HAProxy serves current, and takes later changes hot into it."""
    cert1, one = route("one.example.test", "pub_1")
    ports, first, s1 = node_serving(edge_node, app, one)
    serving = first.current.resolve()
    node = edge_node(**ports, proxy_https_port=free_port(), proxy_http_port=taken_port)
    node.start()  # adopts the HAProxy serving s1
    cert2, two = route("two.example.test", "pub_2")
    started = time.monotonic()
    with pytest.raises(EdgeError):
        node.apply(state(app, one, two))
    assert time.monotonic() - started < 20, "the failure is seen, not waited out"
    assert node.applied_version == s1.version
    assert node.last_error and "could not load" in node.last_error
    assert node.current.resolve() == serving
    assert list((node.directory / "releases").iterdir()) == [serving], "the new one is gone"
    assert node.haproxy.running and served(node, "one.example.test", cert1) == "pub_1"
    assert served(node, "two.example.test", cert2) is None
    cert3, three = route("three.example.test", "pub_3")
    delta = StateDelta(s1.version, "3" * 16, s1.config, {"three.example.test": three}, {})
    assert first.can_apply_delta(delta) and first.apply_delta(delta)
    assert served(first, "three.example.test", cert3) == "pub_3", "into the maps it serves"


def test_a_failed_reload_after_a_refused_hot_change_reports_what_haproxy_serves(
        node: EdgeNode, app: SampleApp) -> None:
    """A hot change HAProxy refused falls back to a reload of the files, which fails here (the
    default certificate is damaged): the node reports the version HAProxy confirmed, not the
    files', and the next apply renders a new release instead of a hot change onto them."""
    cert1, one = route("one.example.test", "pub_1")
    base = state(app, one)
    node.apply(base)
    release = node.current.resolve()
    node.runtime.command(  # HAProxy loses the entry: its `set map` is refused
        f"del map {release / 'hosts.map'} one.example.test")
    default = node.layout.default_cert.read_text()
    node.layout.default_cert.write_text("damaged\n")
    moved = Route("one.example.test", "pub_9", one.pem)
    delta = StateDelta(base.version, "1" * 16, base.config, {"one.example.test": moved}, {})
    assert node.can_apply_delta(delta)
    with pytest.raises(EdgeError):
        node.apply_delta(delta)
    assert node.applied_version == base.version
    assert node.last_error
    following = StateDelta("1" * 16, "2" * 16, base.config, {}, {})
    assert not node.can_apply_delta(following)
    assert not node.can_apply_delta(StateDelta(base.version, "2" * 16, base.config, {}, {}))
    node.layout.default_cert.write_text(default)
    assert node.apply(state(app, moved))
    assert node.current.resolve() != release, "a new release, HAProxy reloaded onto it"
    assert node.applied_version == state(app, moved).version and node.last_error is None
    assert served(node, "one.example.test", cert1) == "pub_9"


def kill(haproxy: HAProxy) -> None:
    """HAProxy dies at once, workers and master (an OOM kill, a crash)."""
    pids = [haproxy.pid or 0, *haproxy.workers()]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not haproxy.running, timeout=5)


def test_haproxy_that_died_is_started_again_while_the_control_service_is_away(
        node: EdgeNode, app: SampleApp) -> None:
    cert, one = route("one.example.test", "pub_1")
    node.apply(state(app, one))
    agent = EdgeAgent(node, f"http://127.0.0.1:{free_port()}", "token", node_id="n1")
    kill(node.haproxy)
    with pytest.raises(requests.ConnectionError):
        agent.sync()
    assert node.haproxy.running, "started from the files before asking"
    assert served(node, "one.example.test", cert) == "pub_1"


def test_a_router_whose_haproxy_died_starts_it_again_while_the_control_service_is_away(
        tmp_path: Path) -> None:
    router = Router(tmp_path / "router", https_port=free_port(), http_port=free_port())
    try:
        router.apply(RouterUpdate.from_json({
            "version": "v1", "revision": 1, "delta": False, "hosts": {"a.example.test": "s1"},
            "shards": {"s1": [{"host": "127.0.0.1", "https_port": 9, "http_port": 9}]},
            "default_shard": "s1"}))
        agent = RouterAgent(router, f"http://127.0.0.1:{free_port()}", "token", node_id="r1")
        kill(router.haproxy)
        with pytest.raises(requests.ConnectionError):
            agent.sync()
        assert router.haproxy.running
        assert router.runtime.show_map(router.map_path) == {"a.example.test": "s1"}
    finally:
        router.stop()


def changed_after_a_torn_journal(edge_node: Callable[..., EdgeNode], app: SampleApp,
                                 torn: str) -> tuple[EdgeNode, Path, dict[str, int], str]:
    """A node whose journal a crash left holding ``torn``, restarted and sent a change: the
    torn bytes are cut, the change is a line of its own. (The node, its journal, its ports,
    the new route's certificate.)"""
    _, one = route("one.example.test", "pub_1")
    ports, first, base = node_serving(edge_node, app, one)
    journal = first.current.resolve() / "changes.jsonl"
    journal.write_text(torn)
    node = edge_node(**ports)
    node.start()
    assert node.applied_version == base.version
    cert2, two = route("two.example.test", "pub_2")
    delta = StateDelta(base.version, "1" * 16, base.config, {"two.example.test": two}, {})
    assert node.can_apply_delta(delta) and node.apply_delta(delta)
    assert [json.loads(line)["version"] for line in journal.read_text().splitlines()] == \
        ["1" * 16], "the torn bytes are cut, the change is a line of its own"
    return node, journal, ports, cert2


def test_a_journal_line_torn_by_a_crash_neither_blocks_nor_swallows_the_next_change(
        edge_node: Callable[..., EdgeNode], app: SampleApp) -> None:
    """A crash mid-append of the first journal line leaves bytes without a newline: the next
    agent starts, the next change is journaled as a line of its own and served, the journal
    folds, and a node built after all that starts from it."""
    node, journal, ports, cert2 = changed_after_a_torn_journal(
        edge_node, app, '{"version":"aaaaaaaaaaaaaaaa","routes":{"two.exa')
    assert served(node, "two.example.test", cert2) == "pub_2"
    assert node.compact_if_idle(idle=0) and not journal.exists()
    assert "two.example.test pub_2" in (node.current / "hosts.map").read_text()
    assert edge_node(**ports).applied_version == "1" * 16


def test_a_journal_holding_only_a_torn_line_is_dropped_by_the_next_fold(
        node: EdgeNode, app: SampleApp) -> None:
    _, one = route("one.example.test", "pub_1")
    node.apply(state(app, one))
    journal = node.current.resolve() / "changes.jsonl"
    journal.write_text('{"version":"aaaaaaaaaaaaaaaa","routes":{"two.exa')
    assert node.compact() is False, "no change to fold"
    assert not journal.exists()


def test_a_last_journal_line_that_does_not_decode_is_skipped_and_cut_before_the_next(
        edge_node: Callable[..., EdgeNode], app: SampleApp) -> None:
    """What an append before this fix left: its line glued onto torn bytes."""
    node, journal, ports, cert2 = changed_after_a_torn_journal(
        edge_node, app, '{"version":"aaaa","routes":{"two.exa{"version":"bbbb","routes":{},'
        '"redirects":{}}\n')
    assert edge_node(**ports).applied_version == "1" * 16
    assert served(node, "two.example.test", cert2) == "pub_2"


def test_a_release_the_disk_cannot_hold_leaves_no_folder(tmp_path: Path, app: SampleApp) -> None:
    """A full disk while a release is written (played by a file-size limit on the process
    that writes it: no HAProxy runs, the write fails first) leaves no partial release."""
    _, one = route("one.example.test", "pub_1")
    (tmp_path / "state.json").write_text(json.dumps(
        {"app": app.address, "hostname": one.hostname, "pem": one.pem}))
    script = f"""
import json, resource
from pathlib import Path
from edge.node import EdgeNode
from edge.state import DesiredState, Route
doc = json.loads(Path({str(tmp_path / "state.json")!r}).read_text())
node = EdgeNode(Path({str(tmp_path / "edge")!r}), http_port={free_port()},
                https_port={free_port()})
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
state = DesiredState((Route(doc["hostname"], "pub_1", doc["pem"]),), (doc["app"],),
                     ("127.0.0.1:9",))
try:
    node.apply(state)
except OSError as exc:
    print("refused:", exc)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).parent.parent)
    assert "refused: [Errno 27] File too large" in done.stdout, done.stdout + done.stderr
    assert list((tmp_path / "edge" / "releases").iterdir()) == []
    assert not (tmp_path / "edge" / "current").exists()


def test_a_journal_append_the_disk_cuts_short_fails_and_the_next_is_whole(
        tmp_path: Path) -> None:
    """A write cut short (a full disk, played by a file-size limit on the process that
    appends) is not taken for the whole line: the append fails, and the next one is a line of
    its own."""
    from edge import journal
    journal.append(tmp_path, "a" * 16, {"one.example.test": "pub_1"}, {})
    size = (tmp_path / journal.NAME).stat().st_size
    script = f"""
import resource
from pathlib import Path
from edge import journal
resource.setrlimit(resource.RLIMIT_FSIZE, ({size + 20}, {size + 20}))
try:
    journal.append(Path({str(tmp_path)!r}), "b" * 16, {{"two.example.test": "pub_2"}}, {{}})
    print("appended")
except OSError as exc:
    print("refused:", exc)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).parent.parent)
    assert "refused: [Errno 27] File too large" in done.stdout, done.stdout + done.stderr
    assert (tmp_path / journal.NAME).stat().st_size == size + 20, "torn, as a disk leaves it"
    journal.append(tmp_path, "c" * 16, {"three.example.test": "pub_3"}, {})
    assert [entry["version"] for entry in journal.entries(tmp_path)] == ["a" * 16, "c" * 16]


def test_an_adopted_haproxy_reading_another_release_than_current_is_reloaded(
        edge_node: Callable[..., EdgeNode], app: SampleApp) -> None:
    """An agent killed between moving ``current`` and the reload leaves HAProxy reading the
    release before: the next agent does not take it for ``current``'s."""
    cert1, one = route("one.example.test", "pub_1")
    ports, first, s1 = node_serving(edge_node, app, one)
    before = first.current.resolve()
    cert2, two = route("two.example.test", "pub_2")
    first.apply(dataclasses.replace(state(app, one, two), app_servers=(app.address,) * 2))
    assert first.current.resolve() != before and served(first, "two.example.test", cert2)
    first.releases.swap(before)  # `current` moved, HAProxy not reloaded yet
    node = edge_node(**ports)
    node.start()
    assert node.applied_version == s1.version
    assert served(node, "two.example.test", cert2) is None, "it serves what it reports"
    assert served(node, "one.example.test", cert1) == "pub_1"


def test_an_adopted_haproxy_serving_a_change_the_journal_lost_is_reloaded_onto_the_files(
        edge_node: Callable[..., EdgeNode], app: SampleApp) -> None:
    """An agent killed after a runtime change reached HAProxy and before its journal line:
    the files say the state before, HAProxy serves the change. The next agent (which reports
    the files' version, and may never be sent that change again) reloads HAProxy onto them."""
    from edge import hotapply
    from edge.plan import make_delta_plan
    cert_x, x = route("x.example.test", "pub_x")
    cert_h, h = route("h.example.test", "pub_h")
    ports, first, s1 = node_serving(edge_node, app, x, h)
    plan = make_delta_plan(first.existing_routes(), {"x.example.test": None})
    hotapply.send_changes(first.runtime, first.current.resolve(), plan.changes, {})
    assert served(first, "x.example.test", cert_x) is None  # then the agent dies
    node = edge_node(**ports)
    node.start()
    assert node.applied_version == s1.version
    assert served(node, "x.example.test", cert_x) == "pub_x", "it serves what it reports"
    assert served(node, "h.example.test", cert_h) == "pub_h"


def test_a_node_restarted_with_new_templates_serves_them_before_its_state_changes(
        edge_node: Callable[..., EdgeNode], app: SampleApp, tmp_path: Path) -> None:
    """An upgrade brings new templates (a fix in haproxy.cfg), an operator a new setting: a
    node whose state did not change served the old ones until some domain changed, which on
    a quiet shard may be days."""
    cert, one = route("one.example.test", "pub_1")
    ports, first, s1 = node_serving(edge_node, app, one)
    newer = tmp_path / "templates"
    shutil.copytree(resources.files("haproxy_templates"), newer)  # type: ignore[arg-type]
    config = newer / "haproxy.cfg.j2"
    config.write_text(config.read_text().replace(
        "balance roundrobin", "balance roundrobin\n    http-response set-header X-Release next"))
    assert first.own_files_served
    node = edge_node(templates=newer, **ports)
    node.start()
    assert not node.own_files_served, "so its agent asks for a whole state"
    assert node.apply(s1), "the same state, rendered anew"
    probe = https_get(node.layout.https_port, "one.example.test", cadata=cert)
    assert (probe.status, probe.headers.get("x-release")) == (200, "next")
    again = edge_node(templates=newer, **ports)
    again.start()
    assert again.own_files_served and not again.apply(s1), "then nothing more to do"


def test_a_router_restarted_with_new_settings_serves_them_before_its_shard_table_changes(
        tmp_path: Path) -> None:
    """A router's template or listening settings (an upgrade, a new limit) reached HAProxy
    only with the next change of the shard table, which may be months away."""
    ports = {"https_port": free_port(), "http_port": free_port()}
    router = Router(tmp_path / "router", **ports)
    try:
        router.apply(RouterUpdate.from_json({
            "version": "v1", "revision": 1, "delta": False, "hosts": {"a.example.test": "s1"},
            "shards": {"s1": [{"host": "127.0.0.1", "https_port": 9, "http_port": 9}]},
            "default_shard": "s1"}))
        assert "Maxconn: 4096" in router.runtime.command("show info")
        restarted = Router(tmp_path / "router", maxconn=1234, **ports)
        restarted.start()  # as its agent does at each round with nothing new
        assert "Maxconn: 1234" in restarted.runtime.command("show info")
        assert restarted.runtime.show_map(restarted.map_path) == {"a.example.test": "s1"}
        assert restarted.applied_version == "v1"
        again = Router(tmp_path / "router", maxconn=1234, **ports)
        again.start()
        assert again.reloads == 0, "rendered with these settings already"
    finally:
        router.stop()

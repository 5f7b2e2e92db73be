"""The shard router (edge/router.py) with real HAProxy: a router in front of real edge nodes
of two shards, each holding its own hostnames' certificates, reached through their PROXY binds;
and a shard node's PROXY binds alone."""
from __future__ import annotations

import dataclasses
import http.client
import ipaddress
import json
import socket
import ssl
import struct
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from cryptography import x509

from devtools.sample_app import SampleApp
from edge.haproxy import server_status
from edge.node import EdgeNode
from edge.plan import UnsafePlan
from edge.render import NodeLayout, render
from edge.router import Router, RouterError, RouterUpdate
from edge.state import DesiredState, Route
from kit.procs import free_port
from kit.x509 import self_signed as self_signed_pem
from tests.conftest import wait_until

PROXY_V2 = b"\r\n\r\n\x00\r\nQUIT\n"


@dataclasses.dataclass
class Answer:
    status: int
    body: bytes
    subject: str

    def json(self) -> Any:
        return json.loads(self.body)


def proxy_v2_header(source: str, source_port: int, destination: str, port: int) -> bytes:
    """A PROXY protocol v2 header for a TCP connection over IPv4 from ``source``."""
    addresses = ipaddress.IPv4Address(source).packed + ipaddress.IPv4Address(destination).packed
    return PROXY_V2 + bytes([0x21, 0x11]) + struct.pack(
        "!H", 12) + addresses + struct.pack("!HH", source_port, port)


def tls_get(port: int, hostname: str, cadata: str | None = None, source: str = "127.0.0.1",
            preamble: bytes = b"", path: str = "/") -> Answer:
    """GET over TLS with SNI ``hostname`` from ``source`` (another loopback address stands for
    another visitor), after ``preamble`` in clear (a PROXY header)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no system trust store: 28 ms of CPU
    if cadata is None:
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    else:
        context.load_verify_locations(cadata=cadata)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10,
                                   source_address=(source, 0))
    raw.sendall(preamble)
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    conn.sock = context.wrap_socket(raw, server_hostname=hostname)
    try:
        der = conn.sock.getpeercert(binary_form=True)
        assert der is not None
        conn.request("GET", path, headers={"Host": hostname})
        response = conn.getresponse()
        return Answer(response.status, response.read(),
                      x509.load_der_x509_certificate(der).subject.rfc4514_string())
    finally:
        conn.close()


def http_get(port: int, host: str, path: str = "/") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("Location") or ""
    finally:
        conn.close()


@pytest.fixture
def app() -> Iterator[SampleApp]:
    instance = SampleApp("app", 0)
    yield instance
    instance.stop()


@pytest.fixture
def router(tmp_path: Path) -> Iterator[Router]:
    instance = Router(tmp_path / "router", https_port=free_port(), http_port=free_port(),
                      check_ms=200)
    yield instance
    instance.stop()


def shard_node(edge_node: Callable[..., EdgeNode], name: str) -> EdgeNode:
    return edge_node(name, proxy_https_port=free_port(), proxy_http_port=free_port())


def state(app: SampleApp, *routes: Route) -> DesiredState:
    return DesiredState(routes=routes, app_servers=(app.address,),
                        control_servers=("127.0.0.1:9",))


def feed(version: str, hosts: dict[str, str | None], shards: dict[str, list[EdgeNode]],
         delta: bool = False, default: str = "one") -> RouterUpdate:
    """The router feed's answer naming these nodes' PROXY binds."""
    return RouterUpdate.from_json({
        "version": version, "revision": int(version[1:]), "delta": delta, "hosts": hosts,
        "default_shard": default,
        "shards": {name: [{"host": "127.0.0.1", "https_port": node.layout.proxy_https_port,
                           "http_port": node.layout.proxy_http_port} for node in nodes]
                   for name, nodes in shards.items()}})


def test_proxy_binds_pass_the_visitors_address_to_the_app(
        edge_node: Callable[..., EdgeNode], app: SampleApp) -> None:
    node = shard_node(edge_node, "shard")
    cert, pem = self_signed_pem("one.example.test")
    node.apply(state(app, Route("one.example.test", "pub_1", pem)))
    port = node.layout.proxy_https_port
    answer = tls_get(port, "one.example.test", cert,
                     preamble=proxy_v2_header("203.0.113.7", 40000, "127.0.0.1", port))
    assert answer.status == 200 and answer.subject == "CN=one.example.test"
    assert answer.json()["forwarded_for"] == "203.0.113.7"
    direct = tls_get(node.layout.https_port, "one.example.test", cert)
    assert direct.json()["forwarded_for"] == "127.0.0.1", "the plain bind is as ever"
    http_port = node.layout.proxy_http_port
    conn = socket.create_connection(("127.0.0.1", http_port), timeout=10)
    with conn:
        conn.sendall(proxy_v2_header("203.0.113.7", 40000, "127.0.0.1", http_port)
                     + b"GET /x HTTP/1.1\r\nHost: one.example.test\r\nConnection: close\r\n\r\n")
        assert conn.recv(4096).startswith(b"HTTP/1.1 301")


def test_proxy_binds_off_leave_the_config_as_it_was(tmp_path: Path) -> None:
    layout = NodeLayout("127.0.0.1", 80, 443, tmp_path / "admin.sock", tmp_path / "d.pem")
    on = dataclasses.replace(layout, proxy_https_port=8444, proxy_http_port=8081)
    desired = DesiredState(routes=(), app_servers=("127.0.0.1:1",),
                           control_servers=("127.0.0.1:9",))
    off_cfg = render(desired, layout, tmp_path)["haproxy.cfg"]
    on_cfg = render(desired, on, tmp_path)["haproxy.cfg"]
    assert "accept-proxy" not in off_cfg
    added = [line for line in on_cfg.splitlines() if line not in off_cfg.splitlines()]
    assert [line for line in on_cfg.splitlines() if line not in added] == off_cfg.splitlines()
    health = tmp_path / "health.map"
    assert [line for line in added if not line.lstrip().startswith("#")] == [
        "    bind 127.0.0.1:8081 accept-proxy",
        "    http-request return status 200 content-type text/plain string \"ready\" if "
        f"{{ path /_edge/health }} {{ str(state),map({health}) -m str ready }}",
        "    http-request return status 503 content-type text/plain string \"not ready\" if "
        "{ path /_edge/health }",
        f"    bind 127.0.0.1:8444 accept-proxy ssl crt {tmp_path / 'd.pem'} crt-list "
        f"{tmp_path / 'crt-list'} alpn h2,http/1.1"]


@pytest.mark.parametrize("doc, says", [
    ({"hosts": {"a..b": "one"}}, "normalized hostname"),
    ({"hosts": {"a.example": "One Two"}}, "not a shard name"),
    ({"default_shard": "zero"}, "default shard"),
    ({"shards": {"one": []}}, "at least one node"),
    ({"shards": {"one": [{"host": "a b", "https_port": 1, "http_port": 2}]}}, "host and ports"),
    ({"shards": {"one": [{"host": "h", "https_port": 0, "http_port": 2}]}}, "host and ports"),
    ({"version": "a b"}, "printable"),
    ({"hosts": None}, "malformed"),
])
def test_updates_with_unsafe_values_are_refused(doc: dict[str, Any], says: str) -> None:
    base = {"version": "v1", "revision": 1, "delta": False, "hosts": {}, "default_shard": "one",
            "shards": {"one": [{"host": "127.0.0.1", "https_port": 1, "http_port": 2}]}}
    with pytest.raises(RouterError, match=says):
        RouterUpdate.from_json({**base, **doc})


def backend_stat(router: Router, backend: str, column: str) -> str:
    """One column of ``show stat`` for the BACKEND row of ``backend``."""
    rows = router.runtime.command("show stat").splitlines()
    header = rows[0].lstrip("# ").split(",")
    for row in rows[1:]:
        stat = dict(zip(header, row.split(",")))
        if stat.get("pxname") == backend and stat.get("svname") == "BACKEND":
            return stat[column]
    raise AssertionError(f"no backend {backend}")


def _shards_up(router: Router, backends: dict[str, int]) -> Callable[[], bool]:
    def up() -> bool:
        return all(list(server_status(router.runtime_socket, backend).values())
                   == ["UP"] * count for backend, count in backends.items())
    return up


@pytest.mark.slow
def test_router_sends_each_hostname_to_its_shard(
        router: Router, edge_node: Callable[..., EdgeNode], app: SampleApp) -> None:
    one, two_a, two_b = (shard_node(edge_node, name) for name in ("one", "two_a", "two_b"))
    cert1, pem1 = self_signed_pem("one.example.test")
    cert2, pem2 = self_signed_pem("two.example.test")
    certm1, pemm1 = self_signed_pem("moving.example.test")
    certm2, pemm2 = self_signed_pem("moving.example.test")
    one.apply(state(app, Route("one.example.test", "pub_1", pem1),
                    Route("moving.example.test", "pub_m_one", pemm1)))
    certw, pemw = self_signed_pem("*.w.example.test")
    for node in (two_a, two_b):
        node.apply(state(app, Route("two.example.test", "pub_2", pem2),
                         Route("moving.example.test", "pub_m_two", pemm2),
                         Route("*.w.example.test", "pub_w", pemw)))
    hosts: dict[str, str | None] = {"one.example.test": "one", "two.example.test": "two",
                                    "moving.example.test": "one", "*.w.example.test": "two"}
    assert router.apply(feed("v1", hosts, {"one": [one], "two": [two_a]}))
    wait_until(_shards_up(router, {"tls_one": 1, "tls_two": 1}), 20, "the shards' checks")
    port = router.listen["https_port"]
    for hostname, cert, publication in (("one.example.test", cert1, "pub_1"),
                                        ("two.example.test", cert2, "pub_2"),
                                        ("moving.example.test", certm1, "pub_m_one"),
                                        ("a.w.example.test", certw, "pub_w")):
        answer = tls_get(port, hostname, cert, source="127.0.0.5")
        assert (answer.status, answer.json()["publication_id"]) == (200, publication)
        assert answer.subject == f"CN={hostname.replace('a.w.', '*.w.')}"
        assert answer.json()["forwarded_for"] == "127.0.0.5", "the visitor's, through PROXY v2"
    unknown = tls_get(port, "nowhere.example.test")
    assert unknown.subject == "CN=edge-default.invalid" and unknown.status == 404
    # Port 80 by Host: a shard-two host gets shard two's HTTPS redirect (naming its node's
    # own HTTPS port, as the node is not on 443 here), an unknown one the default's 404.
    assert http_get(router.listen["http_port"], "two.example.test", "/p?q=1") == (
        301, f"https://two.example.test:{two_a.layout.https_port}/p?q=1")
    assert http_get(router.listen["http_port"], "nowhere.example.test")[0] == 404

    # A hostname moves hot: no reload, the same worker.
    worker, reloads = router.runtime.worker_pid(), router.reloads
    assert router.apply(feed("v2", {"moving.example.test": "two"},
                             {"one": [one], "two": [two_a]}, delta=True))
    moved = tls_get(port, "moving.example.test", certm2)
    assert (moved.status, moved.json()["publication_id"]) == (200, "pub_m_two")
    assert (router.runtime.worker_pid(), router.reloads) == (worker, reloads)
    assert router.journal_path.read_text() == "moving.example.test two\n"
    assert router.compact() and "moving.example.test two\n" in router.map_path.read_text()
    assert not router.journal_path.exists()
    assert router.apply(feed("v2", {}, {"one": [one], "two": [two_a]}, delta=True)) is False

    # A removed hostname goes to the default shard, hot as well.
    router.apply(feed("v3", {"two.example.test": None}, {"one": [one], "two": [two_a]},
                      delta=True))
    assert tls_get(port, "two.example.test").subject == "CN=edge-default.invalid"
    assert router.runtime.worker_pid() == worker

    # A node added to shard two: a new config, reloaded; then shard two's first node dies and
    # its peer takes the shard's connections.
    hosts["moving.example.test"] = "two"
    assert router.apply(feed("v4", hosts, {"one": [one], "two": [two_a, two_b]}))
    assert router.reloads == reloads + 1 and router.runtime.worker_pid() != worker
    wait_until(_shards_up(router, {"tls_two": 2, "http_two": 2}), 20, "shard two's checks")
    # Its check held back first: until it fails, a refused connection goes to the peer.
    router.runtime.command("disable health tls_two/two1")
    two_a.stop()
    for _ in range(4):
        answer = tls_get(port, "two.example.test", cert2)
        assert (answer.status, answer.json()["publication_id"]) == (200, "pub_2")
    assert server_status(router.runtime_socket, "tls_two")["two1"] == "no check", \
        "the stopped node still took its turns"
    assert int(backend_stat(router, "tls_two", "wredis")) > 0, "and its connections moved"
    router.runtime.command("enable health tls_two/two1")
    wait_until(lambda: server_status(router.runtime_socket, "tls_two")["two1"].startswith(
        "DOWN"), 20, "the stopped node's check to fail")
    for _ in range(4):
        answer = tls_get(port, "two.example.test", cert2)
        assert (answer.status, answer.json()["publication_id"]) == (200, "pub_2")


@pytest.mark.slow
def test_router_restarts_serving_its_files(tmp_path: Path, edge_node: Callable[..., EdgeNode],
                                           app: SampleApp) -> None:
    one = shard_node(edge_node, "one")
    cert, pem = self_signed_pem("one.example.test")
    one.apply(state(app, Route("one.example.test", "pub_1", pem)))
    ports = {"https_port": free_port(), "http_port": free_port()}
    first = Router(tmp_path / "r", **ports)
    try:
        first.apply(feed("v1", {"one.example.test": "one"}, {"one": [one]}))
        first.apply(feed("v2", {"two.example.test": "one"}, {"one": [one]}, delta=True))
        master = first.haproxy.pid
        again = Router(tmp_path / "r", **ports)  # an agent started again adopts HAProxy
        assert (again.applied_version, again.applied_revision) == ("v2", 2)
        again.start()
        assert again.haproxy.pid == master
        # The same map renumbered (a restore moved the feed's revisions on): nothing to serve
        # anew, and the new revision is the one it holds, and reports, from now on.
        renumbered = dataclasses.replace(feed("v2", {}, {"one": [one]}, delta=True), revision=9)
        assert not again.apply(renumbered) and again.applied_revision == 9
        assert Router(tmp_path / "r", **ports).applied_revision == 9
        assert again.hosts() == {"one.example.test": "one", "two.example.test": "one"}
        assert again.apply(feed("v3", {"one.example.test": None}, {"one": [one]}, delta=True))
        assert again.reloads == 0 and again.hot_applies == 1
        assert again.journal_path.read_text() == "one.example.test\n"
        first.stop()
        restarted = Router(tmp_path / "r", **ports)
        restarted.start()  # the journal folded into the map file first
        assert restarted.runtime.show_map(restarted.map_path) == {"two.example.test": "one"}
        assert restarted.map_path.read_text() == "two.example.test one\n"
        # Its state file lost: the next agent adopts the running HAProxy and reloads it with
        # the config it renders, rather than taking the old one's for it.
        restarted.state_path.unlink()
        worker = restarted.runtime.worker_pid()
        lost = Router(tmp_path / "r", **ports)
        assert lost.applied_version is None
        lost.apply(feed("v5", {"one.example.test": "one"}, {"one": [one]}))
        assert lost.haproxy.adopted == restarted.haproxy.pid and lost.reloads == 1
        assert lost.runtime.worker_pid() != worker
        assert lost.runtime.show_map(lost.map_path) == {"one.example.test": "one"}
    finally:
        first.stop()  # by the PID file: whichever of them runs HAProxy now


def health(node: EdgeNode) -> int:
    """The status of the routers' health check of ``node``, asked as a router asks it."""
    port = node.layout.proxy_http_port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(proxy_v2_header("127.0.0.1", 40000, "127.0.0.1", port)
                     + b"GET /_edge/health HTTP/1.0\r\n\r\n")
        return int(conn.recv(4096).split()[1])


@pytest.mark.slow
def test_a_node_that_listens_but_is_not_ready_gets_no_visitors(
        router: Router, edge_node: Callable[..., EdgeNode], app: SampleApp) -> None:
    """A node whose state is not whole (a cold start streaming its certificates in) answers
    TCP on every bind but 503 on its health URI: the router checks it DOWN and sends its
    shard's visitors to the node that is ready, until it is ready too."""
    ready = shard_node(edge_node, "ready")
    loading = edge_node("loading", proxy_https_port=free_port(), proxy_http_port=free_port(),
                        cold_slice=1)
    assert not loading.health.ready, "a new node is not ready before its first whole state"
    cert, pem = self_signed_pem("one.example.test")
    other = Route("other.example.test", "pub_other", self_signed_pem("other.example.test")[1])
    for node, publication in ((ready, "pub_ready"), (loading, "pub_loading")):
        node.apply(state(app, Route("one.example.test", publication, pem), other))
        assert node.health.ready and health(node) == 200, "a cold start's last cert is in"
    loading.health.mark(False, running=True)  # as a cold start marks it, until its last cert
    assert health(loading) == 503 and health(ready) == 200
    assert EdgeNode(loading.directory).health.ready is False, "kept in its file"
    socket.create_connection(("127.0.0.1", loading.layout.proxy_https_port), timeout=5).close()

    router.apply(feed("v1", {"one.example.test": "one"}, {"one": [ready, loading]}))
    for backend in ("tls_one", "http_one"):
        wait_until(lambda: [status.split()[0] for status in server_status(
            router.runtime_socket, backend).values()] == ["UP", "DOWN"], 20,
            f"{backend}: the loading node's check to fail")
    port = router.listen["https_port"]
    for _ in range(6):
        answer = tls_get(port, "one.example.test", cert)
        assert (answer.status, answer.json()["publication_id"]) == (200, "pub_ready")

    loading.health.mark(True, running=True)
    wait_until(_shards_up(router, {"tls_one": 2, "http_one": 2}), 20, "the ready node's check")
    served = {tls_get(port, "one.example.test", cert).json()["publication_id"]
              for _ in range(6)}
    assert served == {"pub_ready", "pub_loading"}, "both nodes take visitors again"


SHARDS = {name: [{"host": "127.0.0.1", "https_port": 1, "http_port": 2}]
          for name in ("one", "two")}


def test_a_snapshot_dropping_most_hostnames_is_refused_unless_forced(tmp_path: Path) -> None:
    router = Router(tmp_path / "router", https_port=free_port(), http_port=free_port())
    router.map_path.write_text("".join(f"h{n}.example.test two\n" for n in range(20)))
    shards = SHARDS
    empty = {"version": "v2", "revision": 2, "delta": False, "hosts": {}, "shards": shards,
             "default_shard": "one"}
    with pytest.raises(UnsafePlan, match="removes 20 of 20 hostnames"):
        router.apply(RouterUpdate.from_json(empty))
    assert router.last_error and "refused unless forced" in router.last_error
    assert len(router.hosts()) == 20 and not router.config_path.exists()
    assert RouterUpdate.from_json({**empty, "force": True}).force


def test_an_entry_taken_off_counts_as_removed_only_if_its_hostname_goes_elsewhere(
        tmp_path: Path) -> None:
    """Without its entry a hostname goes where its wildcard parent's entry says, else to the
    default shard: taking off entries that name that shard (a drain to the default shard)
    sends no visitor elsewhere, so no number of them is a mass removal."""
    router = Router(tmp_path / "router", https_port=free_port(), http_port=free_port())
    router.map_path.write_text("".join(f"h{n}.example.test one\n" for n in range(12))
                               + "*.w.test two\n"
                               + "".join(f"x{n}.w.test one\n" for n in range(8)))
    delta = {"version": "v2", "revision": 2, "delta": True, "shards": SHARDS,
             "default_shard": "one"}
    try:
        with pytest.raises(UnsafePlan, match="removes 8 of 21 hostnames"):
            router.apply(RouterUpdate.from_json({**delta, "hosts": {
                **{f"h{n}.example.test": None for n in range(12)},
                **{f"x{n}.w.test": None for n in range(8)}}}))  # the x's would go to two
        assert router.apply(RouterUpdate.from_json({**delta, "hosts": {
            f"h{n}.example.test": None for n in range(12)}}))
        assert router.last_error is None
        assert sorted(router.hosts()) == sorted(["*.w.test"] + [f"x{n}.w.test" for n in range(8)])
    finally:
        router.stop()


def test_the_entries_of_a_shard_gone_from_the_table_are_taken_off_as_they_lead_nowhere(
        tmp_path: Path) -> None:
    """A router catching up on a drain after its shard was removed: the entries naming it
    already lead to the default shard (no backend for it), so taking them off is no removal."""
    router = Router(tmp_path / "router", https_port=free_port(), http_port=free_port())
    router.map_path.write_text("".join(f"h{n}.example.test two\n" for n in range(12)))
    off = {"version": "v2", "revision": 2, "delta": True, "default_shard": "one",
           "hosts": {f"h{n}.example.test": None for n in range(12)}}
    try:
        with pytest.raises(UnsafePlan, match="removes 12 of 12 hostnames"):
            router.apply(RouterUpdate.from_json({**off, "shards": SHARDS}))  # two still serves
        assert router.apply(RouterUpdate.from_json({**off, "shards": {"one": SHARDS["one"]}}))
        assert router.hosts() == {} and router.last_error is None
    finally:
        router.stop()

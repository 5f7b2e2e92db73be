"""`edgectl serve` as production runs it: cheroot with TLS on the agents' channel, a graceful
stop that drains, finishes requests in flight and hands back leases, and a rolling restart of
two replicas behind HAProxy under steady API load with no failed request."""
from __future__ import annotations

import dataclasses
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests
from cryptography.fernet import Fernet

from admin_app import create_app
from control.server import ControlServer
from control.wiring import Services
from edge.agent import EdgeAgent
from edge.errors import EdgeError
from edge.haproxy import server_status
from edge.node import EdgeNode
from edge.render import NodeLayout, render
from edge.state import DesiredState
from kit.procs import ManagedProcess, free_port, wait_for_port
from kit.settings import Settings, SettingsError, load_settings
from kit.x509 import LocalCA
from tests.conftest import wait_until

TOKEN = "test-token-0123456789"
EDGE_TOKEN = "edge-token-0123456789"


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, str]:
    ca = LocalCA()
    server, agent = ca.issue(["localhost", "127.0.0.1"]), ca.issue(["edge-1"])
    stranger = LocalCA().issue(["edge-2"])  # signed by another CA
    pems = {"ca": ca.pem, "cert": server[0], "key": server[1], "agent_cert": agent[0],
            "agent_key": agent[1], "stranger_cert": stranger[0], "stranger_key": stranger[1]}
    for name, pem in pems.items():
        (tmp_path / f"{name}.pem").write_text(pem)
    return {name: str(tmp_path / f"{name}.pem") for name in pems}


def test_agents_reach_a_tls_control_service_only_through_its_ca(
        settings: Settings, tls_files: dict[str, str], tmp_path: Path) -> None:
    services = Services.from_settings(settings)
    server = ControlServer(create_app(services), "127.0.0.1", 0, threads=4,
                           tls_cert=tls_files["cert"], tls_key=tls_files["key"])
    server.start()
    try:
        services.publisher.refresh()
        url = f"https://127.0.0.1:{server.port}"
        node = EdgeNode(tmp_path / "edge")
        state = EdgeAgent(node, url, EDGE_TOKEN, ca_bundle=tls_files["ca"]).fetch()
        assert state is not None and state.control_servers
        with pytest.raises(requests.exceptions.SSLError):  # the system's CAs do not know it
            EdgeAgent(node, url, EDGE_TOKEN).fetch()
        with pytest.raises(requests.exceptions.ConnectionError):  # no plain HTTP on it
            requests.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5)
    finally:
        server.stop()
        services.close()


def test_with_client_certificates_agents_need_one_from_the_ca_besides_the_token(
        settings: Settings, tls_files: dict[str, str], tmp_path: Path) -> None:
    settings = dataclasses.replace(settings, control_client_ca=tls_files["ca"])
    services = Services.from_settings(settings)
    server = ControlServer(create_app(services), "127.0.0.1", 0, threads=4,
                           tls_cert=tls_files["cert"], tls_key=tls_files["key"],
                           client_ca=tls_files["ca"])
    server.start()
    try:
        services.publisher.refresh()
        url = f"https://127.0.0.1:{server.port}"
        node = EdgeNode(tmp_path / "edge")
        agent = EdgeAgent(node, url, EDGE_TOKEN, ca_bundle=tls_files["ca"],
                          client_cert=(tls_files["agent_cert"], tls_files["agent_key"]))
        assert agent.fetch() is not None
        with pytest.raises(requests.HTTPError, match="403"):  # the token alone reads no key
            EdgeAgent(node, url, EDGE_TOKEN, ca_bundle=tls_files["ca"]).fetch()
        with pytest.raises(requests.exceptions.SSLError):  # another CA's certificate
            EdgeAgent(node, url, EDGE_TOKEN, ca_bundle=tls_files["ca"], client_cert=(
                tls_files["stranger_cert"], tls_files["stranger_key"])).fetch()
        # Browsers and the publisher API have no client certificate: they are still served.
        assert requests.get(f"{url}/healthz", verify=tls_files["ca"], timeout=5).ok
        assert requests.get(f"{url}/api/v1/domains", verify=tls_files["ca"], timeout=5,
                            params={"publication_id": "pub_1"},
                            headers={"Authorization": f"Bearer {TOKEN}"}).ok
    finally:
        server.stop()
        services.close()


def test_an_answer_goes_out_in_one_send_so_a_killed_replica_leaves_all_or_nothing(
        tls_files: dict[str, str]) -> None:
    """A replica killed between the head and the body of an answer left HAProxy with a head
    it had passed on and could not retry (the visitor read a truncated answer). The head now
    goes out in the same send as the body's start, so a kill leaves all of it or nothing
    (which HAProxy retries). Every send of the server's threads is watched on its way to the
    TLS socket."""
    sends: list[bytes] = []

    def watch(frame: Any, event: str, arg: object) -> None:
        if event == "call" and frame.f_code is socket.SocketIO.write.__code__:
            sends.append(bytes(frame.f_locals["b"]))

    def app(environ: dict[str, Any], start_response: Callable[..., object]) -> list[bytes]:
        path = environ["PATH_INFO"]
        if path == "/empty":
            start_response("204 No Content", [])
            return []
        if path == "/stream":  # no length: chunked, each piece in a send of its own
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"first", b"second"]
        body = b"<a href='https://platform.test/login'>moved</a>"
        start_response("302 Found", [("Location", "https://platform.test/login"),
                                     ("Content-Length", str(len(body)))])
        return [body]

    threading.setprofile(watch)  # the server's threads start with it
    try:
        server = ControlServer(app, "127.0.0.1", free_port(), threads=2,
                               tls_cert=tls_files["cert"], tls_key=tls_files["key"])
        server.start()
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]
    url = f"https://127.0.0.1:{server.port}"
    try:
        with requests.Session() as session:  # one connection: each send is this test's
            for path, status, pieces in (("/sso", 302, 1), ("/empty", 204, 1),
                                         ("/stream", 200, 3)):
                sends.clear()
                answer = session.get(url + path, allow_redirects=False, timeout=10,
                                     verify=tls_files["ca"])
                assert answer.status_code == status
                assert len(sends) == pieces, (path, sends)  # all sent: the answer was read
                head, _, body = sends[0].partition(b"\r\n\r\n")
                assert head.startswith(f"HTTP/1.1 {status} ".encode()), sends
                assert body == {"/sso": answer.content, "/empty": b"",
                                "/stream": b"5\r\nfirst\r\n"}[path], sends
            assert answer.text == "firstsecond"
    finally:
        server.stop(5)


def test_plain_http_to_another_host_is_refused_for_keys_and_cookies(tmp_path: Path) -> None:
    node = EdgeNode(tmp_path / "edge")
    with pytest.raises(EdgeError, match="plain HTTP to another host"):
        EdgeAgent(node, ["http://127.0.0.1:8000", "http://10.0.0.7:8000"], EDGE_TOKEN)
    EdgeAgent(node, "http://10.0.0.7:8000", EDGE_TOKEN, allow_insecure=True)
    for url in ("http://127.0.0.1:8000", "http://[::1]:8000", "http://localhost:8000",
                "https://control.example:8443"):
        EdgeAgent(node, url, EDGE_TOKEN)
    with pytest.raises(SettingsError, match="control_url.*plain HTTP"):
        load_settings(env={}, required=(), control_url="http://control.example:8000")
    with pytest.raises(SettingsError, match="sso_introspection_url.*plain HTTP"):
        load_settings(env={}, required=(), sso_platform_url="https://platform.example",
                      sso_platform_login_url="https://platform.example/login",
                      sso_introspection_url="http://platform.example/session")
    load_settings(env={}, required=(), control_url="http://control.example:8000",
                  allow_insecure_control=True)
    with pytest.raises(SettingsError, match="go together"):
        load_settings(env={}, required=(), control_tls_cert="/x/cert.pem")
    with pytest.raises(SettingsError, match="need control_tls_cert"):
        load_settings(env={}, required=(), control_client_ca="/x/ca.pem")


def test_the_edge_verifies_control_replicas_by_name_where_it_has_one(tmp_path: Path) -> None:
    layout = NodeLayout("127.0.0.1", 80, 443, tmp_path / "admin.sock", tmp_path / "d.pem",
                        control_ca="/etc/edge/control-ca.pem")
    state = DesiredState((), ("127.0.0.1:9001",), ("control.internal:8443", "10.0.0.2:8443"))
    config = render(state, layout, tmp_path)["haproxy.cfg"]
    assert ("server control1 control.internal:8443 check inter 2s fall 2 rise 1 ssl verify "
            "required ca-file /etc/edge/control-ca.pem sni str(control.internal) verifyhost "
            "control.internal") in config
    assert ("server control2 10.0.0.2:8443 check inter 2s fall 2 rise 1 ssl verify required "
            "ca-file /etc/edge/control-ca.pem\n") in config
    plain = render(state, dataclasses.replace(layout, control_ca=""), tmp_path)["haproxy.cfg"]
    assert "server control2 10.0.0.2:8443 check inter 2s fall 2 rise 1\n" in plain


def _replica_env(tmp_path: Path, port: int, worker_id: str,
                 drain: float = 1.5) -> dict[str, str]:
    return {"EDGE_API_TOKEN": TOKEN, "EDGE_EDGE_TOKEN": EDGE_TOKEN,
            "EDGE_ENCRYPTION_KEYS": _KEY, "EDGE_DATA_DIR": str(tmp_path / "data"),
            "EDGE_LISTEN_PORT": str(port), "EDGE_WORKER_ID": worker_id,
            "EDGE_DNS_SERVERS": "127.0.0.1", "EDGE_DNS_PORT": str(free_port()),
            "EDGE_DNS_TIMEOUT": "0.2", "EDGE_WORKER_INTERVAL": "0.5",
            "EDGE_DRAIN_SECONDS": str(drain), "EDGE_SHUTDOWN_SECONDS": "1",
            "EDGE_MAX_PENDING_DOMAINS": "0"}


_KEY = Fernet.generate_key().decode()


def _start(tmp_path: Path, name: str, port: int, drain: float = 1.5) -> ManagedProcess:
    process = ManagedProcess(name, [sys.executable, "-m", "edgectl", "serve"],
                             tmp_path / f"{name}.log",
                             env=_replica_env(tmp_path, port, name, drain))
    wait_for_port(port, process=process, timeout=60)
    return process


def _waiting_polls(url: str) -> float:
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("edge_long_polls_waiting "):
            return float(line.split()[1])
    raise AssertionError("/metrics has no edge_long_polls_waiting")


@pytest.mark.slow
def test_a_stop_drains_finishes_requests_in_flight_and_hands_back_leases(
        tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # 4 s of drain: the checks below all fall inside it however loaded the machine is.
    replica = _start(tmp_path, "w1", port, drain=4)
    try:
        api = {"Authorization": f"Bearer {TOKEN}"}
        assert requests.post(f"{url}/api/v1/domains", headers=api, timeout=10, json={
            "hostname": "blog.example.com", "publication_id": "pub_1"}).status_code == 201
        deadline = time.monotonic() + 30
        while not requests.get(f"{url}/api/v1/domains/blog.example.com", headers=api,
                               timeout=10).json().get("attempts"):
            assert time.monotonic() < deadline, replica.tail()
            time.sleep(0.2)  # the worker leased it and checked its DNS (which fails here)
        edge = {"Authorization": f"Bearer {EDGE_TOKEN}"}
        version = requests.get(f"{url}/api/v1/edge/state", headers=edge,
                               timeout=10).json()["version"]
        in_flight: list[tuple[int, float]] = []
        poll = threading.Thread(target=lambda: in_flight.append((requests.get(
            f"{url}/api/v1/edge/state", headers=edge, timeout=30,
            params={"have": version, "wait": 25}).status_code, time.monotonic())))
        poll.start()
        wait_until(lambda: _waiting_polls(url) == 1, 30, "the long poll to reach the server",
                   interval=0.05)
        stopped = time.monotonic()
        replica.popen.send_signal(signal.SIGTERM)
        wait_until(lambda: requests.get(f"{url}/healthz", timeout=5).status_code == 503, 10,
                   "/healthz to say the replica drains", interval=0.05)
        assert requests.get(f"{url}/healthz", timeout=5).json() == {"status": "draining"}
        assert requests.get(f"{url}/api/v1/domains/blog.example.com", headers=api,
                            timeout=5).ok, "still serving while draining"
        poll.join(10)
        assert in_flight and in_flight[0][0] == 304, "the long poll in flight was answered"
        # Answered by the drain, not by its 25 s wait running out (the bound is loose on
        # purpose: what matters is that the stop does not sit out the poll).
        assert in_flight[0][1] - stopped < 10, "when the drain began, not after 25 s"
        refused = requests.get(f"{url}/api/v1/edge/state", headers=edge, timeout=5,
                               params={"have": version, "wait": 25})
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert "stopping" in refused.json()["error"]
        assert requests.get(f"{url}/api/v1/edge/state", headers=edge, timeout=5,
                            params={"have": version}).status_code == 304, "no wait: served"
        assert replica.popen.wait(30) == 0, replica.tail()
        assert time.monotonic() - stopped < 15, "drain + shutdown, not the poll's 25 s"
    finally:
        replica.stop()
    settings = load_settings(env=_replica_env(tmp_path, port, "w1"))
    services = Services.from_settings(settings)
    try:
        domain = services.domains.find("blog.example.com")
        assert domain is not None and domain.get("lease_owner") is None, domain
    finally:
        services.close()


def _both_up(tmp_path: Path) -> bool:
    return server_status(tmp_path / "haproxy.sock", "control") == {"a": "UP", "b": "UP"}


@pytest.fixture
def two_replicas_behind_haproxy(tmp_path: Path) -> Iterator[tuple[str, list[int],
                                                                  list[ManagedProcess]]]:
    ports = [free_port(), free_port()]
    front = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(f"""global
    log stderr format short local0 notice
    stats socket {tmp_path}/haproxy.sock
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response
    # A loaded machine may take longer than the 200 ms interval to answer /healthz: a check
    # that times out must not take the one replica up while the other drains.
    timeout check 3s
frontend api
    bind 127.0.0.1:{front}
    default_backend control
backend control
    balance roundrobin
    option httpchk
    http-check send meth GET uri /healthz
    server a 127.0.0.1:{ports[0]} check inter 200ms fall 2 rise 1
    server b 127.0.0.1:{ports[1]} check inter 200ms fall 2 rise 1
""")
    subprocess.run(["haproxy", "-c", "-q", "-f", str(config)], check=True)
    replicas = [_start(tmp_path, "a", ports[0]), _start(tmp_path, "b", ports[1])]
    proxy = ManagedProcess("haproxy", ["haproxy", "-db", "-f", str(config)],
                           tmp_path / "haproxy.log")
    try:
        wait_for_port(front, process=proxy)
        wait_until(lambda: _both_up(tmp_path), 30, "both replicas checked up")
        yield f"http://127.0.0.1:{front}", ports, replicas
    finally:
        proxy.stop()
        for replica in replicas:
            replica.stop()


@pytest.mark.slow
def test_a_rolling_restart_under_api_load_fails_no_request(
        two_replicas_behind_haproxy: tuple[str, list[int], list[ManagedProcess]],
        tmp_path: Path) -> None:
    url, ports, replicas = two_replicas_behind_haproxy
    api = {"Authorization": f"Bearer {TOKEN}"}
    done = threading.Event()
    results: list[int | str] = []

    def load() -> None:
        session = requests.Session()
        n = 0
        while not done.is_set():
            n += 1
            try:
                if n % 4 == 0:  # writes too: a connect is not idempotent
                    response = session.post(f"{url}/api/v1/domains", headers=api, timeout=20,
                                            json={"hostname": f"d{n}.example.com",
                                                  "publication_id": "pub_1"})
                else:
                    response = session.get(f"{url}/api/v1/domains", headers=api, timeout=20,
                                           params={"publication_id": "pub_1"})
                results.append(response.status_code if response.ok
                               else f"{response.status_code} {response.text[:80]}")
            except requests.RequestException as exc:
                results.append(repr(exc))

    clients = [threading.Thread(target=load) for _ in range(2)]
    for client in clients:
        client.start()
    try:
        time.sleep(1.0)
        for n, name in enumerate(("a", "b")):  # one at a time, as a deploy does
            replicas[n].popen.send_signal(signal.SIGTERM)
            assert replicas[n].popen.wait(30) == 0, replicas[n].tail()
            replicas[n] = _start(tmp_path, name, ports[n])
            # HAProxy checks it up again before the next one goes, as a deploy waits.
            wait_until(lambda: _both_up(tmp_path), 30, f"{name} checked up again")
    finally:
        done.set()
        for client in clients:
            client.join(30)
    failed = [r for r in results if r not in (200, 201)]
    print(f"rolling restart: {len(results)} API requests, {len(failed)} failed")
    assert len(results) > 50 and failed == [], (len(results), failed[:5],
                                                (tmp_path / "haproxy.log").read_text()[-3000:])

"""Edge shards behind the SNI router, end to end in network namespaces (docs/shards.md): the
control service (`edgectl serve`, SQLite), one router node (`edgectl agent --role router`),
three shards of one or two edge nodes (`edgectl agent --shard NAME`, PROXY binds on), the app
and a client, each on a host address of its own. The shards are registered with
`edgectl shards add`; a few thousand domains, each with a certificate of its own, are seeded
through the product's write paths (bench/control_seed.py) and published by serve's
reconciliation at start, so each shard's feed and the router's map are the product's own.
Only addresses inside the namespaces the test creates are used."""
from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.asymmetric import ec

from bench.control_seed import publication, seed_one
from control.wiring import Services
from edge.haproxy import server_status, unix_command
from edge.shards import assign
from kit.procs import ManagedProcess
from kit.settings import load_settings
from kit.x509 import key_to_pem, self_signed
from tests.conftest import LOAD_PAUSE, stop_together, wait_until
from tests.netns import Network, current, enter, restore, wait_listening

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900),
              pytest.mark.xdist_group("shards-e2e")]  # one fleet, its tests in order

ROOT = Path(__file__).resolve().parent.parent
NET = "10.214.0"
SHARDS = {"s1": ["s1a", "s1b"], "s2": ["s2a", "s2b"], "s3": ["s3a"]}
NODES = [node for nodes in SHARDS.values() for node in nodes]
ROLES = ["control", "router", "app", "client", *NODES, "s4a"]
"""Whether this tree moves hostnames between shards (issue 29, item 4)."""
DOMAINS = 2400
ZONE = "e2e.test"
API_TOKEN, EDGE_TOKEN = "shards-e2e-api-token-0123456789", "shards-e2e-edge-token-0123456789"
PROXY_HTTPS, PROXY_HTTP = 8444, 8081


def hostname(n: int) -> str:
    return f"d{n:05d}.{ZONE}"


@dataclasses.dataclass
class Answer:
    status: int
    subject: str
    body: dict[str, Any]
    location: str


def tls_get(address: str, host: str, path: str = "/") -> Answer:
    """One GET over a new TLS connection to ``address``:443 with SNI ``host``; the
    certificate is read, not trusted (each is self-signed), and its subject returned."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    conn = http.client.HTTPSConnection(address, 443, timeout=10, context=context)
    conn.sock = context.wrap_socket(socket.create_connection((address, 443), timeout=10),
                                    server_hostname=host)
    try:
        der = conn.sock.getpeercert(binary_form=True)
        assert der is not None
        conn.request("GET", path, headers={"Host": host, "Connection": "close"})
        response = conn.getresponse()
        raw = response.read()
        body = json.loads(raw) if response.getheader("Content-Type", "").startswith(
            "application/json") else {}
        return Answer(response.status, x509.load_der_x509_certificate(der).subject
                      .rfc4514_string(), body, response.getheader("Location") or "")
    finally:
        conn.close()


class Fleet:
    def __init__(self, directory: Path, network: Network) -> None:
        self.directory = directory
        self.network = network
        self.processes: dict[str, ManagedProcess] = {}
        self.keys = Fernet.generate_key().decode()
        self.control = f"http://{network.address('control')}:8000"
        self.haproxy = subprocess.check_output(["which", "haproxy"], text=True).strip()
        self.hosts = [hostname(n) for n in range(DOMAINS)]
        self.shard_of = {host: assign(host, SHARDS) for host in self.hosts}
        self.redirected: set[str] = set()
        """Domains a test made redirect (no longer answered by the app)."""

    def serve_env(self) -> dict[str, str]:
        return {"EDGE_DATA_DIR": str(self.directory / "control"), "EDGE_API_TOKEN": API_TOKEN,
                "EDGE_EDGE_TOKEN": EDGE_TOKEN, "EDGE_ENCRYPTION_KEYS": self.keys,
                "EDGE_LISTEN_HOST": self.network.address("control"), "EDGE_LISTEN_PORT": "8000",
                "EDGE_EDGE_CNAME_TARGET": "edge.platform.test",
                "EDGE_EDGE_ADDRESSES": self.network.address("router"),
                "EDGE_APP_SERVERS": f"{self.network.address('app')}:9001",
                "EDGE_DNS_SERVERS": "127.0.0.1", "EDGE_DNS_PORT": "53",
                "EDGE_ACME_DIRECTORY_URL": "http://127.0.0.1:9/directory",
                "EDGE_RECHECK_SECONDS": str(10 * 86400), "EDGE_WORKER_INTERVAL": "0.2",
                "EDGE_DRAIN_SECONDS": "0", "EDGE_EDGE_WATCH_SECONDS": "2",
                "EDGE_SHARD_MOVE_GRACE_SECONDS": "2"}

    def agent_env(self, role: str) -> dict[str, str]:
        address = self.network.address(role)
        return {"EDGE_DATA_DIR": str(self.directory / role), "EDGE_EDGE_TOKEN": EDGE_TOKEN,
                "EDGE_EDGE_DIR": str(self.directory / role / "edge"),
                "EDGE_CONTROL_URL": self.control, "EDGE_ALLOW_INSECURE_CONTROL": "true",
                "EDGE_HAPROXY_BIN": self.haproxy, "EDGE_EDGE_BIND": address,
                "EDGE_EDGE_HTTPS_PORT": "443", "EDGE_EDGE_HTTP_PORT": "80",
                "EDGE_EDGE_PROXY_HTTPS_PORT": str(PROXY_HTTPS),
                "EDGE_EDGE_PROXY_HTTP_PORT": str(PROXY_HTTP),
                "EDGE_WORKER_INTERVAL": "0.2", "EDGE_EDGE_WATCH_SECONDS": "2"}

    def start(self, role: str, argv: list[str], env: dict[str, str], name: str = "") -> None:
        name = name or role
        self.processes[name] = ManagedProcess(
            name, ["ip", "netns", "exec", self.network.ns(role), *argv],
            self.directory / f"{name}.log", env={"PYTHONPATH": str(ROOT), **env})

    def edgectl(self, role: str, *args: str, env: dict[str, str], name: str = "") -> None:
        self.start(role, [sys.executable, "-m", "edgectl", *args], env, name)

    def operator(self, *args: str) -> None:
        """`edgectl ARGS` as an operator on the client's host, against the control service."""
        done = subprocess.run(
            [sys.executable, "-m", "edgectl", *args], capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT), "EDGE_CONTROL_URL": self.control,
                 "EDGE_API_TOKEN": API_TOKEN, "EDGE_ALLOW_INSECURE_CONTROL": "true"})
        assert done.returncode == 0, done.stdout + done.stderr

    def start_serve(self) -> None:
        self.edgectl("control", "serve", env=self.serve_env())
        wait_listening(self.network.address("control"), 8000, self.processes["control"])

    def register_shards(self) -> None:
        """Through the operator's command, against a control service holding no domain yet."""
        self.start_serve()
        for shard, nodes in SHARDS.items():
            self.operator("shards", "add", shard, *[
                arg for node in nodes
                for arg in ("--node", f"{self.network.address(node)}:{PROXY_HTTPS}:{PROXY_HTTP}")])
        self.processes.pop("control").stop()

    def seed(self) -> None:
        """Each domain connected, its own certificate stored, made active; serve publishes
        every route at its start (bench/control_seed.py's fleet path)."""
        settings = load_settings(env=self.serve_env())
        settings = dataclasses.replace(settings, max_pending_domains=0)
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key_to_pem(key).encode()
        services = Services.from_settings(settings)
        try:
            for n, host in enumerate(self.hosts):
                cert, _ = self_signed(host, key, days=90)
                seed_one(services, host, publication(n), cert, key_pem)
        finally:
            services.close()

    def start_all(self) -> None:
        app = self.network.address("app")
        self.start("app", [sys.executable, "-c", "import time; from devtools.sample_app import "
                           f"SampleApp; SampleApp('app', 9001, {app!r}); time.sleep(3600)"], {})
        self.register_shards()
        self.seed()
        self.start_serve()
        for shard, nodes in SHARDS.items():
            for node in nodes:
                self.edgectl(node, "agent", "--shard", shard, "--node-id", node,
                             env=self.agent_env(node))
        self.edgectl("router", "agent", "--role", "router", "--node-id", "router",
                     env=self.agent_env("router"))

    def crt_list(self, node: str) -> set[str]:
        """The hostnames whose certificates the node's current release holds."""
        path = self.directory / node / "edge" / "current" / "crt-list"
        if not path.exists():
            return set()
        return {line.split()[-1] for line in path.read_text().splitlines() if line.strip()}

    def router_socket(self) -> Path:
        [found] = (self.directory / "router" / "edge").rglob("admin.sock")
        return found

    def kill(self, role: str) -> None:
        """SIGKILL every process on ``role``'s host (its agent and its HAProxy)."""
        for pid in self.network.pids(self.network.ns(role)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not self.network.pids(self.network.ns(role)), 15, f"{role} dead")

    def stop(self) -> None:
        """The agents at once, then the control service, then the app (a graceful stop takes
        a second or two; one by one they were most of the teardown); then the HAProxies the
        agents leave serving, by PID, all signalled before any is waited for."""
        servers = ("control", "app")
        stop_together([p for name, p in self.processes.items() if name not in servers])
        for name in servers:
            stop_together([self.processes.get(name)])
        roles = ["router", *NODES, "s4a"]
        for role in roles:
            for pid in self.network.pids(self.network.ns(role)):
                with contextlib.suppress(ProcessLookupError):  # a worker gone with its master
                    os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not any(self.network.pids(self.network.ns(role)) for role in roles),
                   15, "the nodes' HAProxies gone", lambda: {
                       role: self.network.pids(self.network.ns(role)) for role in roles},
                   interval=0.1)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    network = Network(NET, ROLES, "se")
    client = current()
    instance = None
    try:
        network.up()
        enter(network.ns("client"))  # this thread speaks from the client's address
        instance = Fleet(tmp_path_factory.mktemp("shards"), network)
        instance.start_all()
        for node in NODES:
            wanted = {h for h, shard in instance.shard_of.items() if node in SHARDS[shard]}
            wait_until(lambda: instance.crt_list(node) == wanted, 240, f"{node}'s certificates")
        wait_until(lambda: all(set(status.values()) == {"UP"} for status in (
            server_status(instance.router_socket(), f"tls_{shard}") for shard in SHARDS)),
            60, "the router's checks of every shard node")
        yield instance
    finally:
        try:
            if instance is not None:
                instance.stop()
        finally:  # the namespaces go whatever stopping met
            restore(client)
            left = network.down()
            assert left == [], f"processes left in the namespaces: {left}"


def check(fleet: Fleet, n: int) -> str | None:
    """What is wrong with domain ``n`` served through the router (None: nothing)."""
    host = fleet.hosts[n]
    try:
        answer = tls_get(fleet.network.address("router"), host)
    except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
        return f"{host}: {exc!r}"
    seen = (answer.status, answer.subject, answer.body.get("publication_id"),
            answer.body.get("forwarded_for"))
    wanted = (200, f"CN={host}", publication(n), fleet.network.address("client"))
    return None if seen == wanted else f"{host}: {seen} != {wanted}"


def test_every_domain_is_served_through_the_router_with_its_own_certificate(
        fleet: Fleet) -> None:
    firsts = {fleet.shard_of[host]: n for n, host in reversed(list(enumerate(fleet.hosts)))}
    for shard, n in firsts.items():  # the router's map is in once a host of each shard is
        wait_until(lambda: check(fleet, n) is None, 60, f"{fleet.hosts[n]} through the router")
    with ThreadPoolExecutor(6, initializer=enter,
                            initargs=(fleet.network.ns("client"),)) as pool:
        wrong = [found for found in pool.map(lambda n: check(fleet, n), range(DOMAINS)) if found]
    assert wrong == [], f"{len(wrong)} of {DOMAINS} domains not served right: {wrong[:5]}"


def test_each_shard_node_holds_only_its_shards_certificates(fleet: Fleet) -> None:
    sizes = {}
    for shard, nodes in SHARDS.items():
        wanted = {host for host, holder in fleet.shard_of.items() if holder == shard}
        sizes[shard] = len(wanted)
        for node in nodes:
            assert fleet.crt_list(node) == wanted, node
    assert sum(sizes.values()) == DOMAINS and min(sizes.values()) > DOMAINS / 5, sizes


def test_an_unknown_hostname_gets_the_default_shards_default_certificate(fleet: Fleet) -> None:
    """No shard is named ``default`` here: the router's default is the first, s1."""
    sessions = {shard: int(backend_stat(fleet, f"tls_{shard}", "stot")) for shard in SHARDS}
    answer = tls_get(fleet.network.address("router"), f"nowhere.{ZONE}")
    assert (answer.status, answer.subject) == (404, "CN=edge-default.invalid")
    assert {shard: int(backend_stat(fleet, f"tls_{shard}", "stot")) - before
            for shard, before in sessions.items()} == {"s1": 1, "s2": 0, "s3": 0}


def http_get(address: str, host: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(address, 80, timeout=10)
    try:
        conn.request("GET", "/p?q=1", headers={"Host": host})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("Location") or ""
    finally:
        conn.close()


def test_port_80_is_routed_by_host_to_each_shards_https_redirect(fleet: Fleet) -> None:
    router = fleet.network.address("router")
    for shard in SHARDS:
        host = next(h for h, holder in fleet.shard_of.items() if holder == shard)
        assert http_get(router, host) == (301, f"https://{host}/p?q=1")
    assert http_get(router, f"nowhere.{ZONE}")[0] == 404


def served_as(address: str, host: str) -> Answer | None:
    try:
        return tls_get(address, host)
    except (OSError, ssl.SSLError, http.client.HTTPException):
        return None


def test_the_router_and_every_shard_node_report_in_sync(fleet: Fleet) -> None:
    """`edgectl nodes`' answer: each shard node with its shard, the router apart from them."""
    def listed() -> dict[str, tuple[str | None, bool]]:
        nodes = requests.get(f"{fleet.control}/api/v1/edge/nodes", timeout=30, headers={
            "Authorization": f"Bearer {API_TOKEN}"}).json()["nodes"]
        return {node["node_id"]: (node.get("shard"), node["in_sync"]) for node in nodes}
    wanted = {node: (shard, True) for shard, nodes in SHARDS.items() for node in nodes}
    wait_until(lambda: listed() == {**wanted, "router": ("_router", True)}, 30,
               "every node's report", listed)


def pair(fleet: Fleet, same_shard: bool) -> tuple[str, str]:
    """Two domains of one publication (n and n + 997), on one shard or on two."""
    n = next(n for n in range(997) if (fleet.shard_of[fleet.hosts[n]]
                                       == fleet.shard_of[fleet.hosts[n + 997]]) == same_shard)
    return fleet.hosts[n], fleet.hosts[n + 997]


def redirect(fleet: Fleet, source: str, target: str, timeout: float = 30) -> None:
    """Through the publisher API: ``source`` redirects to ``target``; wait until the router
    and every node of ``source``'s shard answer with it."""
    answer = requests.patch(f"{fleet.control}/api/v1/domains/{source}", timeout=30,
                            headers={"Authorization": f"Bearer {API_TOKEN}"},
                            json={"redirect_to": target})
    assert answer.status_code == 200, answer.text
    fleet.redirected.add(source)

    def redirected(address: str) -> bool:
        served = served_as(address, source)
        return served is not None and served.location.startswith(f"https://{target}")
    for role in ["router", *SHARDS[fleet.shard_of[source]]]:
        wait_until(lambda: redirected(fleet.network.address(role)), timeout,
                   f"the change on {role}",
                   lambda: served_as(fleet.network.address(role), source))


def test_a_redirect_to_a_domain_on_another_shard_is_served(fleet: Fleet) -> None:
    redirect(fleet, *pair(fleet, same_shard=False), timeout=10)


def test_a_one_route_change_reaches_its_shards_nodes_and_the_router(fleet: Fleet) -> None:
    redirect(fleet, *pair(fleet, same_shard=True))

    # A domain made active now: its route is published through the outbox to its shard's
    # feed only, and the router's map sends its SNI there.
    new = next(f"new{n}.{ZONE}" for n in range(100) if assign(f"new{n}.{ZONE}", SHARDS) == "s2")
    key = ec.generate_private_key(ec.SECP256R1())
    services = Services.from_settings(load_settings(env=fleet.serve_env()))
    try:
        seed_one(services, new, "pub_new", self_signed(new, key, days=90)[0],
                 key_to_pem(key).encode(), publish=True)
    finally:
        services.close()
    for role in ["router", *SHARDS["s2"]]:
        wait_until(lambda: getattr(served_as(fleet.network.address(role), new), "subject", "")
                   == f"CN={new}", 30, f"{new} on {role}")
    through = tls_get(fleet.network.address("router"), new)
    assert (through.status, through.body["publication_id"]) == (200, "pub_new")
    for role in SHARDS["s1"] + SHARDS["s3"]:
        assert tls_get(fleet.network.address(role), new).subject == "CN=edge-default.invalid"


def test_a_shard_added_under_load_fails_no_request(fleet: Fleet) -> None:
    """Four visitors load a sample of every shard's hostnames through the router (each request
    on a new connection, never retried) while s4 is started and added: its share moves to it
    (published, switched in the router's map, dropped from the old shards) and no request
    fails."""
    shards = {**SHARDS, "s4": ["s4a"]}
    moved = {host for host in fleet.hosts if assign(host, shards) == "s4"}
    numbers = [n for n in range(0, DOMAINS, 7) if fleet.hosts[n] not in fleet.redirected]
    stop, lock = threading.Event(), threading.Lock()
    results: list[str | None] = []

    def load(k: int) -> None:
        enter(fleet.network.ns("client"))
        for i in range(k, 10**9, 4):
            if stop.is_set():
                return
            wrong = check(fleet, numbers[i % len(numbers)])
            with lock:
                results.append(wrong)
            stop.wait(LOAD_PAUSE)
    threads = [threading.Thread(target=load, args=(k,), daemon=True) for k in range(4)]
    for thread in threads:
        thread.start()
    try:
        fleet.edgectl("s4a", "agent", "--shard", "s4", "--node-id", "s4a",
                      env=fleet.agent_env("s4a"))
        fleet.operator("shards", "add", "s4", "--node",
                       f"{fleet.network.address('s4a')}:{PROXY_HTTPS}:{PROXY_HTTP}")
        wait_until(lambda: fleet.crt_list("s4a") == moved, 180, "s4's share on its node")
        router_map = fleet.directory / "router" / "edge" / "sni.map"
        wait_until(lambda: {parts[1] for parts in (line.split() for line in unix_command(
            fleet.router_socket(), f"show map {router_map}\n").splitlines())
            if parts[2:] == ["s4"]} == moved and all(
            fleet.crt_list(node).isdisjoint(moved) for node in NODES), 120,
            "the router's switch and the old shards' drop")
        before = len(results)
        wait_until(lambda: len(results) >= before + 100, 60, "load after the move")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    failed = [wrong for wrong in results if wrong]
    print(f"shard added under load: {len(moved)} hostnames moved, {len(results)} requests, "
          f"{len(failed)} failed")
    assert failed == [] and len(results) > 200, failed[:5]
    fleet.shard_of = {host: assign(host, shards) for host in fleet.hosts}


def backend_stat(fleet: Fleet, backend: str, column: str) -> str:
    """One column of the router's ``show stat`` for the BACKEND row of ``backend``."""
    rows = unix_command(fleet.router_socket(), "show stat\n").splitlines()
    header = rows[0].lstrip("# ").split(",")
    for row in rows[1:]:
        stat = dict(zip(header, row.split(",")))
        if stat.get("pxname") == backend and stat.get("svname") == "BACKEND":
            return stat[column]
    raise AssertionError(f"no backend {backend}")


def test_a_killed_shard_node_is_replaced_by_its_peer(fleet: Fleet) -> None:
    """Four visitors load shard s1 through the router, each request on a new connection and
    never retried; s1's first node is killed (SIGKILL of its agent and HAProxy). A request
    in flight on it when it dies is cut (docs/shards.md says so); every request that starts
    after is served by its peer: a refused connection is redispatched until the router's
    check takes the node out."""
    victim = SHARDS["s1"][0]
    numbers = [n for n, host in enumerate(fleet.hosts)
               if fleet.shard_of[host] == "s1" and host not in fleet.redirected][:60]
    stop, lock = threading.Event(), threading.Lock()
    results: list[tuple[float, float, str | None]] = []

    def load(k: int) -> None:
        enter(fleet.network.ns("client"))
        i = k
        while not stop.is_set():
            started = time.monotonic()
            wrong = check(fleet, numbers[i % len(numbers)])
            with lock:
                results.append((started, time.monotonic(), wrong))
            i += 4
    threads = [threading.Thread(target=load, args=(k,), daemon=True) for k in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(results) >= 100, 60, "load before the kill")
        killing = time.monotonic()
        fleet.kill(victim)
        killed = time.monotonic()
        wait_until(lambda: server_status(fleet.router_socket(), "tls_s1")["s11"].startswith(
            "DOWN"), 30, "the router's check to take the killed node out")
        down, before = time.monotonic(), len(results)
        wait_until(lambda: len(results) >= before + 200, 60, "load after the check")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    failed = [(started, wrong) for started, _, wrong in results if wrong]
    in_flight = [f for f in failed if f[0] < killed]
    after = [f for f in failed if f[0] >= killed]
    served_between = sum(1 for started, _, wrong in results
                         if killed <= started < down and not wrong)
    redispatched = int(backend_stat(fleet, "tls_s1", "wredis"))
    print(f"shard node killed: {len(results)} requests, {len(in_flight)} failed in flight "
          f"while it was killed ({killed - killing:.2f} s), {len(after)} failed after; "
          f"{served_between} served between the kill and the check taking it out "
          f"({down - killed:.2f} s), {redispatched} connections redispatched to the peer")
    assert after == [], after[:5]
    assert redispatched > 0, "the killed node was offered connections before its check failed"
    assert len(in_flight) <= len(threads), in_flight

"""The production topology of docs/production.md, in network namespaces: each process on a host
address of its own (2 control replicas, 2 edge nodes with their HAProxy, the short-link app,
the app server, dynalite, Pebble, the DNS server), joined by a bridge in a namespace of its own.
The product's processes start with the units' ExecStart and their example environment files
(the addresses, secrets and test timers put over them). Every channel that carries a secret is
TLS: the API, the agents' (with client certificates), HAProxy's to the replicas, the ACME CA's.
Plain HTTP stays where production has it on the private network (HAProxy to the app and the
short-link app) and to dynalite (AWS's DynamoDB endpoint is HTTPS).
A domain connected through the API is served by both nodes; with one replica's link down, the
edge fails no request. Only addresses inside the namespaces the test creates are used."""
from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests
from cryptography.fernet import Fernet

from devtools.probe import https_get
from kit.files import PUBLIC, SECRET, write_atomic
from kit.procs import ManagedProcess
from kit.x509 import LocalCA
from tests.conftest import LOAD_PAUSE, dynalite_command, stop_haproxy, stop_together, wait_until
from tests.netns import Network, current, enter, restore, run, wait_listening
from tests.test_deploy import INSTALLED, ROOT, SYSTEMD, environment_file, unit_values

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

NET = "10.213.0"
ROLES = ["dynalite", "dns", "pebble", "control1", "control2", "edge1", "edge2", "shortlinks",
         "app", "client"]
API_TOKEN, EDGE_TOKEN = "topology-api-token-0123456789", "topology-edge-token-0123456789"
HOST, HOST2 = "blog.topology.test", "news.topology.test"
def address(role: str) -> str:
    return f"{NET}.{10 + ROLES.index(role)}"


class Topology:
    def __init__(self, directory: Path, network: Network) -> None:
        self.directory = directory
        self.network = network
        self.processes: dict[str, ManagedProcess] = {}
        self.control_ca, self.agents_ca, self.pebble_ca = LocalCA(), LocalCA(), LocalCA()
        self.tls = directory / "tls"
        self.tls.mkdir()
        self.files = {"control-ca.crt": self.control_ca.pem, "agents-ca.crt": self.agents_ca.pem,
                      "pebble-ca.crt": self.pebble_ca.pem}
        for name, ca, names in (("control", self.control_ca, ["control", address("control1"),
                                                              address("control2")]),
                                ("pebble", self.pebble_ca, [address("pebble")]),
                                ("agent1", self.agents_ca, ["edge1"]),
                                ("agent2", self.agents_ca, ["edge2"])):
            cert, key = ca.issue(names)
            self.files[f"{name}.crt"], self.files[f"{name}.key"] = cert, key
        for name, text in self.files.items():
            write_atomic(self.tls / name, text, SECRET if name.endswith(".key") else PUBLIC)
        self.keys = Fernet.generate_key().decode()

    def start(self, role: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.processes[role] = ManagedProcess(
            role, ["ip", "netns", "exec", self.network.ns(role), *argv],
            self.directory / f"{role}.log", env={"PYTHONPATH": str(ROOT), **(env or {})})

    def start_unit(self, role: str, unit: str, overrides: dict[str, str]) -> None:
        """As systemd would: ExecStart (the installed edgectl here: this Python's), the unit's
        Environment=, then its EnvironmentFile (the example, with the test's values over it)."""
        path = SYSTEMD / unit
        [exec_start] = unit_values(path, "ExecStart")
        argv = exec_start.replace("%H", role).split()
        assert argv[0] == INSTALLED
        env = dict(value.split("=", 1) for value in unit_values(path, "Environment"))
        [env_file] = unit_values(path, "EnvironmentFile")
        env.update(environment_file(SYSTEMD / Path(env_file).name))
        env.update(overrides, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test")
        written = self.directory / f"{role}.env"
        write_atomic(written, "".join(f"{k}={v}\n" for k, v in env.items()), SECRET)
        self.start(role, [sys.executable, "-m", "edgectl", *argv[1:]], environment_file(written))

    def common(self, role: str) -> dict[str, str]:
        return {"EDGE_DATA_DIR": str(self.directory / role), "EDGE_API_TOKEN": API_TOKEN,
                "EDGE_EDGE_TOKEN": EDGE_TOKEN, "EDGE_ENCRYPTION_KEYS": self.keys,
                "EDGE_DYNAMODB_ENDPOINT_URL": f"http://{address('dynalite')}:8000"}

    def start_all(self) -> None:
        self.start("dynalite", [arg.replace("127.0.0.1", address("dynalite")) for arg in
                                dynalite_command(8000, self.directory / "dynalite")])
        self.start("dns", ["pebble-challtestsrv", "-dns01", f"{address('dns')}:53",
                           "-management", f"{address('dns')}:8055", "-http01", "", "-https01", "",
                           "-tlsalpn01", "", "-defaultIPv6", "", "-defaultIPv4",
                           address("edge1")])
        pebble = {"pebble": {
            "listenAddress": f"{address('pebble')}:14000",
            "managementListenAddress": f"{address('pebble')}:15000",
            "certificate": str(self.tls / "pebble.crt"), "privateKey": str(self.tls / "pebble.key"),
            "httpPort": 80, "tlsPort": 5001, "ocspResponderURL": "",
            "externalAccountBindingRequired": False}}
        write_atomic(self.directory / "pebble.json", json.dumps(pebble), PUBLIC)
        self.start("pebble", ["pebble", "-config", str(self.directory / "pebble.json"),
                              "-dnsserver", f"{address('dns')}:53"], {"PEBBLE_VA_NOSLEEP": "1"})
        self.start("app", [sys.executable, "-c", "import time; from devtools.sample_app import "
                           f"SampleApp; SampleApp('app', 9001, {address('app')!r}); "
                           "time.sleep(3600)"])
        wait_listening(address("dynalite"), 8000, self.processes["dynalite"])
        controls = ",".join(f"{address(r)}:8443" for r in ("control1", "control2"))
        for role in ("control1", "control2"):
            self.start_unit(role, "edgectl-serve.service", {
                **self.common(role), "EDGE_LISTEN_HOST": address(role),
                "EDGE_WORKER_ID": role, "EDGE_CONTROL_SERVERS": controls,
                "EDGE_CONTROL_TLS_CERT": str(self.tls / "control.crt"),
                "EDGE_CONTROL_TLS_KEY": str(self.tls / "control.key"),
                "EDGE_CONTROL_CLIENT_CA": str(self.tls / "agents-ca.crt"),
                "EDGE_PLATFORM_DOMAINS": "platform.test",
                "EDGE_EDGE_CNAME_TARGET": "edge.platform.test",
                "EDGE_EDGE_ADDRESSES": f"{address('edge1')},{address('edge2')}",
                "EDGE_APP_SERVERS": f"{address('app')}:9001", "EDGE_SHORT_DOMAINS": "go.test",
                "EDGE_SHORTLINK_SERVERS": f"{address('shortlinks')}:8100",
                "EDGE_ACME_DIRECTORY_URL": f"https://{address('pebble')}:14000/dir",
                "EDGE_ACME_CA_BUNDLE": str(self.tls / "pebble-ca.crt"),
                "EDGE_DNS_SERVERS": address("dns"), "EDGE_DNS_PORT": "53",
                "EDGE_WORKER_INTERVAL": "0.2", "EDGE_RETRY_BASE_SECONDS": "0.5",
                "EDGE_RETRY_MAX_SECONDS": "3", "EDGE_DRAIN_SECONDS": "0.5",
                "EDGE_EDGE_WATCH_SECONDS": "2"})
        for n, role in enumerate(("edge1", "edge2"), start=1):
            self.start_unit(role, "edgectl-agent.service", {
                **self.common(role), "EDGE_EDGE_DIR": str(self.directory / role),
                "EDGE_CONTROL_URL": ",".join(f"https://{address(r)}:8443"
                                             for r in ("control1", "control2")),
                "EDGE_CONTROL_CA_BUNDLE": str(self.tls / "control-ca.crt"),
                "EDGE_CONTROL_CLIENT_CERT": str(self.tls / f"agent{n}.crt"),
                "EDGE_CONTROL_CLIENT_KEY": str(self.tls / f"agent{n}.key"),
                "EDGE_HAPROXY_BIN": subprocess.check_output(["which", "haproxy"], text=True)
                .strip(), "EDGE_WORKER_INTERVAL": "0.2", "EDGE_EDGE_WATCH_SECONDS": "2"})
        self.start_unit("shortlinks", "edgectl-shortlinks.service", {
            **self.common("shortlinks"), "EDGE_LISTEN_HOST": address("shortlinks")})

    def stop(self) -> None:
        """The clients of the control replicas, then the replicas, then what they use: each
        tier at once (a graceful stop takes a second or two; one by one they were most of the
        teardown), then both HAProxies, which outlive their agents (KillMode=process)."""
        tiers = [("shortlinks", "edge1", "edge2"), ("control1", "control2")]
        tiers.append(tuple(role for role in self.processes if not any(role in t for t in tiers)))
        for tier in tiers:
            stop_together([self.processes.get(role) for role in tier])
        stop_haproxy([self.directory / role for role in ("edge1", "edge2")])


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    network = Network(NET, ROLES, "tp")
    client = current()
    topology = None
    try:
        network.up()
        enter(network.ns("client"))  # this thread speaks from the client's address
        topology = Topology(tmp_path, network)
        topology.start_all()
        yield topology
    finally:
        if topology is not None:
            topology.stop()
        restore(client)
        left = network.down()
        assert left == [], f"processes left in the namespaces: {left}"


def served(node: str, host: str, roots: str) -> bool:
    try:
        return https_get(443, host, "/", cadata=roots, address=address(node)).status == 200
    except (OSError, ssl.SSLError, http.client.HTTPException):
        return False


def connect(replica: str, host: str, ca: str) -> None:
    """Through the publisher API of ``replica``, then the records it asks for, in the DNS."""
    answer = requests.post(f"https://{address(replica)}:8443/api/v1/domains", verify=ca,
                           timeout=30, headers={"Authorization": f"Bearer {API_TOKEN}"},
                           json={"hostname": host, "publication_id": "pub_1"})
    assert answer.status_code in (200, 201), answer.text
    for record in answer.json()["dns_records"]:
        if record["type"] == "TXT":
            path, body = "set-txt", {"value": record["value"]}
        else:
            assert record["type"] == "CNAME", record
            path, body = "set-cname", {"target": record["value"].rstrip(".") + "."}
        requests.post(f"http://{address('dns')}:8055/{path}", timeout=10, json={
            "host": record["name"].rstrip(".") + ".", **body}).raise_for_status()


def test_a_domain_is_served_by_both_nodes_and_a_replica_cut_off_fails_no_request(
        topology: Topology) -> None:
    ca = str(topology.tls / "control-ca.crt")
    for role in ("control1", "control2"):
        wait_listening(address(role), 8443, topology.processes[role])
    wait_listening(address("shortlinks"), 8100, topology.processes["shortlinks"])
    connect("control1", HOST, ca)
    roots = requests.get(f"https://{address('pebble')}:15000/roots/0", timeout=10,
                         verify=str(topology.tls / "pebble-ca.crt")).text
    for node in ("edge1", "edge2"):
        wait_until(lambda: served(node, HOST, roots), 180, f"{HOST} served by {node}")

    stop, lock = threading.Event(), threading.Lock()
    ok, failed = [0], []

    def load(node: str) -> None:
        enter(topology.network.ns("client"))
        while not stop.is_set():
            answered = served(node, HOST, roots)
            with lock:
                if answered:
                    ok[0] += 1
                else:
                    failed.append((node, time.monotonic()))
            stop.wait(LOAD_PAUSE)
    threads = [threading.Thread(target=load, args=(node,), daemon=True)
               for node in ("edge1", "edge2") for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(2)
        run("ip", "-n", topology.network.ns("control1"), "link", "set", "eth0", "down")
        # The fleet goes on without it: a domain connected through the other replica is
        # issued (HAProxy sends Pebble's challenge to the replica left) and reaches both nodes
        # (their agents move to it).
        connect("control2", HOST2, ca)
        for node in ("edge1", "edge2"):
            wait_until(lambda: served(node, HOST2, roots), 180, f"{HOST2} served by {node}")
        time.sleep(2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    print(f"topology: {ok[0]} requests served with a replica cut off, {len(failed)} failed")
    assert failed == [] and ok[0] > 50

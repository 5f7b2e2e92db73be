"""A live v0.1.0 fleet upgraded to this release one process at a time, under load
(docs/upgrades.md): two control replicas on dynalite, two edge nodes (agent and HAProxy), the
short-link app and an app server, with domains issued by Pebble and short links. v0.1.0 runs
from its own tree (tests/v010.py), this release from this one.

The order is the documented one: the replicas one at a time, then the agents one at a time,
then `edgectl migrate --apply`. Visitors' requests to every active host and link, on every node
in rotation, must all succeed; the API must answer the same domains, links and certificates
afterwards; each node may reload (or start) HAProxy at most once; and the v0.1.0 agents must
keep serving what the new replicas publish until their own turn. The short-link app stays on
v0.1.0 throughout (and so meets the migrated store): there is one here, and restarting the only
one is an outage whatever the release."""
from __future__ import annotations

import dataclasses
import http.client
import os
import random
import signal
import ssl
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from cryptography.fernet import Fernet

from devtools.pebble import PebbleStack
from devtools.probe import https_get
from devtools.sample_app import SampleApp
from kit.procs import ManagedProcess, free_port, wait_for_port
from tests.conftest import stop_haproxy, stop_together, wait_until
from tests.supervised_dynalite import SupervisedDynalite
from tests.v010 import ROOT, current_command, v010_command, v010_source

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

API_TOKEN = "upgrade-api-token-0123456789"
EDGE_TOKEN = "upgrade-edge-token-0123456789"
OLD, NEW = "v0.1.0", "new"
LOADED = "Loading success."
"""What HAProxy's master logs at each start and each reload (not on a hot change through its
runtime API); both releases' agents send its log to the node's ``haproxy.log``."""
MAX_REQUESTS = 20_000
"""Per node: the load's bound in count (its bound in time is the test's)."""


@dataclasses.dataclass(frozen=True)
class Target:
    """A request a visitor makes, and the answer that counts as served."""
    host: str
    path: str
    status: int
    location: str | None = None


class Fleet:
    """Every process of the product on loopback, each started from the release it runs."""

    def __init__(self, directory: Path, pebble: PebbleStack, store: str, app: SampleApp,
                 edge_http_port: int) -> None:
        self.directory = directory
        uid = uuid.uuid4().hex[:6]
        self.blog, self.news, self.post, self.short = (
            f"blog.u{uid}.test", f"news.u{uid}.test", f"post.u{uid}.test", f"go.u{uid}.test")
        self.ports = [free_port(), free_port()]
        self.urls = [f"http://127.0.0.1:{port}" for port in self.ports]
        self.https_ports = [free_port(), free_port()]
        self.links_port = free_port()
        common = {
            "EDGE_API_TOKEN": API_TOKEN, "EDGE_EDGE_TOKEN": EDGE_TOKEN,
            "EDGE_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "EDGE_STORAGE_BACKEND": "dynamodb", "EDGE_DYNAMODB_ENDPOINT_URL": store,
            "EDGE_DYNAMODB_TABLE_PREFIX": f"u{uid}_",
            "EDGE_CONTROL_SERVERS": ",".join(f"127.0.0.1:{port}" for port in self.ports),
            "EDGE_CONTROL_URL": ",".join(self.urls),
            "EDGE_PLATFORM_DOMAINS": "platform.test",
            "EDGE_EDGE_CNAME_TARGET": "edge.platform.test",
            "EDGE_EDGE_ADDRESSES": "127.0.0.1", "EDGE_DNS_SERVERS": "127.0.0.1",
            "EDGE_DNS_PORT": str(pebble.dns_port), "EDGE_ACME_DIRECTORY_URL": pebble.directory_url,
            "EDGE_ACME_CA_BUNDLE": str(pebble.listener_ca), "EDGE_APP_SERVERS": app.address,
            "EDGE_SHORT_DOMAINS": self.short,
            "EDGE_SHORTLINK_SERVERS": f"127.0.0.1:{self.links_port}",
            "EDGE_SHORTLINKS_PORT": str(self.links_port),
            "EDGE_WORKER_INTERVAL": "0.2", "EDGE_RETRY_BASE_SECONDS": "0.5",
            "EDGE_RETRY_MAX_SECONDS": "3", "EDGE_MAX_PENDING_DOMAINS": "0",
            "EDGE_EDGE_WATCH_SECONDS": "2", "EDGE_DRAIN_SECONDS": "1",
            "EDGE_SHUTDOWN_SECONDS": "10",
            "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
        self.common = common
        self.replica_env = [{**common, "EDGE_LISTEN_PORT": str(port), "EDGE_WORKER_ID": f"r{n}",
                             "EDGE_DATA_DIR": str(directory / f"replica{n}")}
                            for n, port in enumerate(self.ports)]
        self.agent_env = [{**common, "EDGE_EDGE_DIR": str(self.edge_dir(n)),
                           "EDGE_DATA_DIR": str(directory / f"agent{n}"),
                           "EDGE_EDGE_HTTP_PORT": str(http_port),
                           "EDGE_EDGE_HTTPS_PORT": str(self.https_ports[n]),
                           "EDGE_EDGE_STATS_PORT": str(free_port())}
                          for n, http_port in enumerate([edge_http_port, free_port()])]
        self.replicas: list[ManagedProcess | None] = [None, None]
        self.agents: list[ManagedProcess | None] = [None, None]
        self.others: list[ManagedProcess] = []

    def edge_dir(self, n: int) -> Path:
        return self.directory / f"edge{n}"

    def _start(self, name: str, release: str, args: list[str],
               env: dict[str, str]) -> ManagedProcess:
        argv, imports, cwd = (v010_command if release == OLD else current_command)(*args)
        return ManagedProcess(f"{name} {release}", argv,
                              self.directory / f"{name}-{release}.log",
                              env={**env, **imports}, cwd=cwd)

    def start_replica(self, n: int, release: str) -> None:
        replica = self.replicas[n] = self._start(f"replica{n}", release, ["serve"],
                                                 self.replica_env[n])
        wait_for_port(self.ports[n], process=replica, timeout=120)
        wait_until(lambda: requests.get(f"{self.urls[n]}/healthz", timeout=5).ok, 30,
                   f"replica{n} healthy", why=replica.tail)

    def start_agent(self, n: int, release: str) -> None:
        self.agents[n] = self._start(f"agent{n}", release, ["agent", "--node-id", f"n{n}"],
                                     self.agent_env[n])

    def start_shortlinks(self) -> None:
        links = self._start("shortlinks", OLD, ["shortlinks", "--workers", "1"], self.common)
        self.others.append(links)
        wait_for_port(self.links_port, process=links, timeout=60)

    def api(self, method: str, path: str, replica: int | None = None, token: str = API_TOKEN,
            **kwargs: Any) -> requests.Response:
        """Through a random live replica (as the internal load balancer would), or the one
        named; a replica that is restarting is skipped."""
        for _ in range(50):
            live = [n for n, p in enumerate(self.replicas) if p is not None and p.poll() is None]
            n = replica if replica is not None else random.choice(live)
            try:
                response = requests.request(method, f"{self.urls[n]}{path}", timeout=30,
                                            headers={"Authorization": f"Bearer {token}"},
                                            **kwargs)
                if response.status_code != 503:  # 503: draining
                    return response
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"no replica answered {method} {path}")

    def starts(self, n: int) -> int:
        """HAProxy starts and reloads on node ``n`` so far, whichever agent asked."""
        log = self.edge_dir(n) / "haproxy.log"
        return log.read_text(errors="replace").count(LOADED) if log.exists() else 0

    def nodes(self) -> dict[str, Any]:
        return self.api("GET", "/api/v1/edge/nodes").json()  # type: ignore[no-any-return]

    def stop(self) -> None:
        """The agents, then the rest, each group at once: a graceful stop takes a second or
        two (a replica's drain, a HAProxy's exit), and one after the other they were most of
        the teardown."""
        stop_together(self.agents)
        stop_together([*self.replicas, *self.others])
        stop_haproxy([self.edge_dir(n) for n in range(2)])  # left serving by an agent


def stopped(process: ManagedProcess | None) -> None:
    """A graceful stop, as systemd's: SIGTERM, then it must exit by itself, and cleanly."""
    assert process is not None
    process.popen.send_signal(signal.SIGTERM)
    assert process.popen.wait(30) == 0, process.tail()
    process.stop()


def problem(port: int, target: Target, cafile: str) -> str | None:
    """What went wrong with one visitor's request, or None."""
    try:
        probe = https_get(port, target.host, target.path, cafile=cafile)
    except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
        return repr(exc)
    if probe.status != target.status or probe.headers.get("location") != target.location:
        return f"{probe.status} {probe.headers.get('location')}"
    return None


def by_python(port: int, target: Target, cafile: str) -> bool:
    """Answered by the short-link app (it tags each answer), not from HAProxy's map."""
    probe = https_get(port, target.host, target.path, cafile=cafile)
    assert (probe.status, probe.headers.get("location")) == (target.status, target.location)
    return "x-request-id" in probe.headers


def on_iphone(port: int, target: Target, cafile: str) -> str | None:
    """Where a device link sends an iPhone."""
    return https_get(port, target.host, target.path, cafile=cafile, headers={
        "User-Agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)"}
                     ).headers.get("location")


class Load:
    """Visitors on every node in rotation: one thread per node going round the targets.

    A node is taken out of rotation as an operator takes it out of the load balancer's pool:
    no new request is sent to it, and the one in flight finishes first."""

    def __init__(self, ports: list[int], targets: list[Target], cafile: str) -> None:
        self.ports, self.targets, self.cafile = ports, list(targets), cafile
        self.rotation = [threading.Event() for _ in ports]
        self.busy = [threading.Lock() for _ in ports]
        self.served = [0 for _ in ports]
        self.failed: list[tuple[int, Target, str]] = []
        self.done = threading.Event()
        for event in self.rotation:
            event.set()
        self.threads = [threading.Thread(target=self._visit, args=(n,), daemon=True)
                        for n in range(len(ports))]
        for thread in self.threads:
            thread.start()

    def _visit(self, n: int) -> None:
        for count in range(MAX_REQUESTS):
            if self.done.is_set():
                return
            with self.busy[n]:
                if self.rotation[n].is_set():
                    target = self.targets[count % len(self.targets)]
                    failure = problem(self.ports[n], target, self.cafile)
                    if failure is None:
                        self.served[n] += 1
                    else:
                        self.failed.append((n, target, failure))
            self.done.wait(0.03)

    def out_of_rotation(self, n: int) -> None:
        self.rotation[n].clear()
        with self.busy[n]:
            pass  # its request in flight has finished

    def into_rotation(self, n: int) -> None:
        self.rotation[n].set()

    def add(self, *targets: Target) -> None:
        self.targets = [*self.targets, *targets]

    def stop(self) -> None:
        self.done.set()
        for thread in self.threads:
            thread.join(30)


def connect(fleet: Fleet, pebble: PebbleStack, hostname: str,
            replica: int | None = None) -> None:
    """Through the publisher API, then the records it asks for, in challtestsrv."""
    answer = fleet.api("POST", "/api/v1/domains", replica=replica,
                       json={"hostname": hostname, "publication_id": "pub_1"})
    assert answer.status_code == 201, answer.text
    for record in answer.json()["dns_records"]:
        if record["type"] == "TXT":
            pebble.set_txt(record["name"], record["value"])
        elif record["type"] == "CNAME":
            pebble.set_cname(record["name"], record["value"])


def link(fleet: Fleet, slug: str, target: str, replica: int | None = None,
         **fields: Any) -> Target:
    answer = fleet.api("POST", "/api/v1/links", replica=replica, json={
        "domain": fleet.short, "owner": "pub_1", "slug": slug, "target": target, **fields})
    assert answer.status_code == 201, answer.text
    return Target(fleet.short, f"/{slug}", 302, target)


def served_everywhere(fleet: Fleet, nodes: list[int], targets: list[Target], cafile: str,
                      timeout: float = 180) -> None:
    for n in nodes:
        agent = fleet.agents[n]
        assert agent is not None
        for target in targets:
            wait_until(lambda: problem(fleet.https_ports[n], target, cafile) is None, timeout,
                       f"{target} on node {n}", why=agent.tail)


def in_sync(fleet: Fleet) -> bool:
    listing = fleet.nodes()
    return len(listing["nodes"]) == 2 and all(
        node.get("in_sync", node["applied_version"] == listing["desired_version"])
        for node in listing["nodes"])


VOLATILE = {"visits", "bots", "updated_at", "attempts", "next_attempt_at", "dns_seen"}
"""What goes on changing by itself: visits counted, rechecks."""


def answers(fleet: Fleet) -> dict[str, dict[str, dict[str, Any]]]:
    """Every domain, link and certificate as the API answers them (certificates as the edge
    API hands them to agents, by the routes of the edge state)."""
    domains = fleet.api("GET", "/api/v1/domains",
                        params={"publication_id": "pub_1", "limit": 100}).json()["domains"]
    links = fleet.api("GET", "/api/v1/links", params={"owner": "pub_1", "limit": 100}).json()
    routes = fleet.api("GET", "/api/v1/edge/state", token=EDGE_TOKEN).json()["routes"]
    certs = {}
    for route in routes:
        cert = fleet.api("GET", f"/api/v1/edge/certs/{route['hostname']}", token=EDGE_TOKEN)
        certs[route["hostname"]] = {**route, **cert.json()}
    return {"domains": {d["hostname"]: d for d in domains},
            "links": {f"{k['domain']}/{k['slug']}": k for k in links["links"]},
            "certificates": certs}


def lost(before: dict[str, dict[str, dict[str, Any]]],
         after: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """What the API answered before and no longer does the same way (new fields are fine)."""
    changes = []
    for kind, items in before.items():
        for key, item in items.items():
            now = after[kind].get(key)
            if now is None:
                changes.append(f"{kind} {key} is gone")
                continue
            changes += [f"{kind} {key}: {field} {value!r} -> {now.get(field)!r}"
                        for field, value in item.items()
                        if field not in VOLATILE and now.get(field) != value]
            if "visits" in item and (now.get("visits") or 0) < (item["visits"] or 0):
                changes.append(f"{kind} {key}: visits went down")
    return changes


@pytest.fixture
def fleet(tmp_path: Path, pebble: PebbleStack, edge_http_port: int) -> Iterator[Fleet]:
    """A v0.1.0 fleet with two domains active (one of them the short domain) and two links."""
    app = SampleApp("app", 0)
    store = SupervisedDynalite(tmp_path)
    fleet = Fleet(tmp_path, pebble, store.url, app, edge_http_port)
    try:
        for n in range(2):
            fleet.start_replica(n, OLD)
        fleet.start_shortlinks()
        for n in range(2):
            fleet.start_agent(n, OLD)
        yield fleet
    finally:
        fleet.stop()
        store.stop()
        app.stop()


def migrate(fleet: Fleet, action: str) -> str:
    argv, imports, cwd = current_command("migrate", action)
    done = subprocess.run(argv, env={**os.environ, **fleet.replica_env[0], **imports}, cwd=cwd,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_v010_fleet_upgraded_one_process_at_a_time_fails_no_request_and_loses_nothing(
        fleet: Fleet, pebble: PebbleStack) -> None:
    cafile = str(pebble.root_path)
    connect(fleet, pebble, fleet.blog)
    connect(fleet, pebble, fleet.short)
    targets = [Target(fleet.blog, "/", 200),
               link(fleet, "plain", "https://example.com/plain"),  # answered from the map
               link(fleet, "limited", "https://example.com/limited", max_visits=100_000)]
    served_everywhere(fleet, [0, 1], targets, cafile)
    assert not by_python(fleet.https_ports[0], targets[1], cafile)
    assert by_python(fleet.https_ports[0], targets[2], cafile)
    wait_until(lambda: in_sync(fleet), 60, "both v0.1.0 agents in sync")
    before = answers(fleet)
    starts = [fleet.starts(n) for n in range(2)]
    load = Load(fleet.https_ports, targets, cafile)
    try:
        time.sleep(2)
        # The replicas, one at a time. The agents move to the replica left (v0.1.0) while the
        # first restarts, so what the new one writes reaches them through the old one: a
        # link, a device link and a domain, issued by whichever replica's worker takes it.
        stopped(fleet.replicas[0])
        fleet.start_replica(0, NEW)
        later = [link(fleet, "later", "https://example.com/later", replica=0),
                 link(fleet, "phone", "https://example.com/desk", replica=0,
                      device_targets={"ios": "https://example.com/ios"}),
                 Target(fleet.news, "/", 200)]
        connect(fleet, pebble, fleet.news, replica=0)
        served_everywhere(fleet, [0, 1], later, cafile)
        load.add(*later)
        stopped(fleet.replicas[1])
        fleet.start_replica(1, NEW)
        # Now through the new replicas alone.
        last = link(fleet, "last", "https://example.com/last")
        served_everywhere(fleet, [0, 1], [last], cafile, timeout=60)
        load.add(last)
        wait_until(lambda: in_sync(fleet), 60, "both v0.1.0 agents in sync with new replicas")
        assert [fleet.starts(n) for n in range(2)] == starts, "a reload for the new replicas"
        # A device link goes by the visitor's device on a v0.1.0 node (its map holds it: the
        # new replicas serve v0.1.0 agents every map value format they read).
        for n in range(2):
            assert on_iphone(fleet.https_ports[n], later[1], cafile) == "https://example.com/ios"

        for n in range(2):  # then the agents, one at a time
            # v0.1.0's agent stops its HAProxy on SIGTERM (this release's leaves it serving):
            # the operator takes the node out of the visitors' load balancer first.
            load.out_of_rotation(n)
            stopped(fleet.agents[n])
            assert problem(fleet.https_ports[n], targets[0], cafile) is not None
            fleet.start_agent(n, NEW)
            served_everywhere(fleet, [n], load.targets, cafile, timeout=60)
            wait_until(lambda: in_sync(fleet), 60, f"node {n} upgraded and in sync")
            assert not by_python(fleet.https_ports[n], later[1], cafile), \
                "an upgraded node answers device links from its map"
            assert on_iphone(fleet.https_ports[n], later[1], cafile) == "https://example.com/ios"
            load.into_rotation(n)
            if n == 0:  # the other node, still v0.1.0, takes a change as well
                mid = link(fleet, "mid", "https://example.com/mid")
                served_everywhere(fleet, [0, 1], [mid], cafile, timeout=60)
                load.add(mid)

        plan = migrate(fleet, "--plan")
        assert "store schema 0; this release knows 6" in plan and "6 pending" in plan, plan
        assert migrate(fleet, "--apply").strip().endswith("store schema 6")
        assert "0 pending" in migrate(fleet, "--plan")
        connect(fleet, pebble, fleet.post)  # certificates are stored in the migrated form
        served_everywhere(fleet, [0, 1], [Target(fleet.post, "/", 200)], cafile)
        time.sleep(2)  # visitors after the migrations too
    finally:
        load.stop()
    after = answers(fleet)
    upgraded = [fleet.starts(n) - starts[n] for n in range(2)]
    print(f"rolling upgrade: {load.served} requests served per node, {len(load.failed)} "
          f"failed; HAProxy starts or reloads per node {upgraded}")
    assert load.failed == [], load.failed[:5]
    assert min(load.served) > 100, load.served
    assert lost(before, after) == []
    assert set(after["certificates"]) == {fleet.blog, fleet.short, fleet.news, fleet.post}
    # The new agent starts HAProxy from the node's files (one start); where this release's
    # HAProxy configuration differs from v0.1.0's, its first apply reloads it once as well.
    template = Path("haproxy_templates/haproxy.cfg.j2")
    changed = (v010_source() / template).read_text() != (ROOT / template).read_text()
    assert max(upgraded) <= 1 + changed, upgraded
    for process in [*fleet.replicas, *fleet.agents]:
        assert process is not None
        assert "Traceback" not in process.output(), process.tail(40)

"""SIGKILL the control service at random moments while domains are connected, activated and
removed: nothing is lost, no step is repeated, every domain ends active with one certificate
and then removed, with every webhook received by a real receiver under one stable id each and
the removed short domains' links disabled. tests/test_outbox_crashes.py kills a process before
every drain step deterministically."""
from __future__ import annotations

import collections
import random
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import requests
from cryptography.fernet import Fernet

from control.wiring import Services
from devtools.pebble import PebbleStack
from domains.service import ACTIVE
from kit.procs import ManagedProcess, free_port, wait_for_port
from kit.settings import load_settings
from tests.conftest import wait_until
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.slow

API = "api-token-0123456789"
AUTH = {"Authorization": f"Bearer {API}"}
WEBHOOKS = {"domain.verified", "certificate.issued", "domain.active", "domain.removed"}


class Control:
    """The control service as a process that can be killed (SIGKILL) at any moment."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self._env, self._port, self._log = env, port, log
        self.kills = 0
        self._lock = threading.Lock()
        self.process = self._start()

    def _start(self) -> ManagedProcess:
        serve = ManagedProcess("control", [sys.executable, "-m", "edgectl", "serve"],
                               self._log, env=self._env)
        wait_for_port(self._port, process=serve)
        return serve

    def kill(self) -> None:
        with self._lock:
            if self.process.popen.poll() is None:
                self.process.popen.kill()  # SIGKILL: no cleanup of any kind
                self.process.popen.wait()  # dead now, so the next call restarts it
                self.kills += 1

    def restart_if_dead(self) -> None:
        with self._lock:
            if self.process.popen.poll() is None:
                return
            self.process.popen.wait()
            self.process.stop()
            self.process = self._start()

    def call(self, request: Callable[[], requests.Response],
             kill_after: float) -> requests.Response:
        """``request``, with the service killed ``kill_after`` seconds into it; asked again
        (as a client does) until it gets an answer."""
        timer = threading.Timer(kill_after, self.kill)
        timer.start()
        try:
            for _ in range(10):
                try:
                    return request()
                # Killed before the answer, or while its body was on the way.
                except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
                    time.sleep(0.05)
                    timer.join()
                    self.restart_if_dead()
            raise AssertionError("no answer after 10 tries")
        finally:
            timer.join()
            self.restart_if_dead()

    def stop(self) -> None:
        self.process.stop()


def test_killed_at_random_points_connect_activation_and_removal_lose_and_repeat_nothing(
        tmp_path: Path, receiver: Receiver) -> None:
    port = free_port()
    pebble = PebbleStack(tmp_path / "pebble", http_port=port,
                         env={"PEBBLE_WFE_NONCEREJECT": "15"})
    hostnames = [f"crash{n}.example.test" for n in range(6)] + ["crash6.link", "crash7.link"]
    short = hostnames[6:]
    env = {"EDGE_API_TOKEN": API, "EDGE_EDGE_TOKEN": "edge-token-0123456789",
           "EDGE_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
           "EDGE_DATA_DIR": str(tmp_path / "data"), "EDGE_LISTEN_PORT": str(port),
           "EDGE_DNS_SERVERS": "127.0.0.1", "EDGE_DNS_PORT": str(pebble.dns_port),
           "EDGE_ACME_DIRECTORY_URL": pebble.directory_url,
           "EDGE_ACME_CA_BUNDLE": str(pebble.listener_ca), "EDGE_CAA_IDENTITIES": "pebble",
           "EDGE_WORKER_INTERVAL": "0.05", "EDGE_RETRY_BASE_SECONDS": "0.2",
           "EDGE_RETRY_MAX_SECONDS": "1", "EDGE_WORKER_ID": "control-1",
           "EDGE_WEBHOOK_URL": receiver.url, "EDGE_WEBHOOK_SECRET": "whsec-crash-0123456789",
           # A sender killed mid-POST is taken over after 3 * 1 + 10 s, not the default 25 s.
           "EDGE_WEBHOOK_TIMEOUT_SECONDS": "1",
           "EDGE_SHORT_DOMAINS": ",".join(short),
           "EDGE_DRAIN_SECONDS": "0"}  # no load balancer to drain for: only the last stop
    settings = load_settings(env=env)
    rng = random.Random(7)
    control: Control | None = None
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        control = Control(env, port, tmp_path / "control.log")
        # The control service answers HTTP-01 on Pebble's port itself here, standing in for
        # the edge: report a node as an agent would (no order goes out before one serves).
        edge = {"Authorization": "Bearer edge-token-0123456789"}
        version = requests.get(f"{base}/edge/state", headers=edge, timeout=10).json()["version"]
        assert requests.post(f"{base}/edge/nodes/stand-in", headers=edge, timeout=10, json={
            "applied_version": version, "haproxy_running": True}).ok
        for hostname in hostnames:  # connect, killed at a random point of each
            created = control.call(lambda: requests.post(
                f"{base}/domains", timeout=10, headers=AUTH,
                json={"hostname": hostname, "publication_id": "pub_1"}), rng.uniform(0, 0.06))
            assert created.status_code in (200, 201), created.text  # 200: asked again
            pebble.set_txt(f"_edge-challenge.{hostname}", created.json()["dns_records"][1]["value"])
        for _ in range(5):  # activation: DNS checks, orders, the edge
            time.sleep(rng.uniform(0.05, 0.6))
            control.kill()
            control.restart_if_dead()
        wait_until(lambda: seen_by_a_fresh_process(
            settings, lambda s: len(s.domains.with_status(ACTIVE)) == len(hostnames)),
            90, "every domain active", interval=0.2)
        claims = check_active_once(settings, hostnames, tmp_path / "control.log")
        for domain in short:
            made = control.call(lambda: requests.post(
                f"{base}/links", timeout=10, headers=AUTH, json={
                    "domain": domain, "slug": "promo", "target": "https://example.org/",
                    "owner": "pub_1"}), rng.uniform(0.3, 1.0))  # in or just after the write
            assert made.status_code in (201, 409), made.text
        for hostname in hostnames:  # removal, killed at a random point of each
            removed = control.call(lambda: requests.delete(
                f"{base}/domains/{hostname}", timeout=30, headers=AUTH), rng.uniform(0, 0.15))
            assert removed.status_code in (200, 404), removed.text  # 404: asked again
        time.sleep(rng.uniform(0.05, 0.3))
        control.kill()  # and once more while the worker drains what is left
        control.restart_if_dead()
        wait_until(lambda: seen_by_a_fresh_process(
            settings, lambda s: not any(s.domains.find(h) for h in hostnames)),
            90, "every domain removed", interval=0.2)
        deadline = time.monotonic() + 60  # a sender killed mid-POST resends after its lease
        expected = {(h, t) for h in hostnames for t in WEBHOOKS}
        while missing := expected - {(r["body"]["data"]["hostname"], r["type"])
                                     for r in receiver.received()}:
            assert time.monotonic() < deadline, (missing, queued(settings))
            time.sleep(0.2)
        assert control.kills >= 8, control.kills
    finally:
        if control is not None:
            control.stop()
        pebble.stop()
    check_removed_once(settings, claims, short)
    check_webhooks_once(receiver, hostnames)


def queued(settings: Any) -> list[tuple[str, str, str]]:
    """The webhook queue, to say why one is missing."""
    services = Services.from_settings(settings)
    try:
        return [(e["data"].get("hostname"), e["type"], e["state"])
                for e in services.webhooks.table.scan(limit=500).items if "type" in e]
    finally:
        services.close()


def seen_by_a_fresh_process(settings: Any, done: Callable[[Services], bool]) -> bool:
    services = Services.from_settings(settings)
    try:
        return done(services)
    finally:
        services.close()


def check_active_once(settings: Any, hostnames: list[str], log: Path) -> dict[str, str]:
    """Each domain verified and activated once, with one certificate: {hostname: claim}."""
    services = Services.from_settings(settings)
    try:
        claims = {}
        for hostname in hostnames:
            domain = services.domains.get(hostname)
            steps = collections.Counter(e["what"] for e in services.domains.timeline(domain))
            assert steps["issuing -> active"] == 1 and steps["pending_dns -> verified"] == 1, \
                (hostname, steps)
            assert services.certificates.get(hostname) is not None
            claims[hostname] = domain["claim"]
        # A run killed after the CA issued stores or logs nothing more, and its successor
        # finds the certificate stored (or resumes its order): one order each at most.
        issued = collections.Counter(re.findall(r"certificate issued for ([^\s,]+)",
                                                log.read_text()))
        assert max(issued.values(), default=0) <= 1, ("no certificate twice", issued)
        return claims
    finally:
        services.close()


def check_removed_once(settings: Any, claims: dict[str, str], short: list[str]) -> None:
    """Each removal recorded once, its route and certificate gone, its short links disabled."""
    services = Services.from_settings(settings)
    try:
        routes = {r["hostname"] for r in (services.edge_state.load() or {"routes": []})["routes"]}
        for hostname, claim in claims.items():
            events = services.domains.events.query("claim", claim, limit=100).items
            steps = collections.Counter(e["what"] for e in events)
            assert steps["connected"] == steps["removed"] == steps["issuing -> active"] == 1, \
                (hostname, steps)
            assert services.certificates.get(hostname) is None, hostname
            assert hostname not in routes, hostname
        for domain in short:
            assert services.links.get(domain, "promo")["disabled"] is True, domain
    finally:
        services.close()


def check_webhooks_once(receiver: Receiver, hostnames: list[str]) -> None:
    """Every webhook received, each under one id; a repeat only with that id and body."""
    bodies: dict[str, Any] = {}
    for request in receiver.received():
        assert bodies.setdefault(request["id"], request["body"]) == request["body"], \
            "one delivery id, two different webhooks"
    ids = collections.defaultdict(set)
    for event_id, body in bodies.items():
        ids[(body["data"]["hostname"], body["type"])].add(event_id)
    assert set(ids) == {(h, t) for h in hostnames for t in WEBHOOKS}, sorted(ids)
    assert all(len(each) == 1 for each in ids.values()), \
        {key: each for key, each in ids.items() if len(each) > 1}

"""SIGKILL the control service at random moments during a batch: nothing is lost, no step
is repeated, every domain ends active with one certificate."""
from __future__ import annotations

import collections
import random
import sys
import time
from pathlib import Path

import requests
from cryptography.fernet import Fernet

from control.wiring import Services
from devtools.pebble import PebbleStack
from domains.service import ACTIVE
from kit.procs import ManagedProcess, free_port, wait_for_port
from kit.settings import load_settings

API = "api-token-0123456789"


def test_killed_at_random_points_the_batch_still_completes_exactly_once(tmp_path: Path) -> None:
    port = free_port()
    pebble = PebbleStack(tmp_path / "pebble", http_port=port,
                         env={"PEBBLE_WFE_NONCEREJECT": "15"})
    env = {"EDGE_API_TOKEN": API, "EDGE_EDGE_TOKEN": "edge-token-0123456789",
           "EDGE_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
           "EDGE_DATA_DIR": str(tmp_path / "data"), "EDGE_LISTEN_PORT": str(port),
           "EDGE_DNS_SERVERS": "127.0.0.1", "EDGE_DNS_PORT": str(pebble.dns_port),
           "EDGE_ACME_DIRECTORY_URL": pebble.directory_url,
           "EDGE_ACME_CA_BUNDLE": str(pebble.listener_ca), "EDGE_CAA_IDENTITIES": "pebble",
           "EDGE_WORKER_INTERVAL": "0.05", "EDGE_RETRY_BASE_SECONDS": "0.2",
           "EDGE_RETRY_MAX_SECONDS": "1", "EDGE_WORKER_ID": "control-1"}
    hostnames = [f"crash{n}.example.test" for n in range(8)]
    rng = random.Random(7)
    process: ManagedProcess | None = None

    def start() -> ManagedProcess:
        serve = ManagedProcess("control", [sys.executable, "-m", "control", "serve"],
                               tmp_path / "control.log", env=env)
        wait_for_port(port, process=serve)
        return serve

    try:
        process = start()
        for hostname in hostnames:
            created = requests.post(f"http://127.0.0.1:{port}/api/v1/domains", timeout=10,
                                    headers={"Authorization": f"Bearer {API}"},
                                    json={"hostname": hostname, "publication_id": "pub_1"})
            assert created.status_code == 201, created.text
            pebble.set_txt(f"_edge-challenge.{hostname}", created.json()["dns_records"][1]["value"])
        for _ in range(5):
            time.sleep(rng.uniform(0.05, 0.6))
            process.popen.kill()  # SIGKILL: no cleanup of any kind
            process.popen.wait()
            process.stop()
            process = start()
        settings = load_settings(env=env)
        deadline = time.monotonic() + 90
        while True:
            services = Services.from_settings(settings)
            try:
                done = len(services.domains.with_status(ACTIVE))
            finally:
                services.close()
            if done == len(hostnames):
                break
            assert time.monotonic() < deadline, f"only {done} domains active"
            time.sleep(0.2)
    finally:
        if process is not None:
            process.stop()
        pebble.stop()

    services = Services.from_settings(load_settings(env=env))
    try:
        for hostname in hostnames:
            domain = services.domains.get(hostname)
            steps = collections.Counter(e["what"] for e in services.domains.timeline(domain))
            assert steps["issuing -> active"] == 1 and steps["pending_dns -> verified"] == 1, \
                (hostname, steps)
            assert services.certificates.get(hostname) is not None
        log = (tmp_path / "control.log").read_text()
        assert log.count("certificate issued for") == len(hostnames), "no certificate twice"
    finally:
        services.close()

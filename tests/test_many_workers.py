"""Two control-service workers on one DynamoDB (dynalite): every transition happens once."""
from __future__ import annotations

import collections
import dataclasses
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from werkzeug.serving import make_server

from admin_app import create_app
from control.wiring import Services
from devtools.pebble import PebbleStack
from domains.service import ACTIVE
from kit.procs import free_port
from kit.settings import Settings

pytestmark = pytest.mark.slow


@pytest.fixture
def quiet_pebble(tmp_path: Path) -> Iterator[PebbleStack]:
    stack = PebbleStack(tmp_path / "pebble", http_port=free_port(),
                        env={"PEBBLE_WFE_NONCEREJECT": "0"})
    yield stack
    stack.stop()


def test_two_workers_share_the_work_and_never_repeat_a_step(
        settings: Settings, dynalite: str, quiet_pebble: PebbleStack) -> None:
    shared = dataclasses.replace(
        settings, storage_backend="dynamodb", dynamodb_endpoint_url=dynalite,
        dynamodb_table_prefix=f"w{uuid.uuid4().hex[:8]}_", dns_servers=["127.0.0.1"],
        dns_port=quiet_pebble.dns_port, acme_directory_url=quiet_pebble.directory_url,
        acme_ca_bundle=str(quiet_pebble.listener_ca), caa_identities=["pebble"])
    workers = [Services.from_settings(shared), Services.from_settings(shared)]
    responder = make_server("127.0.0.1", quiet_pebble.http_port, create_app(workers[0]),
                            threaded=True)
    threading.Thread(target=responder.serve_forever, daemon=True).start()
    # The responder stands in for the edge on Pebble's HTTP-01 port; say a node serves.
    workers[0].publisher.refresh()
    workers[0].edge_state.report("edge-1", workers[0].edge_state.current_version(), None, True)
    hostnames = [f"batch{n}.example.test" for n in range(8)]
    try:
        for hostname in hostnames:
            domain, _ = workers[0].domains.connect(hostname, "pub_1")
            quiet_pebble.set_txt(f"_edge-challenge.{hostname}", domain["token"])
        stop = threading.Event()

        def work(services: Services) -> None:
            while not stop.is_set():
                services.lifecycle.tick()

        threads = [threading.Thread(target=work, args=(w,)) for w in workers]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 90
        while len(workers[0].domains.with_status(ACTIVE)) < len(hostnames):
            assert time.monotonic() < deadline, "not all domains became active"
            time.sleep(0.1)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)

        owners = set()
        for hostname in hostnames:
            domain = workers[0].domains.get(hostname)
            owners.add(domain["lease_owner"])
            steps = collections.Counter(e["what"] for e in workers[0].domains.timeline(domain))
            assert steps == {"connected": 1, "pending_dns -> verified": 1,
                             "verified -> issuing": 1, "issuing -> active": 1}, (hostname, steps)
        assert owners <= {w.lifecycle.worker_id for w in workers}
    finally:
        responder.shutdown()
        for services in workers:
            services.close()

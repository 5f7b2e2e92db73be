"""Pre-validation end to end, every process real: the control service issues through the
DNS-01 delegation (knotd over RFC 2136, Pebble validating through unbound) while the site's
CNAME still points elsewhere, HAProxy serves it already, and the switch of the CNAME to us
costs no failed request."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from devtools.demo import LocalStack
from devtools.pebble import PebbleStack
from devtools.probe import https_get
from kit.procs import free_port
from devtools.dns_server import KnotServer, UnboundResolver
from tests.conftest import wait_until
from tests.test_prevalidation import DCV_ZONE, TSIG, ZONES

pytestmark = pytest.mark.slow

HOST = "www.pub.test"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[LocalStack, KnotServer]]:
    knot = KnotServer(tmp_path / "knot", {"pub.test": "@ A 192.0.2.10\n", DCV_ZONE: ""},
                      tsig=TSIG)
    unbound = pebble = local = None
    try:
        unbound = UnboundResolver(tmp_path / "unbound", knot, ZONES)
        pebble = PebbleStack(tmp_path / "pebble", http_port=free_port(),
                             dns_server=unbound.server)
        local = LocalStack(tmp_path / "stack", pebble=pebble, extra_env={
            "EDGE_DNS_SERVERS": "127.0.0.1", "EDGE_DNS_PORT": str(knot.port),
            "EDGE_DCV_ZONE": DCV_ZONE, "EDGE_PREVALIDATION_RECHECK_SECONDS": "0.3",
            "EDGE_REGISTRARS": json.dumps({DCV_ZONE: {
                "provider": "rfc2136", "server": "127.0.0.1", "port": knot.port,
                "key_name": TSIG[0], "key_secret": TSIG[1]}})})
        yield local, knot
    finally:
        for running in (local, pebble, unbound, knot):
            if running is not None:
                running.stop()


def wait_status(stack: LocalStack, status: str, timeout: float = 60.0,
                errors: list[str] | None = None) -> dict[str, Any]:
    """The domain once it is in ``status`` (and, if given, shows these validation errors)."""
    deadline = time.monotonic() + timeout
    domain: dict[str, Any] = {}
    while time.monotonic() < deadline:
        domain = stack.api("GET", f"/api/v1/domains/{HOST}").json()
        if domain.get("status") == status and (errors is None or [
                p["code"] for p in domain["validation_errors"]] == errors):
            return domain
        stack.check_alive()
        time.sleep(0.1)
    raise AssertionError(f"{HOST} is not {status} after {timeout}s: {domain}")


class Visitors:
    """HTTPS requests to the edge as ``HOST``, one after another, each on a new connection
    (so every request goes through SNI, the certificate and the route), until stopped."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.ok = 0
        self.failed: list[str] = []
        self.serials: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                probe = https_get(self.stack.edge_https_port, HOST, "/echo/switch",
                                  cafile=str(self.stack.pebble.root_path))
            except OSError as exc:
                self.failed.append(repr(exc))
                continue
            if probe.status == 200 and probe.json()["publication_id"] == "pub_1":
                self.ok += 1
                self.serials.add(probe.certificate.serial_number)
            else:
                self.failed.append(f"{probe.status}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_prevalidated_domain_switches_traffic_with_no_gap(
        stack: tuple[LocalStack, KnotServer]) -> None:
    local, knot = stack
    created = local.api("POST", "/api/v1/domains", json={"hostname": HOST,
                                                         "publication_id": "pub_1"})
    assert created.status_code == 201, created.text
    records = {r["name"]: r for r in created.json()["dns_records"]}
    token = records[f"_edge-challenge.{HOST}"]["value"]
    delegation = records[f"_acme-challenge.{HOST}"]["value"]
    zone = (f'_edge-challenge.www TXT "{token}"\n'
            f"_acme-challenge.www CNAME {delegation}.\n")
    knot.set_zone("pub.test", "www CNAME old-host.example.\n" + zone)

    # The check that moved it on may have asked for www just before the zone change (NXDOMAIN)
    # and for the TXT just after; the next recheck (0.3 s) sees the CNAME elsewhere.
    wait_status(local, "awaiting_traffic", errors=["cname_mismatch"])
    config = local.api("GET", f"/api/v1/domains/{HOST}/config").json()
    assert config["configured_by"] is None and config["conflicts"][0]["type"] == "CNAME"
    # Served by the edge before any visitor is sent to it.
    assert local.wait_served(HOST).json()["publication_id"] == "pub_1"

    visitors = Visitors(local)
    try:
        wait_until(lambda: visitors.ok >= 5, 30, "visitors served before the switch")
        knot.set_zone("pub.test", "www CNAME edge.platform.test.\n" + zone)
        active = wait_status(local, "active", timeout=30)
        after = visitors.ok
        wait_until(lambda: visitors.ok >= after + 5, 30, "visitors served after the switch")
    finally:
        visitors.stop()
    assert visitors.failed == [], visitors.failed[:5]
    assert visitors.ok >= 10 and len(visitors.serials) == 1, "one certificate throughout"
    whats = [e["what"] for e in reversed(active["events"])]
    assert whats[-2:] == ["issuing -> awaiting_traffic", "awaiting_traffic -> active"]
    config = local.api("GET", f"/api/v1/domains/{HOST}/config").json()
    assert (config["misconfigured"], config["configured_by"]) == (False, "CNAME")

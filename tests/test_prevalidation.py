"""Pre-validation and delegated DCV: knotd holds the publisher's zone and our DCV zone (written
over RFC 2136); Pebble validates DNS-01 through unbound, which follows the publisher's
``_acme-challenge`` CNAME into our zone as a CA's resolver does. Nothing listens on Pebble's
HTTP-01 port: every certificate here can only come through the delegation."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from admin.web import Admin
from admin_app import create_app
from control.wiring import Services
from devtools.pebble import PebbleStack
from domains.errors import InvalidHostname
from dnsops.records import dcv_target
from domains.service import ACTIVE, AWAITING_TRAFFIC, PENDING_DNS
from kit.procs import free_port
from kit.settings import Settings, SettingsError, load_settings
from kit.web import provided
from devtools.dns_server import KnotServer, UnboundResolver
from tests.test_admin_pages import PASSWORD, login
from tests.conftest import ServicesWith

TSIG = ("edge-key", "c2VjcmV0LWtleS1mb3ItdGhlLWVkZ2UtdGVzdHMtMTIzNA==")
DCV_ZONE = "dcv.platform.test"
ZONES = ["pub.test", DCV_ZONE]


@dataclasses.dataclass
class Dns:
    knot: KnotServer
    unbound: UnboundResolver
    pebble: PebbleStack

    def publisher_zone(self, text: str) -> None:
        """What the publisher has at their DNS host (a registrar we cannot drive)."""
        self.knot.set_zone("pub.test", text)


@pytest.fixture
def dns(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Dns]:
    """Parametrized indirectly, the certificates' lifetime in seconds."""
    knot = KnotServer(tmp_path / "knot", {"pub.test": "@ A 192.0.2.10\n", DCV_ZONE: ""},
                      tsig=TSIG)
    unbound = pebble = None
    try:
        unbound = UnboundResolver(tmp_path / "unbound", knot, ZONES)
        pebble = PebbleStack(tmp_path / "pebble", http_port=free_port(),
                             dns_server=unbound.server,
                             validity_seconds=getattr(request, "param", None))
        yield Dns(knot, unbound, pebble)
    finally:
        if pebble is not None:
            pebble.stop()
        if unbound is not None:
            unbound.stop()
        knot.stop()


def dcv_settings(settings: Settings, dns: Dns) -> Settings:
    return dataclasses.replace(
        settings, acme_directory_url=dns.pebble.directory_url,
        acme_ca_bundle=str(dns.pebble.listener_ca), dns_servers=["127.0.0.1"],
        dns_port=dns.knot.port, allow_wildcards=True, dcv_zone=DCV_ZONE,
        prevalidation_recheck_seconds=0.2, retry_base_seconds=0.1, retry_max_seconds=0.5,
        registrars={DCV_ZONE: {"provider": "rfc2136", "server": "127.0.0.1",
                               "port": dns.knot.port, "key_name": TSIG[0],
                               "key_secret": TSIG[1]}})


@pytest.fixture
def services(services_with: ServicesWith, settings: Settings, dns: Dns) -> Services:
    return services_with(base=dcv_settings(settings, dns))


def names_of(services: Services, hostname: str) -> list[str]:
    stored = services.certificates.get(hostname)
    assert stored is not None, f"no certificate for {hostname}"
    leaf = x509.load_pem_x509_certificate(stored.fullchain_pem.encode())
    return sorted(leaf.extensions.get_extension_for_oid(
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value.get_values_for_type(x509.DNSName))


def serial_of(services: Services, hostname: str) -> int:
    stored = services.certificates.get(hostname)
    assert stored is not None
    return x509.load_pem_x509_certificate(stored.fullchain_pem.encode()).serial_number


def routed(services: Services) -> set[str]:
    state = services.edge_state.load() or {"routes": []}
    return {route["hostname"] for route in state["routes"]}


def connect(services: Services, hostname: str) -> dict[str, Any]:
    domain, created = services.domains.connect(hostname, "pub_1")
    assert created
    return dict(domain)


def ticks_until(services: Services, hostname: str, status: str,
                timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        services.lifecycle.tick()
        domain = dict(services.domains.get(hostname))
        if domain["status"] == status:
            return domain
        if time.monotonic() > deadline:
            raise AssertionError(f"{hostname} is {domain['status']}, not {status}: "
                                 f"{domain['last_error']}")
        time.sleep(0.1)


def records_of(domain: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {r["name"].split(".")[0]: r for r in domain["dns_records"]}


def test_certificate_before_traffic_then_active_when_the_cname_moves(
        services: Services, dns: Dns) -> None:
    domain = connect(services, "www.pub.test")
    records = records_of(domain)
    delegation = records["_acme-challenge"]
    assert delegation == {"type": "CNAME", "name": "_acme-challenge.www.pub.test",
                          "value": dcv_target("www.pub.test", DCV_ZONE)}
    token = records["_edge-challenge"]["value"]
    # The site still lives at its old host; the publisher adds the TXT and the delegation.
    dns.publisher_zone(f'www CNAME old-host.example.\n_edge-challenge.www TXT "{token}"\n'
                       f'_acme-challenge.www CNAME {delegation["value"]}.\n')

    waiting = ticks_until(services, "www.pub.test", AWAITING_TRAFFIC)
    assert names_of(services, "www.pub.test") == ["www.pub.test"]
    assert "www.pub.test" in routed(services), "served the moment traffic arrives"
    assert [p["code"] for p in waiting["validation_errors"]] == ["cname_mismatch"]
    assert not waiting["last_error"] and waiting["next_attempt_at"]
    assert dns.knot.query(delegation["value"], "TXT") == [], "challenge TXT cleaned up"
    whats = [e["what"] for e in services.domains.timeline(services.domains.get("www.pub.test"))]
    assert "issuing -> awaiting_traffic" in whats and "pending_dns -> verified" in whats
    assert services.domains.by_status()[AWAITING_TRAFFIC] == 1
    assert services.domains.active_publication("www.pub.test") == "pub_1"
    assert services.domains.sign_in_publication("www.pub.test") == ("pub_1", True), \
        "no single sign-on while its DNS sends visitors (and their one-time codes) elsewhere"
    dashboard_and_metrics_count_it(services)

    # Nothing changes while the traffic record still points elsewhere (checked by due time).
    time.sleep(0.3)
    services.lifecycle.tick()
    assert services.domains.get("www.pub.test")["status"] == AWAITING_TRAFFIC

    dns.publisher_zone(f'www CNAME edge.platform.test.\n_edge-challenge.www TXT "{token}"\n'
                       f'_acme-challenge.www CNAME {delegation["value"]}.\n')
    active = ticks_until(services, "www.pub.test", ACTIVE, timeout=10)
    assert active["validation_errors"] == [] and "www.pub.test" in routed(services)
    assert services.domains.sign_in_publication("www.pub.test") == ("pub_1", False)
    assert services.domains.by_status()[AWAITING_TRAFFIC] == 0
    assert services.domains.by_status()[ACTIVE] == 1

    # Renewal takes the same path: HTTP-01 could not work (nothing listens on its port).
    before = serial_of(services, "www.pub.test")
    services.lifecycle.release_leases()  # as at the worker's stop: "renew now" waits for a
    services.lifecycle.renew_now("www.pub.test")  # worker's lease on the domain otherwise
    assert serial_of(services, "www.pub.test") != before


def dashboard_and_metrics_count_it(services: Services) -> None:
    app = create_app(dataclasses.replace(services, settings=dataclasses.replace(
        services.settings, admin_cookie_secure=False)))
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'edge_domains{status="awaiting_traffic"} 1.0' in metrics
    provided(app, Admin).users.create("alice", PASSWORD)
    client = app.test_client()
    login(client)
    assert "awaiting_traffic" in client.get("/admin/").get_data(as_text=True)
    listed = client.get("/admin/domains?status=awaiting_traffic").get_data(as_text=True)
    assert "www.pub.test" in listed


def test_an_apex_goes_active_when_its_a_record_moves(services: Services, dns: Dns) -> None:
    domain = connect(services, "pub.test")
    records = {r["name"]: r for r in domain["dns_records"] if r["type"] != "A"}
    txt = f'_edge-challenge TXT "{records["_edge-challenge.pub.test"]["value"]}"\n' \
          f'_acme-challenge CNAME {records["_acme-challenge.pub.test"]["value"]}.\n'
    dns.publisher_zone("@ A 192.0.2.10\n" + txt)
    waiting = ticks_until(services, "pub.test", AWAITING_TRAFFIC)
    assert [p["code"] for p in waiting["validation_errors"]] == ["a_mismatch"]
    dns.publisher_zone("@ A 127.0.0.1\n" + txt)
    ticks_until(services, "pub.test", ACTIVE, timeout=10)


def test_a_domain_connected_before_the_dcv_zone_is_offered_the_delegation(
        settings: Settings, dns: Dns) -> None:
    before = Services.from_settings(settings)
    try:
        before.domains.connect("old.pub.test", "pub_1")
    finally:
        before.close()
    after = Services.from_settings(dataclasses.replace(dcv_settings(settings, dns),
                                                       data_dir=settings.data_dir))
    try:
        app = create_app(after)
        report = app.test_client().get("/api/v1/domains/old.pub.test/config", headers={
            "Authorization": f"Bearer {settings.api_token}"}).get_json()
        assert report["recommended"][-1] == {
            "type": "CNAME", "name": "_acme-challenge.old.pub.test",
            "value": dcv_target("old.pub.test", DCV_ZONE)}
    finally:
        after.close()


def test_a_wildcard_through_the_delegation(services: Services, dns: Dns) -> None:
    """A publisher whose registrar we cannot drive still gets ``*.host``."""
    domain = connect(services, "*.pub.test")
    records = records_of(domain)
    assert records["_acme-challenge"]["name"] == "_acme-challenge.pub.test"
    dns.publisher_zone(f'* CNAME old-host.example.\n'
                       f'_edge-challenge TXT "{records["_edge-challenge"]["value"]}"\n'
                       f'_acme-challenge CNAME {records["_acme-challenge"]["value"]}.\n')
    ticks_until(services, "*.pub.test", AWAITING_TRAFFIC)
    assert names_of(services, "*.pub.test") == ["*.pub.test"]
    # An admin's suspension takes it off the edge; resuming puts it back as it was.
    services.lifecycle.suspend("*.pub.test")
    assert "*.pub.test" not in routed(services)
    resumed = services.lifecycle.resume("*.pub.test")
    assert resumed["status"] == AWAITING_TRAFFIC and "*.pub.test" in routed(services)


@pytest.mark.parametrize("dns", [8], indirect=True)
def test_a_waiting_domain_renews_through_the_delegation(services: Services, dns: Dns) -> None:
    domain = connect(services, "www.pub.test")
    records = records_of(domain)
    dns.publisher_zone(f'www CNAME old-host.example.\n'
                       f'_edge-challenge.www TXT "{records["_edge-challenge"]["value"]}"\n'
                       f'_acme-challenge.www CNAME {records["_acme-challenge"]["value"]}.\n')
    ticks_until(services, "www.pub.test", AWAITING_TRAFFIC)
    first = serial_of(services, "www.pub.test")
    deadline = time.monotonic() + 30
    while serial_of(services, "www.pub.test") == first:
        assert time.monotonic() < deadline, "not renewed while awaiting traffic"
        services.lifecycle.tick()
        time.sleep(0.2)
    renewed = services.domains.get("www.pub.test")
    assert renewed["status"] == AWAITING_TRAFFIC and "www.pub.test" in routed(services)
    whats = [e["what"] for e in services.domains.timeline(renewed)]
    assert "certificate renewed" in whats


def test_no_prevalidation_without_the_delegation(services: Services, dns: Dns) -> None:
    domain = connect(services, "shop.pub.test")
    token = records_of(domain)["_edge-challenge"]["value"]
    elsewhere = dcv_target("other.pub.test", DCV_ZONE)  # someone else's label
    dns.publisher_zone(f'shop CNAME old-host.example.\n_edge-challenge.shop TXT "{token}"\n'
                       f'_acme-challenge.shop CNAME {elsewhere}.\n')
    services.lifecycle.tick()
    pending = services.domains.get("shop.pub.test")
    assert pending["status"] == PENDING_DNS and pending["last_error"]
    assert services.certificates.get("shop.pub.test") is None


def test_no_prevalidation_without_the_ownership_txt(services: Services, dns: Dns) -> None:
    domain = connect(services, "shop.pub.test")
    delegation = records_of(domain)["_acme-challenge"]["value"]
    dns.publisher_zone(f'shop CNAME old-host.example.\n'
                       f'_acme-challenge.shop CNAME {delegation}.\n')
    services.lifecycle.tick()
    assert services.domains.get("shop.pub.test")["status"] == PENDING_DNS
    assert services.certificates.get("shop.pub.test") is None


def test_no_order_once_the_delegation_is_gone(services: Services, dns: Dns) -> None:
    domain = connect(services, "shop.pub.test")
    records = records_of(domain)
    txt = f'_edge-challenge.shop TXT "{records["_edge-challenge"]["value"]}"\n'
    dns.publisher_zone(f"shop CNAME old-host.example.\n{txt}"
                       f'_acme-challenge.shop CNAME {records["_acme-challenge"]["value"]}.\n')
    verified = services.lifecycle.verify(services.domains.get("shop.pub.test"))
    assert verified["status"] == "verified" and verified["traffic_elsewhere"]
    dns.publisher_zone(f"shop CNAME old-host.example.\n{txt}")  # removed before the order
    back = services.lifecycle.issue(verified)
    assert back["status"] == PENDING_DNS and "is gone" in back["last_error"]
    assert services.certificates.get("shop.pub.test") is None


def test_losing_ownership_while_waiting_takes_it_off_the_edge(services: Services,
                                                              dns: Dns) -> None:
    domain = connect(services, "www.pub.test")
    records = records_of(domain)
    delegation = records["_acme-challenge"]["value"]
    dns.publisher_zone(f'www CNAME old-host.example.\n'
                       f'_edge-challenge.www TXT "{records["_edge-challenge"]["value"]}"\n'
                       f'_acme-challenge.www CNAME {delegation}.\n')
    ticks_until(services, "www.pub.test", AWAITING_TRAFFIC)
    dns.publisher_zone(f'www CNAME old-host.example.\n_acme-challenge.www CNAME {delegation}.\n')
    pending = ticks_until(services, "www.pub.test", PENDING_DNS, timeout=10)
    assert "txt_missing" in {p["code"] for p in pending["validation_errors"]}
    assert "www.pub.test" not in routed(services)


def test_the_dcv_zone_needs_a_registrar_and_cannot_be_connected(services: Services) -> None:
    with pytest.raises(SettingsError, match="dcv_zone"):
        load_settings(env={}, required=(), dcv_zone="dcv.example.net")
    with pytest.raises(SettingsError, match="dcv_zone"):
        load_settings(env={}, required=(), dcv_zone="not a zone")
    assert load_settings(env={}, required=(), dcv_zone="DCV.Example.NET.", registrars={
        "example.net": {"provider": "rfc2136", "server": "127.0.0.1"}}).dcv_zone == \
        "dcv.example.net"
    with pytest.raises(InvalidHostname):
        services.domains.connect(dcv_target("x.pub.test", DCV_ZONE), "pub_1")

"""A live domain taken over end to end: its DNS on a real authoritative server (knotd), its
certificates from Pebble, the webhook to a real receiver. The holder's certificate is revoked at
the CA and its route leaves the edge when the DNS owner moves the domain; the new holder then
goes live with a certificate of its own."""
from __future__ import annotations

import dataclasses
from typing import Callable

import pytest

from admin_app import create_app
from control.wiring import Services
from devtools.dns_server import KnotServer
from devtools.pebble import PebbleStack
from kit.settings import Settings
from tests.conftest import ServicesWith, on_pebble, serving, wait_until
from tests.test_takeover import AUTH, HOST, SECRET, Zone
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.slow


@pytest.fixture
def zone(knot: Callable[..., KnotServer]) -> Zone:
    return Zone(knot({"example.test": "@ A 127.0.0.1\n"}))


@pytest.fixture
def services(services_with: ServicesWith, settings: Settings, zone: Zone, pebble: PebbleStack,
             receiver: Receiver) -> Services:
    return services_with(base=dataclasses.replace(
        settings, **{**on_pebble(pebble), "dns_servers": ["127.0.0.1"],
                     "dns_port": zone.knot.port},
        webhook_url=receiver.url, webhook_secret=SECRET))


def go_live(services: Services, pebble: PebbleStack, zone: Zone, publication: str) -> str:
    """The holder's records in its zone, then worker rounds until active (Pebble probes
    HTTP-01 on the control app); returns the certificate's serial."""
    token = services.domains.get(HOST)["token"]
    zone.set("cname", "blog CNAME edge.platform.test.")
    zone.set("challenge", f'_edge-challenge.blog TXT "{token}"')

    def round_done() -> bool:
        services.lifecycle.tick()
        services.edge_state.report("takeover-edge", services.edge_state.current_version(),
                                   None, True)
        return bool(services.domains.get(HOST)["status"] == "active")

    with serving(create_app(services), pebble.http_port):
        services.lifecycle.check_now(HOST)
        wait_until(round_done, 60, f"{HOST} active for {publication}",
                   lambda: services.domains.get(HOST), interval=0.05)
    stored = services.certificates.get(HOST)
    assert stored is not None and services.edge_state.routes.get(HOST) is not None
    return stored.serial


def test_a_live_domain_moves_to_the_owner_of_its_dns(services: Services, pebble: PebbleStack,
                                                     zone: Zone, receiver: Receiver) -> None:
    client = create_app(services).test_client()
    assert client.post("/api/v1/domains", headers=AUTH, json={
        "hostname": HOST, "publication_id": "pub_a"}).status_code == 201
    first = go_live(services, pebble, zone, "pub_a")

    asked = client.post(f"/api/v1/domains/{HOST}/takeover", headers=AUTH,
                        json={"publication_id": "pub_b"}).get_json()
    assert asked["holder"]["verified"] is True
    zone.takeover_txt(asked["record"]["value"])
    moved = client.post(f"/api/v1/domains/{HOST}/takeover/verify", headers=AUTH,
                        json={"publication_id": "pub_b"})
    assert moved.status_code == 200, moved.get_json()

    # The holder's certificate is revoked and gone, and its route left the edge.
    assert pebble.certificate_status(first) == "Revoked"
    assert services.certificates.get(HOST) is None
    assert (services.edge_state.routes.get(HOST) or {}).get("removed") is True  # a tombstone
    services.webhooks.deliver_due()
    wait_until(lambda: [r["body"]["data"] for r in receiver.received()
                        if r["type"] == "domain.taken_over"], 10, "the webhook")
    hook = [r["body"]["data"] for r in receiver.received() if r["type"] == "domain.taken_over"]
    assert hook == [{"hostname": HOST, "publication_id": "pub_a", "status": "taken_over",
                     "previous_status": "active"}]

    # The new holder goes live with a certificate of its own.
    second = go_live(services, pebble, zone, "pub_b")
    assert second != first
    domain = services.domains.get(HOST)
    assert domain["publication_id"] == "pub_b"
    route = services.edge_state.routes.get(HOST) or {}
    assert not route.get("removed") and "pub_b" in str(route), route

"""An order of a hostname's holder still in flight when the hostname is taken over (a renewal:
the takeover waits only for a first issuance) completes after the new holder stored its own
certificate. It must not replace it: the store saves a certificate only over the one its order
started from (certs/store.py ``save``). DNS on knotd, certificates from Pebble behind a proxy
that holds the renewal's finalization as a slow CA would."""
from __future__ import annotations

import dataclasses
import threading
from typing import Any, Callable, Iterator

import pytest
from werkzeug.wrappers import Request

from admin_app import create_app
from control.wiring import Services
from devtools.pebble import PebbleStack
from kit.settings import Settings
from tests.ari_proxy import AriProxy
from tests.conftest import ServicesWith, serving, wait_until
from tests.test_takeover import Zone
from tests.test_takeover_e2e import zone  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow
HOST = "blog.example.test"


class SlowFinalization(AriProxy):
    """Once ``armed``, the next download of a certificate waits (``held`` is set) until
    ``released``: the CA issued it, the order has not stored it yet."""

    def __init__(self, pebble: PebbleStack) -> None:
        super().__init__(pebble)
        self.armed = False
        self.held = threading.Event()

    def app(self, environ: dict[str, Any], start_response: Any) -> Any:
        if self.armed and Request(environ).path.startswith("/certZ/"):
            self.armed = False
            self.held.set()
            self.released.wait(60)
        return super().app(environ, start_response)


@pytest.fixture
def proxy(pebble: PebbleStack) -> Iterator[SlowFinalization]:
    slow = SlowFinalization(pebble)
    try:
        yield slow
    finally:
        slow.released.set()
        slow.stop()


@pytest.fixture
def services(services_with: ServicesWith, settings: Settings, zone: Zone,  # noqa: F811
             pebble: PebbleStack, proxy: SlowFinalization) -> Services:
    return services_with(base=dataclasses.replace(
        settings, dns_servers=["127.0.0.1"], dns_port=zone.knot.port,
        acme_directory_url=proxy.directory_url, acme_ca_bundle=str(pebble.listener_ca)))


def live(services: Services, zone: Zone, publication: str) -> str:  # noqa: F811
    """``publication``'s records in the zone, worker rounds until active; its serial. The
    worker's leases are then handed back (as at its stop), so an operator's renewal may take
    the domain at once."""
    token = services.domains.get(HOST)["token"]
    zone.set("cname", "blog CNAME edge.platform.test.")
    zone.set("challenge", f'_edge-challenge.blog TXT "{token}"')

    def round_done() -> bool:
        services.lifecycle.tick()
        services.edge_state.report("stale-edge", services.edge_state.current_version(),
                                   None, True)
        return bool(services.domains.get(HOST)["status"] == "active")

    services.lifecycle.check_now(HOST)
    wait_until(round_done, 60, f"{HOST} active for {publication}",
               lambda: services.domains.get(HOST), interval=0.05)
    services.lifecycle.release_leases()
    stored = services.certificates.get(HOST)
    assert stored is not None
    return stored.serial


def in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except Exception as exc:  # what the old holder's renewal ends with
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, raised


def test_a_renewal_that_outlived_its_claim_leaves_the_next_holders_certificate(
        services: Services, pebble: PebbleStack, zone: Zone,  # noqa: F811
        proxy: SlowFinalization) -> None:
    assert services.takeovers is not None
    with serving(create_app(services), pebble.http_port):
        services.domains.connect(HOST, "pub_a")
        first = live(services, zone, "pub_a")
        proxy.armed = True
        renewal, raised = in_thread(lambda: services.lifecycle.renew_now(HOST))
        assert proxy.held.wait(60), "the renewal never reached its certificate"

        zone.takeover_txt(services.takeovers.request(HOST, "pub_b")["token"])
        services.takeovers.take_over(HOST, "pub_b")
        assert services.certificates.get(HOST) is None  # the holder's is revoked
        second = live(services, zone, "pub_b")
        assert second != first

        proxy.released.set()
        renewal.join(60)
        assert not renewal.is_alive() and raised, "the old holder's renewal did not fail"

    stored = services.certificates.get(HOST)
    assert stored is not None and stored.serial == second, \
        "the old holder's order replaced the new holder's certificate"
    assert pebble.certificate_status(second) != "Revoked"
    assert services.domains.get(HOST)["publication_id"] == "pub_b"


def test_a_renewal_asked_while_one_runs_is_refused_and_the_first_stores_its_own(
        services: Services, pebble: PebbleStack, zone: Zone,  # noqa: F811
        proxy: SlowFinalization) -> None:
    """A double click on "renew" (or the admin's renew beside the worker's): the second used to
    resume the first's order, store its certificate first, and the first then failed as if the
    hostname had changed hands. A renewal holds the domain's lease, as a worker's step does."""
    with serving(create_app(services), pebble.http_port):
        services.domains.connect(HOST, "pub_a")
        first = live(services, zone, "pub_a")
        proxy.armed = True
        renewal, raised = in_thread(lambda: services.lifecycle.renew_now(HOST))
        assert proxy.held.wait(60)
        with pytest.raises(ValueError, match="a worker holds this domain"):
            services.lifecycle.renew_now(HOST)
        proxy.released.set()
        renewal.join(60)
    assert raised == []
    stored = services.certificates.get(HOST)
    assert stored is not None and stored.serial not in (first, None)
    assert services.domains.get(HOST).get("lease_owner") is None, "the lease was handed back"

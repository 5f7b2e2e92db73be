"""The platform's own certificate with several replicas: every one runs the step, and they find
it due together (at their first start, at each renewal). One orders; the others wait for it,
then publish the route to what it stored: a CA limits duplicate certificates for the same names
(Let's Encrypt: 5 a week), so five replicas ordering at once locked the host out for a week.
Real Pebble behind the ARI proxy, which counts the orders the CA created."""
from __future__ import annotations

import dataclasses
import threading
import time
from typing import Callable, Iterator

import pytest

from admin_app import create_app
from control.migrations import META
from control.wiring import Services, platform_certificates
from control.worker import OrderLease, PlatformCertificates
from devtools.pebble import PebbleStack
from kit.settings import Settings
from tests.conftest import SSO_PLATFORM, ServicesWith, serving, wait_until, with_sso
from tests.faulty_ca import FaultyCa

REPLICAS = 5
HOST = SSO_PLATFORM


@pytest.fixture
def ca(pebble: PebbleStack) -> Iterator[FaultyCa]:
    proxy = FaultyCa(pebble)
    proxy.window = (3600.0, 7200.0)  # a certificate just issued is not due for renewal
    yield proxy
    proxy.stop()


@pytest.fixture
def replicas(any_backend: Settings, services_with: ServicesWith, pebble: PebbleStack,
             ca: FaultyCa) -> Iterator[list[Services]]:
    """``REPLICAS`` control services over one store, the platform's host declared, behind the
    counting CA; an edge node serves, and the first one's app answers HTTP-01 for the edge."""
    base = dataclasses.replace(
        with_sso(any_backend), dns_servers=["127.0.0.1"], dns_port=pebble.dns_port,
        acme_directory_url=ca.directory_url, acme_ca_bundle=str(pebble.listener_ca),
        retry_base_seconds=0.0)  # each tick looks again: the test's ticks are its rounds
    built = [services_with(base=base) for _ in range(REPLICAS)]
    first = built[0]
    first.publisher.refresh()
    first.edge_state.report("edge-1", first.edge_state.current_version(), None, True)
    with serving(create_app(first), pebble.http_port):
        yield built


def routed(services: Services) -> bool:
    return HOST in services.publisher.routed()


def serial(services: Services) -> str | None:
    stored = services.certificates.raw(HOST)
    return None if stored is None else str(stored["serial"])


def together(platforms: list[PlatformCertificates], done: threading.Event) -> None:
    """Every replica's step, ticked at once from the same start until ``done`` (each tick is
    a worker round); then each ticks once more, as its next round would."""
    start = threading.Barrier(len(platforms))
    failed: list[BaseException] = []

    def run(platform: PlatformCertificates) -> None:
        start.wait()
        deadline = time.monotonic() + 60
        try:
            while not done.is_set() and time.monotonic() < deadline:
                platform.tick()
        except BaseException as exc:  # the assertion below names it
            failed.append(exc)

    threads = [threading.Thread(target=run, args=(p,)) for p in platforms]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failed, failed
    for platform in platforms:
        platform.tick()


def watch(condition: Callable[[], object], done: threading.Event) -> threading.Thread:
    """Sets ``done`` once ``condition`` holds (the replicas' rounds end there)."""
    def check() -> None:
        wait_until(condition, 60, "the platform host's certificate, routed", interval=0.05)
        done.set()
    thread = threading.Thread(target=check, daemon=True)
    thread.start()
    return thread


def test_replicas_starting_together_order_the_platform_certificate_once(
        replicas: list[Services], ca: FaultyCa) -> None:
    """Each replica ordered the certificate: five orders, five certificates for one name."""
    first = replicas[0]
    done = threading.Event()
    watch(lambda: serial(first) is not None and routed(first), done)
    together([platform_certificates(services) for services in replicas], done)
    assert done.is_set(), "the platform host has its certificate and its route"
    assert ca.orders_created == 1, "one replica ordered; the others waited for it"
    assert first.backend.table(META).get(OrderLease.name(HOST)) is None, "the lease ended"


def test_replicas_renewing_together_order_one_renewal(
        replicas: list[Services], ca: FaultyCa) -> None:
    """All replicas reach the renewal time at once (the CA's renewal time, kept on the item):
    one renews, the others find the certificate renewed and order nothing."""
    first = replicas[0]
    first.issuer.issue([HOST])
    first.publisher.route_changes({HOST: "_platform"})
    before, orders = first.certificates.raw(HOST), ca.orders_created
    assert before is not None
    first.certificates.remember_renewal(before, time.time() - 60, time.time() + 3600)
    done = threading.Event()
    watch(lambda: serial(first) != before["serial"], done)
    together([platform_certificates(services) for services in replicas], done)
    assert done.is_set(), "renewed"
    assert ca.orders_created == orders + 1, "one renewal order"
    assert first.publisher.certificate(HOST).serial == serial(first)  # type: ignore[union-attr]
    assert routed(first)


def test_a_replica_that_died_mid_order_holds_the_others_up_until_its_lease_ends(
        replicas: list[Services], ca: FaultyCa) -> None:
    """A lease whose holder died runs out, and a waiting replica orders then: not before."""
    first = replicas[0]
    OrderLease(first.backend.table(META), "dead-replica", seconds=2.0).take(HOST)
    platform = platform_certificates(replicas[1])
    platform.tick()
    assert ca.orders_created == 0 and serial(first) is None, "the lease holds the others"

    def ordered() -> bool:
        platform.tick()
        return routed(first)
    wait_until(ordered, 30, "the certificate, ordered once the lease ran out", interval=0.2)
    assert ca.orders_created == 1


def test_a_waiting_replica_routes_what_the_holder_stored_without_ordering(
        replicas: list[Services], ca: FaultyCa) -> None:
    """The holder stored the certificate and died before it published the route (its lease
    still held): the replica that waited for it publishes the route, and orders nothing."""
    first = replicas[0]
    holder = OrderLease(first.backend.table(META), "holder-replica")
    assert holder.take(HOST) is not None
    platform = platform_certificates(replicas[1])
    platform.tick()
    assert serial(first) is None and not routed(first)
    first.issuer.issue([HOST])  # the holder's order
    orders = ca.orders_created
    platform.tick()
    assert routed(first), "the waiting replica published the route"
    assert ca.orders_created == orders, "and ordered nothing"


def test_a_certificate_stored_between_the_look_and_the_lease_is_not_ordered_again(
        replicas: list[Services], ca: FaultyCa) -> None:
    """A replica found the host due, and before it took the lease, another ordered, stored
    and let the lease go: having the lease, it looks again and routes what is stored."""
    first, other = replicas[0], replicas[1]

    def edge_up() -> bool:  # asked between the look and the lease
        if serial(first) is None:
            lease = OrderLease(other.backend.table(META), "other-replica")
            held = lease.take(HOST)
            assert held is not None
            other.issuer.issue([HOST])
            lease.release(HOST, held)
        return True

    platform = PlatformCertificates(
        (HOST,), first.issuer, first.certificates, first.publisher, 0.0, edge_up=edge_up,
        lease=OrderLease(first.backend.table(META), first.lifecycle.worker_id))
    platform.tick()
    assert ca.orders_created == 1, "the other replica's order only"
    assert routed(first)

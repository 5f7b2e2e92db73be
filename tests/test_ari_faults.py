"""Renewals when the CA misbehaves: it rate-limits a renewal, its renewal info (ARI) makes no
sense, a renewal it would exempt from rate limits fails. Real Pebble behind the ARI proxy."""
from __future__ import annotations

import dataclasses
import datetime
from typing import Iterator

import pytest

from admin_app import create_app
from certs.issuer import IssuanceError
from certs.limits import BUDGETS
from control.wiring import Services
from control.worker import PlatformCertificates
from devtools.pebble import PebbleStack
from kit.settings import Settings
from store import Table
from tests.conftest import FakeClock, ServicesWith, on_pebble, serving
from tests.faulty_ca import FaultyCa


@pytest.fixture
def ca(pebble: PebbleStack) -> Iterator[FaultyCa]:
    proxy = FaultyCa(pebble)
    yield proxy
    proxy.stop()


def behind(ca: FaultyCa, pebble: PebbleStack) -> dict[str, object]:
    """Settings for certificates from Pebble through ``ca``."""
    return {**on_pebble(pebble), "acme_directory_url": ca.directory_url}


def test_a_renewal_the_ca_rate_limits_waits_out_its_retry_after(
        services_with: ServicesWith, pebble: PebbleStack, ca: FaultyCa,
        clock: FakeClock) -> None:
    """The recheck before a renewal sets ``attempts`` back to 0: a failed renewal was tried
    again every 2.5-5 s, whatever the CA's Retry-After. It waits out Retry-After, backs off by
    its own count of failures, and the count goes once the renewal succeeds."""
    services = services_with(clock=clock, recheck_seconds=1.0, **behind(ca, pebble))
    hostname = "storm.example.test"
    with serving(create_app(services), pebble.http_port):
        domain, _ = services.domains.connect(hostname, "pub_1")
        pebble.set_txt(f"_edge-challenge.{hostname}", domain["token"])
        services.lifecycle.issue(services.lifecycle.verify(domain))
        first = services.certificates.raw(hostname)["serial"]  # type: ignore[index]
        ca.window = (-7200.0, -60.0)  # the CA's window for renewing it has opened
        ca.rate_limit = "3600"  # and it rate-limits the renewal: come back in an hour
        clock.advance(6)  # the recheck is due
        failed_at = clock()
        for _ in range(6):
            services.lifecycle.tick()
            clock.advance(6)
        domain = services.domains.get(hostname)
        assert ca.orders_refused == 1, "one renewal order, not one every round"
        assert domain["status"] == "active" and domain["renewal_failures"] == 1
        assert domain["next_attempt_at"] >= failed_at + 3590, "waits out Retry-After"

        clock.now = domain["next_attempt_at"] + 1  # still refused: it backs off further
        services.lifecycle.tick()
        domain = services.domains.get(hostname)
        assert ca.orders_refused == 2 and domain["renewal_failures"] == 2
        assert domain["next_attempt_at"] >= clock() + 1190, "20 minutes after a second failure"

        ca.rate_limit = None
        clock.now = domain["next_attempt_at"] + 1
        services.lifecycle.tick()
    domain = services.domains.get(hostname)
    assert services.certificates.raw(hostname)["serial"] != first  # type: ignore[index]
    assert domain["renewal_failures"] == 0 and not domain["last_error"]


NONSENSE = [
    pytest.param("{}", {}, id="no suggestedWindow"),
    pytest.param('{"suggestedWindow": {}}', {}, id="a window without dates"),
    pytest.param('{"suggestedWindow": {"start": "soon", "end": "later"}}', {}, id="bad dates"),
    pytest.param('{"suggestedWindow": {"start": "2030-01-01T00:00:00Z", '
                 '"end": "2030-01-02T00:00:00Z"}}', {"Retry-After": "99999999999999"},
                 id="a Retry-After past the calendar"),
]


@pytest.mark.parametrize("body,headers", NONSENSE)
def test_renewal_info_that_makes_no_sense_falls_back_to_the_lifetime(
        settings: Settings, pebble: PebbleStack, ca: FaultyCa, body: str,
        headers: dict[str, str]) -> None:
    """renewal_due() raised (no renewal ever, and the platform certificates' step failed every
    round, skipping the hosts after it): it renews at two thirds of the lifetime instead, and
    does not ask the CA again for 6 hours."""
    services = Services.from_settings(dataclasses.replace(settings, **behind(ca, pebble)))
    try:
        with serving(create_app(services), pebble.http_port):
            services.issuer.issue(["odd.example.test"])
        stored = services.certificates.raw("odd.example.test")
        assert stored is not None
        ca.ari_body, ca.ari_headers = body, headers
        now = datetime.datetime.now(datetime.timezone.utc)
        assert services.issuer.renewal_due("odd.example.test", now) is False
        assert ca.renewal_info_requests == 1
        assert services.issuer.renewal_due(
            "odd.example.test", now + datetime.timedelta(hours=5, minutes=59)) is False
        assert ca.renewal_info_requests == 1, "not asked again within 6 hours"
        not_before = datetime.datetime.fromisoformat(stored["not_before"])
        not_after = datetime.datetime.fromisoformat(stored["not_after"])
        two_thirds = not_before + (not_after - not_before) * 2 / 3
        assert services.issuer.renewal_due(
            "odd.example.test", two_thirds + datetime.timedelta(hours=1)) is True
        assert ca.renewal_info_requests == 2

        # The platform's own certificates: the nonsense of one does not stop the next.
        services.certificates.remember_renewal(stored, None, 0)  # the CA is asked again now
        platform = PlatformCertificates(("odd.example.test", "next.example.test"),
                                        services.issuer, services.certificates,
                                        services.publisher)
        with serving(create_app(services), pebble.http_port):
            platform.tick()
        assert services.certificates.raw("next.example.test") is not None
    finally:
        services.close()


def certs_counted(budgets: Table) -> int:
    """The certificates the rate budget counts for example.test now."""
    return sum(int(item["n"]) for item in budgets.scan(limit=100).items
               if item["key"].startswith("certs|example.test|"))


def test_a_failed_ari_renewal_gives_back_no_slot_it_did_not_take(
        settings: Settings, pebble: PebbleStack, ca: FaultyCa) -> None:
    """A renewal naming the certificate it replaces takes no slot of the rate budget (the CA
    exempts it); when it failed, it gave one back all the same, so our count fell below the
    CA's and the next new order went past the limit."""
    services = Services.from_settings(dataclasses.replace(
        settings, acme_certs_per_domain_7d=1, **behind(ca, pebble)))
    budgets = services.backend.table(BUDGETS)

    try:
        with serving(create_app(services), pebble.http_port):
            services.issuer.issue(["a.example.test"])
        assert certs_counted(budgets) == 1
        with pytest.raises(IssuanceError):  # nothing answers HTTP-01 now: the renewal fails
            services.issuer.issue(["a.example.test"])
        assert "replaces" in ca.new_orders[-1], "an ARI renewal"
        assert certs_counted(budgets) == 1
        with pytest.raises(IssuanceError, match="rate budget: 1 certificates in 7 days"):
            services.issuer.issue(["b.example.test"])
        assert certs_counted(budgets) == 1
    finally:
        services.close()


def test_a_resumed_order_gives_back_only_what_its_first_run_took(
        settings: Settings, pebble: PebbleStack, ca: FaultyCa) -> None:
    """The journal says whether an order took budget slots; the run that resumes it (after a
    crash, or a failure that left it pending) gives back only those, and only once."""
    services = Services.from_settings(dataclasses.replace(
        settings, acme_certs_per_domain_7d=3, **behind(ca, pebble)))
    budgets = services.backend.table(BUDGETS)

    try:
        with serving(create_app(services), pebble.http_port):
            services.issuer.issue(["d.example.test"])
        orders = ca.orders_created
        ca.fail_challenge_answers = True  # the order stays pending: the next run resumes it
        for _ in range(3):
            with pytest.raises(IssuanceError):
                services.issuer.issue(["c.example.test"])
        assert ca.orders_created - orders == 1, "resumed, not ordered again"
        assert certs_counted(budgets) == 1, "d's slot stays taken"
    finally:
        services.close()

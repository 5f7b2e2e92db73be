"""When a certificate comes back to the CA: each at its own point before two thirds of its
lifetime, or in the CA's ARI window, the same on every replica and after every restart; and a
Retry-After read as UTC on a host whose clock is not. Real Pebble (behind the ARI proxy where
the CA's renewal info matters)."""
from __future__ import annotations

import datetime
import email.utils
import json
import os
import time
from typing import Any, Iterator

import pytest
from werkzeug.wrappers import Response

from admin_app import create_app
from certs.issuer import IssuanceError
from devtools.pebble import PebbleStack
from tests.conftest import ServicesWith, on_pebble, serving
from tests.faulty_ca import FaultyCa
from tests.test_ari_faults import behind

HOSTS = [f"batch{n}.example.test" for n in range(4)]
UTC = datetime.timezone.utc


@pytest.fixture
def ca(pebble: PebbleStack) -> Iterator[FaultyCa]:
    proxy = FaultyCa(pebble)
    yield proxy
    proxy.stop()


@pytest.fixture
def new_york() -> Iterator[None]:
    """This process' local time is New York's (UTC-5 in winter, UTC-4 in summer)."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        assert time.timezone != 0
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


def first_due(services_issuer: object, hostname: str, low: datetime.datetime,
              high: datetime.datetime) -> datetime.datetime:
    """The first second at which ``renewal_due`` says yes, between ``low`` (no) and ``high``
    (yes)."""
    due = services_issuer.renewal_due  # type: ignore[attr-defined]
    assert not due(hostname, low) and due(hostname, high)
    while high - low > datetime.timedelta(seconds=1):
        middle = low + (high - low) / 2
        low, high = (low, middle) if due(hostname, middle) else (middle, high)
    return high


def test_certificates_issued_together_renew_apart_and_every_replica_agrees(
        services_with: ServicesWith, pebble: PebbleStack) -> None:
    """Without a CA window every certificate renewed at exactly two thirds of its lifetime:
    a batch issued together (a migration) came back to the CA in the same minute. Each now
    renews at a point fixed by its serial in the twelfth of its lifetime before two thirds,
    never later; another replica (or a restart) finds the same points."""
    services = services_with(**on_pebble(pebble))
    with serving(create_app(services), pebble.http_port):
        for hostname in HOSTS:
            services.issuer.issue([hostname])
    replica = services_with(**on_pebble(pebble))
    points = {}
    for hostname in HOSTS:
        stored = services.certificates.raw(hostname)
        assert stored is not None
        not_before = datetime.datetime.fromisoformat(stored["not_before"])
        lifetime = datetime.datetime.fromisoformat(stored["not_after"]) - not_before
        two_thirds = not_before + lifetime * 2 / 3
        earliest = two_thirds - lifetime / 12
        low = earliest - datetime.timedelta(seconds=2)
        points[hostname] = first_due(services.issuer, hostname, low, two_thirds)
        assert earliest <= points[hostname] <= two_thirds
        assert first_due(replica.issuer, hostname, low, two_thirds) == points[hostname]
    spaced = sorted(points.values())
    assert all(b - a > datetime.timedelta(minutes=1) for a, b in zip(spaced, spaced[1:])), \
        f"renewals bunched: {spaced}"


def test_each_certificate_keeps_its_own_point_in_the_cas_window(
        services_with: ServicesWith, pebble: PebbleStack, ca: FaultyCa) -> None:
    """RFC 9773 asks for a random point in the CA's window: the library drew a new one at each
    question, so replicas and restarts moved the renewal about. Each certificate has its own
    point now, spread over the window, the same at every question and on every replica."""
    services = services_with(**behind(ca, pebble))
    with serving(create_app(services), pebble.http_port):
        for hostname in HOSTS:
            services.issuer.issue([hostname])
    now = datetime.datetime.now(UTC)
    start, end = now + datetime.timedelta(days=1), now + datetime.timedelta(days=2)
    ca.ari_body = json.dumps({"suggestedWindow": {"start": start.isoformat(),
                                                  "end": end.isoformat()}})
    replica = services_with(**behind(ca, pebble))
    points = {}
    for hostname in HOSTS:
        assert services.issuer.renewal_due(hostname, now) is False
        points[hostname] = services.certificates.raw(hostname)["ari_renew_at"]  # type: ignore
        assert start.timestamp() <= points[hostname] <= end.timestamp()
        for later in (7, 14):  # asked again (the answer is kept 6 hours), by either replica
            issuer = services.issuer if later == 7 else replica.issuer
            assert issuer.renewal_due(hostname, now + datetime.timedelta(hours=later)) is False
            again = services.certificates.raw(hostname)["ari_renew_at"]  # type: ignore
            assert again == pytest.approx(points[hostname], abs=0.001)
    assert ca.renewal_info_requests == 3 * len(HOSTS)
    spaced = sorted(points.values())
    assert all(b - a > 60 for a, b in zip(spaced, spaced[1:])), f"bunched: {spaced}"


RETRY_AT = datetime.datetime(2037, 10, 21, 7, 28, tzinfo=UTC)


@pytest.mark.parametrize("header", [
    pytest.param(email.utils.format_datetime(RETRY_AT, usegmt=True), id="IMF-fixdate"),
    pytest.param("Wed Oct 21 07:28:00 2037", id="asctime"),
])
def test_a_429_retry_after_date_is_utc_on_a_host_in_another_zone(
        services_with: ServicesWith, pebble: PebbleStack, ca: FaultyCa, new_york: None,
        header: str) -> None:
    """An HTTP date in a 429's Retry-After is GMT; its asctime form, which names no zone, was
    read as the host's local time (five hours late in New York)."""
    services = services_with(**behind(ca, pebble))
    ca.rate_limit = header
    with pytest.raises(IssuanceError) as caught:
        services.issuer.issue(["limited.example.test"])
    assert caught.value.retry_after == RETRY_AT.timestamp()


def test_the_renewal_info_retry_after_is_utc_on_a_host_in_another_zone(
        services_with: ServicesWith, pebble: PebbleStack, ca: FaultyCa, new_york: None) -> None:
    """The library reads an HTTP-date Retry-After of renewalInfo as naive UTC, and it was then
    taken for local time: the CA was asked again five hours late in New York."""
    services = services_with(**behind(ca, pebble))
    with serving(create_app(services), pebble.http_port):
        services.issuer.issue(["zone.example.test"])
    now = datetime.datetime.now(UTC).replace(microsecond=0)
    ask_again = now + datetime.timedelta(hours=12)
    ca.ari_body = json.dumps({"suggestedWindow": {
        "start": (now + datetime.timedelta(days=30)).isoformat(),
        "end": (now + datetime.timedelta(days=31)).isoformat()}})
    ca.ari_headers = {"Retry-After": email.utils.format_datetime(ask_again, usegmt=True)}
    assert services.issuer.renewal_due("zone.example.test", now) is False
    stored = services.certificates.raw("zone.example.test")
    assert stored is not None and stored["ari_ask_again_at"] == ask_again.timestamp()


class BusyAri(FaultyCa):
    """Answers renewalInfo with a 429 and ``busy_for`` as its Retry-After, when set."""

    busy_for: str | None = None

    def app(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"].startswith("/renewal-info/") and self.busy_for is not None:
            self.renewal_info_requests += 1
            problem = {"type": "urn:ietf:params:acme:error:rateLimited", "detail": "slow down"}
            return Response(json.dumps(problem), status=429, headers={
                "Retry-After": self.busy_for}, content_type="application/problem+json")(
                environ, start_response)
        return super().app(environ, start_response)


def test_a_rate_limited_renewal_info_question_keeps_the_last_answer_until_retry_after(
        services_with: ServicesWith, pebble: PebbleStack) -> None:
    """The library's renewal_time made a 429 of renewalInfo an ARIError: the CA's window was
    dropped for the lifetime and asked about again at the next recheck, whatever its
    Retry-After. What it said last stands until then."""
    ca = BusyAri(pebble)
    try:
        services = services_with(**behind(ca, pebble))
        with serving(create_app(services), pebble.http_port):
            services.issuer.issue(["busy.example.test"])
        now = datetime.datetime.now(UTC)
        ca.ari_body = json.dumps({"suggestedWindow": {
            "start": (now - datetime.timedelta(days=2)).isoformat(),
            "end": (now - datetime.timedelta(days=1)).isoformat()}})
        assert services.issuer.renewal_due("busy.example.test", now) is True
        stored = services.certificates.raw("busy.example.test")
        assert stored is not None
        window_point = stored["ari_renew_at"]
        ca.busy_for = "36000"  # ten hours
        later = now + datetime.timedelta(hours=7)
        asked = time.time()
        assert services.issuer.renewal_due("busy.example.test", later) is True
        stored = services.certificates.raw("busy.example.test")
        assert stored is not None and stored["ari_renew_at"] == window_point
        assert asked + 36000 <= stored["ari_ask_again_at"] <= time.time() + 36000
        assert services.issuer.renewal_due("busy.example.test", later) is True
        assert ca.renewal_info_requests == 2, "not asked again before its Retry-After"
    finally:
        ca.stop()


def test_a_429_on_renewal_info_is_kept_a_day_at_most(
        services_with: ServicesWith, pebble: PebbleStack) -> None:
    """As a renewalInfo answer's own Retry-After (RFC 9773): a year would hide a window the CA
    moves meanwhile (a mass revocation) for that certificate."""
    ca = BusyAri(pebble)
    try:
        services = services_with(**behind(ca, pebble))
        with serving(create_app(services), pebble.http_port):
            services.issuer.issue(["busy.example.test"])
        ca.busy_for = str(365 * 86400)
        services.issuer.renewal_due("busy.example.test", datetime.datetime.now(UTC))
        stored = services.certificates.raw("busy.example.test")
        assert stored is not None and stored["ari_ask_again_at"] <= time.time() + 86400
    finally:
        ca.stop()

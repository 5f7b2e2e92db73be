"""DNS checks against a real DNS server (challtestsrv), ACME against real Pebble, with backoff."""
from __future__ import annotations

import dataclasses
import datetime
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from werkzeug.serving import make_server

from admin_app import create_app
from control.wiring import Services
from devtools.pebble import PebbleStack
from dnsops.dnscheck import DnsChecker, Problem
from domains.service import PENDING_DNS, VERIFIED
from kit.procs import free_port
from kit.settings import Settings
from store import Item
from tests.conftest import FakeClock, ServicesWith, on_pebble, serving


@pytest.fixture
def dns_settings(settings: Settings, pebble: PebbleStack) -> Settings:
    return dataclasses.replace(settings, dns_servers=["127.0.0.1"], dns_port=pebble.dns_port,
                               retry_base_seconds=0.2, retry_max_seconds=1.0)


def test_dns_check_explains_each_problem(dns_settings: Settings, pebble: PebbleStack) -> None:
    checker = DnsChecker.from_settings(dns_settings)
    pebble.set_cname("wrong.example.test", "elsewhere.example.net")
    result = checker.check("wrong.example.test", "tok-1")
    assert not result.ok
    assert result.problems[0] == Problem("cname_mismatch", (
        "Your CNAME wrong.example.test points to elsewhere.example.net; "
        "it must point to edge.platform.test."))
    assert result.problems[1].code == "txt_missing"
    assert "'tok-1'; we found none" in result.problems[1].message
    assert result.seen["resolver"]["CNAME wrong.example.test"] == ["elsewhere.example.net"]

    pebble.set_cname("right.example.test", "edge.platform.test")
    pebble.set_txt("_edge-challenge.right.example.test", "other")
    result = checker.check("right.example.test", "tok-2")
    assert result.problems == [Problem("txt_mismatch", "TXT record _edge-challenge.right."
                                       "example.test must contain 'tok-2'; we found 'other'.")]
    pebble.set_txt("_edge-challenge.right.example.test", "tok-2")
    assert checker.check("right.example.test", "tok-2").ok

    pebble.dns("/add-a", {"host": "apex-wrong.test.", "addresses": ["192.0.2.7"]})
    pebble.set_txt("_edge-challenge.apex-wrong.test", "tok-3")
    result = checker.check("apex-wrong.test", "tok-3")
    assert result.problems == [Problem("a_mismatch", "apex-wrong.test resolves to 192.0.2.7, "
                                       "which is not our edge (127.0.0.1).")]


def test_unreachable_dns_server_is_a_problem_not_a_crash(settings: Settings) -> None:
    silent = dataclasses.replace(settings, dns_servers=["127.0.0.1"], dns_port=free_port(),
                                 dns_timeout=0.3)
    result = DnsChecker.from_settings(silent).check("x.example.test", "t")
    assert not result.ok and {p.code for p in result.problems} <= {"dns_timeout", "dns_error"}


@pytest.fixture
def services(services_with: ServicesWith, dns_settings: Settings, clock: FakeClock) -> Services:
    return services_with(base=dns_settings, clock=clock)


def test_pending_domain_backs_off_then_verifies(services: Services, pebble: PebbleStack,
                                                clock: FakeClock) -> None:
    domain, _ = services.domains.connect("backoff.example.test", "pub_1")
    services.lifecycle.tick()
    domain = services.domains.get("backoff.example.test")
    assert domain["status"] == PENDING_DNS
    assert domain["attempts"] == 1 and "_edge-challenge" in domain["last_error"]
    assert [e["code"] for e in domain["validation_errors"]] == ["txt_missing"]
    assert domain["next_attempt_at"] > clock()
    services.lifecycle.tick()
    assert services.domains.get("backoff.example.test")["attempts"] == 1, "not due yet"
    pebble.set_txt("_edge-challenge.backoff.example.test", domain["token"])
    clock.advance(1.0)  # retry_max_seconds: the backoff is over
    due = services.domains.due(PENDING_DNS)
    assert [d["hostname"] for d in due] == ["backoff.example.test"]
    services.lifecycle.verify(due[0])
    verified = services.domains.get("backoff.example.test")
    assert verified["status"] == VERIFIED and verified["last_error"] is None


def test_failed_issuance_is_recorded_and_retried_later(dns_settings: Settings,
                                                       pebble: PebbleStack) -> None:
    broken = Services.from_settings(dataclasses.replace(
        dns_settings, acme_directory_url=f"https://127.0.0.1:{free_port()}/dir"))
    try:
        domain, _ = broken.domains.connect("late.example.test", "pub_1")
        pebble.set_txt("_edge-challenge.late.example.test", domain["token"])
        broken.lifecycle.tick()
        waiting = broken.domains.get("late.example.test")
        assert waiting["status"] == VERIFIED and not waiting.get("attempts"), \
            "no order while no edge node serves: the CA would find port 80 closed"
        broken.edge_state.report("edge-1", broken.edge_state.current_version(), None, True)
        broken.lifecycle.tick()  # an edge serves: the order goes out (and fails, as the CA is away)
        late = broken.domains.get("late.example.test")
        assert late["status"] == VERIFIED
        assert late["last_error"].startswith("certificate: ") and late["attempts"] == 1
        assert [e["what"] for e in broken.domains.timeline(late)][:2] == \
            ["issuing -> verified", "verified -> issuing"]
    finally:
        broken.close()


@pytest.fixture
def nonce_hostile_pebble(tmp_path: Path) -> Iterator[tuple[PebbleStack, int]]:
    """A Pebble rejecting 20% of good nonces, probing HTTP-01 on a port we answer on. The
    client tries a request ten times (five rounds of the library's two): at 40% one of an
    issuance's some 39 requests was refused ten times 0.4% of the runs."""
    http_port = free_port()
    stack = PebbleStack(tmp_path / "pebble", http_port=http_port,
                        env={"PEBBLE_WFE_NONCEREJECT": "20"})
    yield stack, http_port
    stack.stop()


class Killed(BaseException):
    """The process died here: nothing after this point runs and no handler catches it."""


def test_a_run_killed_after_the_ca_issued_orders_no_second_certificate(
        services_with: ServicesWith, pebble: PebbleStack) -> None:
    """Killed after storing the certificate, before closing the order journal (``early``) or
    before moving the domain on (``late``): the next run moves it to active without ordering
    again, and a renewal later orders a new certificate instead of resuming the finished
    order."""
    first = services_with(**on_pebble(pebble))
    first.edge_state.report("edge-1", first.edge_state.current_version(), None, True)
    early, late = "killed-early.example.test", "killed-late.example.test"
    acme = first.issuer.issuers[0]
    acme._orders.done = lambda hostnames: die()  # type: ignore[method-assign]
    issue = first.issuer.issue
    for hostname in (early, late):
        domain, _ = first.domains.connect(hostname, "pub_1")
        pebble.set_cname(hostname, "edge.platform.test")
        pebble.set_txt(f"_edge-challenge.{hostname}", domain["token"])
        first.lifecycle.verify(domain)
    with serving(create_app(first), pebble.http_port), pytest.raises(Killed):
        first.lifecycle.issue(first.domains.get(early))
    first.issuer.issue = lambda hostnames: (issue(hostnames), die())  # type: ignore
    acme._orders.done = type(acme._orders).done.__get__(acme._orders)  # type: ignore
    with serving(create_app(first), pebble.http_port), pytest.raises(Killed):
        first.lifecycle.issue(first.domains.get(late))
    serials = {h: first.certificates.get(h).serial for h in (early, late)}  # type: ignore

    restarted = services_with(**on_pebble(pebble))
    ordered = restarted.issuer.issue
    restarted.issuer.issue = lambda hostnames: pytest.fail(  # type: ignore[method-assign]
        f"ordered again for {hostnames}")
    for hostname in (early, late):
        assert restarted.domains.get(hostname)["status"] == "issuing"
        assert restarted.lifecycle.issue(restarted.domains.get(hostname))["status"] == "active"
        assert restarted.certificates.get(hostname).serial == serials[hostname]  # type: ignore
    restarted.issuer.issue = ordered  # type: ignore[method-assign]
    with serving(create_app(restarted), pebble.http_port):
        restarted.lifecycle.renew_now(early)
    assert restarted.certificates.get(early).serial != serials[early]  # type: ignore


def die() -> None:
    raise Killed()


def test_issuance_survives_bad_nonces_and_keeps_keys_encrypted(
        settings: Settings, nonce_hostile_pebble: tuple[PebbleStack, int]) -> None:
    hostile, http_port = nonce_hostile_pebble
    services = Services.from_settings(dataclasses.replace(
        settings, acme_directory_url=hostile.directory_url,
        acme_ca_bundle=str(hostile.listener_ca)))
    server = make_server("127.0.0.1", http_port, create_app(services), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        # The library alone retries once; the client's own retries take the rejections that
        # got past it (a request refused twice: 4% of them). Issued until one did, or 40.
        for n in range(40):
            services.issuer.issue([f"nonce{n}.example.test"])
            stored = services.certificates.get(f"nonce{n}.example.test")
            assert stored is not None and "Pebble" in stored.issuer
            assert stored.key_pem.startswith("-----BEGIN PRIVATE KEY-----")
            if n >= 4 and services.issuer.bad_nonce_retries:
                break
        assert services.issuer.bad_nonce_retries >= 1
        # Removing a domain revokes its certificate at the CA and destroys the key.
        serial = services.certificates.get("nonce0.example.test").serial  # type: ignore[union-attr]
        assert hostile.certificate_status(serial) == "Valid"
        services.issuer.discard(["nonce0.example.test"])
        assert hostile.certificate_status(serial) == "Revoked"
        assert services.certificates.get("nonce0.example.test") is None
    finally:
        server.shutdown()
        services.close()
    raw = b"".join(p.read_bytes() for p in Path(settings.sqlite_path).parent.glob("edge.db*"))
    assert b"PRIVATE KEY" not in raw
    assert b"BEGIN CERTIFICATE" in raw


def _verified_then_active(services: Services, pebble: PebbleStack, hostname: str) -> Item:
    """Verified through its DNS, then active with a stored certificate (the issuance itself is
    another test's), due for a recheck at once."""
    domain, _ = services.domains.connect(hostname, "pub_1")
    pebble.set_cname(hostname, "edge.platform.test")
    pebble.set_txt(f"_edge-challenge.{hostname}", domain["token"])
    services.lifecycle.verify(domain)
    services.certificates.save([hostname], *_cert_and_key(hostname))
    return services.domains.transition(services.domains.get(hostname), "active",
                                       "certificate issued", next_attempt_at=0)


def test_active_domain_whose_dns_moves_away_is_suspended_after_grace_then_resumes(
        dns_settings: Settings, pebble: PebbleStack, clock: FakeClock) -> None:
    services = Services.from_settings(dataclasses.replace(
        dns_settings, recheck_seconds=0.05, suspend_grace_seconds=3600), clock=clock)
    try:
        hostname = "moving.example.test"
        active = _verified_then_active(services, pebble, hostname)
        services.lifecycle.publish_routes()
        assert routes(services) == [hostname]

        pebble.set_cname(hostname, "someone-else.example.net")  # the publisher moved away
        services.lifecycle.recheck(active)
        grace = services.domains.get(hostname)
        assert grace["status"] == "active" and grace["dns_away_since"]
        assert [e["code"] for e in grace["validation_errors"]] == ["cname_mismatch"]
        assert routes(services) == [hostname], "still routed during the grace period"
        clock.advance(3601)
        suspended = services.lifecycle.recheck(services.domains.get(hostname))
        assert suspended["status"] == "suspended"
        assert routes(services) == [], "route removed: a dangling record cannot take it over"

        pebble.set_cname(hostname, "edge.platform.test")
        resumed = services.lifecycle.recheck(suspended)
        assert resumed["status"] == "active" and resumed["dns_away_since"] is None
        assert routes(services) == [hostname]
        assert [(e["from"], e["to"]) for e in services.domains.timeline(resumed)][:2] == \
            [("suspended", "active"), ("active", "suspended")]
    finally:
        services.close()


def test_an_item_of_the_previous_release_keeps_its_grace_period(
        dns_settings: Settings, pebble: PebbleStack, clock: FakeClock) -> None:
    """The previous release named the start of the grace ``failing_since``: an item it wrote
    is suspended when that grace ends, and single sign-on stops for it meanwhile."""
    services = Services.from_settings(dataclasses.replace(
        dns_settings, recheck_seconds=0.05, suspend_grace_seconds=3600), clock=clock)
    try:
        hostname = "older.example.test"
        active = _verified_then_active(services, pebble, hostname)
        older = services.domains.table.put({**active, "failing_since": clock.now - 3000},
                                           expected_version=active["version"])
        services.lifecycle.publish_routes()
        assert services.domains.sign_in_publication(hostname) == ("pub_1", True)

        pebble.set_cname(hostname, "someone-else.example.net")
        grace = services.lifecycle.recheck(older)
        assert grace["status"] == "active" and grace["dns_away_since"] == clock.now - 3000
        clock.advance(601)
        assert services.lifecycle.recheck(grace)["status"] == "suspended"
        assert routes(services) == []

        pebble.set_cname(hostname, "edge.platform.test")
        resumed = services.lifecycle.recheck(services.domains.get(hostname))
        assert resumed["status"] == "active" and resumed["dns_away_since"] is None
        assert resumed["failing_since"] is None
        assert services.domains.sign_in_publication(hostname) == ("pub_1", False)
    finally:
        services.close()


def test_pending_domain_is_given_up_then_revived_by_a_manual_check(
        dns_settings: Settings, pebble: PebbleStack, clock: FakeClock) -> None:
    services = Services.from_settings(dataclasses.replace(dns_settings, give_up_seconds=3600),
                                      clock=clock)
    try:
        domain, _ = services.domains.connect("never.example.test", "pub_1")
        clock.advance(3601)
        services.lifecycle.verify(domain)
        given_up = services.domains.get("never.example.test")
        assert given_up["gave_up"] is True and given_up["next_attempt_at"] is None
        assert given_up not in services.domains.due("pending_dns")
        pebble.set_txt("_edge-challenge.never.example.test", domain["token"])
        revived, result = services.lifecycle.check_now("never.example.test")
        assert result.ok and revived["status"] == "verified"
    finally:
        services.close()


def routes(services: Services) -> list[str]:
    state = services.edge_state.load()
    return [r["hostname"] for r in state["routes"]] if state else []


def _cert_and_key(hostname: str) -> tuple[str, bytes]:
    from kit.x509 import self_signed
    cert, combined = self_signed(hostname)
    return cert, combined[len(cert):].encode()


def test_certificate_is_renewed_at_two_thirds_and_swapped_in(
        services_with: ServicesWith, dns_settings: Settings, pebble: PebbleStack,
        clock: FakeClock) -> None:
    services = services_with(base=dns_settings, clock=clock, recheck_seconds=0.1,
                             **on_pebble(pebble))
    hostname = "renew.example.test"
    domain, _ = services.domains.connect(hostname, "pub_1")
    pebble.set_txt(f"_edge-challenge.{hostname}", domain["token"])
    with serving(create_app(services), pebble.http_port):
        services.lifecycle.issue(services.lifecycle.verify(domain))
        first = services.certificates.get(hostname)
        assert first is not None
        before = routes_with_fingerprints(services)
        assert services.lifecycle.recheck(services.domains.get(hostname))["status"] == "active"
        assert services.certificates.get(hostname).serial == first.serial, "too early"
        not_before = datetime.datetime.fromisoformat(first.not_before).timestamp()
        not_after = datetime.datetime.fromisoformat(first.not_after).timestamp()
        clock.now = not_before + (not_after - not_before) * 0.72  # past two thirds
        services.lifecycle.recheck(services.domains.get(hostname))
    renewed = services.certificates.get(hostname)
    assert renewed is not None and renewed.serial != first.serial
    assert routes_with_fingerprints(services) != before, "the edge gets the new certificate"
    assert services.domains.timeline(services.domains.get(hostname))[0]["what"] == \
        "certificate renewed"


@pytest.mark.parametrize("order", ["first", "renewal", "on-request"])
def test_a_removal_while_the_ca_answers_leaves_no_certificate_behind(
        order: str, services_with: ServicesWith, dns_settings: Settings, pebble: PebbleStack,
        clock: FakeClock) -> None:
    """The publisher removes its domain while its order is in flight: the removal revokes what
    is stored, then the order stores a certificate. That one is revoked too, or the hostname's
    next holder would be served it (``holds``: no order of its own). An operator's "renew now"
    too, which says why it failed."""
    services = services_with(base=dns_settings, clock=clock, **on_pebble(pebble))
    hostname = f"{order}-gone.example.test"
    domain, _ = services.domains.connect(hostname, "pub_1")
    pebble.set_txt(f"_edge-challenge.{hostname}", domain["token"])
    issue = services.issuer.issue
    with serving(create_app(services), pebble.http_port):
        domain = services.lifecycle.verify(domain)
        if order != "first":
            services.lifecycle.issue(domain)
            first = services.certificates.get(hostname)
            assert first is not None
            not_before = datetime.datetime.fromisoformat(first.not_before).timestamp()
            not_after = datetime.datetime.fromisoformat(first.not_after).timestamp()
            clock.now = not_before + (not_after - not_before) * 0.72
        services.issuer.issue = lambda hostnames: (  # type: ignore
            services.lifecycle.remove(hostname), issue(hostnames))[1]
        if order == "renewal":
            services.lifecycle.recheck(services.domains.get(hostname))
        elif order == "on-request":
            with pytest.raises(ValueError, match="changed hands during its renewal: the "
                               "certificate just issued is revoked"):
                services.lifecycle.renew_now(hostname)
        else:
            services.lifecycle.issue(services.domains.get(hostname))
    assert services.domains.find(hostname) is None
    assert services.certificates.get(hostname) is None and not services.issuer.holds(hostname)


def routes_with_fingerprints(services: Services) -> list[tuple[str, str]]:
    state = services.edge_state.load()
    return [(r["hostname"], r["cert_sha256"]) for r in state["routes"]] if state else []


def test_discarding_one_certificate_leaves_the_one_stored_since(
        services_with: ServicesWith, pebble: PebbleStack) -> None:
    """An order that ends after its claim lost the hostname discards the certificate it
    stored, by its serial: one the hostname's next holder stored since (another replica) is
    neither revoked nor deleted."""
    services = services_with(**on_pebble(pebble))
    acme = services.issuer.issuers[0]
    hostname = "handed-on.example.test"
    with serving(create_app(services), pebble.http_port):
        first = acme.issue([hostname])
        assert first == services.certificates.get(hostname).serial  # type: ignore[union-attr]
        second = acme.issue([hostname])  # the next holder's, stored over it
        acme.discard([hostname], first)
        assert services.certificates.get(hostname).serial == second  # type: ignore[union-attr]
        assert pebble.certificate_status(second) == "Valid"
        acme.discard([hostname], second)
    assert pebble.certificate_status(second) == "Revoked"
    assert services.certificates.get(hostname) is None


def test_a_renewal_that_lost_its_claim_leaves_the_next_holders_certificate(
        services_with: ServicesWith, dns_settings: Settings, pebble: PebbleStack,
        clock: FakeClock) -> None:
    """Its order ends after the publisher removed the domain and another publication connected
    it and got its certificate (another replica): only the renewal's own certificate goes."""
    services = services_with(base=dns_settings, clock=clock, **on_pebble(pebble))
    hostname = "handed-over.example.test"
    domain, _ = services.domains.connect(hostname, "pub_1")
    pebble.set_txt(f"_edge-challenge.{hostname}", domain["token"])
    issue = services.issuer.issue
    theirs: list[str] = []

    def renewal_then_next_holder(hostnames: list[str]) -> str:
        ours = issue(hostnames)
        services.lifecycle.remove(hostname)
        services.domains.connect(hostname, "pub_2")
        theirs.append(issue(hostnames))  # the next holder's order, stored after ours
        return ours

    with serving(create_app(services), pebble.http_port):
        first = services.lifecycle.issue(services.lifecycle.verify(domain))
        stored = services.certificates.get(hostname)
        assert first["status"] == "active" and stored is not None
        not_before = datetime.datetime.fromisoformat(stored.not_before).timestamp()
        not_after = datetime.datetime.fromisoformat(stored.not_after).timestamp()
        clock.now = not_before + (not_after - not_before) * 0.72
        services.issuer.issue = renewal_then_next_holder  # type: ignore[method-assign]
        services.lifecycle.recheck(services.domains.get(hostname))
    assert services.domains.get(hostname)["publication_id"] == "pub_2"
    assert services.certificates.get(hostname).serial == theirs[0]  # type: ignore[union-attr]
    assert pebble.certificate_status(theirs[0]) == "Valid"

"""An ordered list of CAs: when the first fails, the next (here with EAB, as ZeroSSL needs)."""
from __future__ import annotations

import dataclasses
import datetime
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from cryptography.fernet import Fernet
from werkzeug.serving import make_server

from admin_app import create_app
from certs.issuer import IssuanceError
from control.wiring import Services
from devtools.pebble import PebbleStack
from kit.procs import free_port
from kit.settings import Settings

EAB_KID = "kid-1"
EAB_KEY = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"


@pytest.fixture
def eab_pebble(tmp_path: Path) -> Iterator[PebbleStack]:
    stack = PebbleStack(tmp_path / "eab", http_port=free_port(), eab_keys={EAB_KID: EAB_KEY})
    yield stack
    stack.stop()


@pytest.fixture
def failing_pebble(tmp_path: Path) -> Iterator[PebbleStack]:
    """A first CA that fails every validation: nothing answers on its HTTP-01 port."""
    stack = PebbleStack(tmp_path / "first", http_port=free_port())
    yield stack
    stack.stop()


def services_for(settings: Settings, eab_pebble: PebbleStack, first: PebbleStack,
                 with_eab: bool) -> tuple[Services, object]:
    second = {"directory_url": eab_pebble.directory_url,
              "ca_bundle": str(eab_pebble.listener_ca)}
    if with_eab:
        second.update(eab_kid=EAB_KID, eab_hmac_key=EAB_KEY)
    services = Services.from_settings(dataclasses.replace(settings, acme_issuers=[
        {"directory_url": first.directory_url, "ca_bundle": str(first.listener_ca)}, second]))
    server = make_server("127.0.0.1", eab_pebble.http_port, create_app(services), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return services, server


def test_second_ca_with_eab_issues_when_the_first_fails(
        settings: Settings, eab_pebble: PebbleStack, failing_pebble: PebbleStack) -> None:
    services, server = services_for(settings, eab_pebble, failing_pebble, with_eab=True)
    try:
        services.issuer.issue(["fallback.example.test"])
        stored = services.certificates.get("fallback.example.test")
        assert stored is not None and stored.ca == eab_pebble.directory_url
        # A recheck asks whether to renew without the private key: a replica whose key cannot
        # open it (the key is decrypted only for an agent's download) still answers, once the
        # CA's renewal window is kept on the item (asking the CA needs the account's key).
        assert services.issuer.renewal_due("fallback.example.test") is False
        sealed = Services.from_settings(dataclasses.replace(
            settings, encryption_keys=[Fernet.generate_key().decode()], acme_issuers=[
                {"directory_url": failing_pebble.directory_url}, {
                    "directory_url": eab_pebble.directory_url,
                    "ca_bundle": str(eab_pebble.listener_ca)}]))
        try:
            assert sealed.issuer.renewal_due("fallback.example.test") is False
            with pytest.raises(Exception):
                sealed.certificates.get("fallback.example.test")  # what it used to read
        finally:
            sealed.close()
        services.issuer.discard(["fallback.example.test"])  # revoked at the CA that issued it
        assert eab_pebble.certificate_status(stored.serial) == "Revoked"
    finally:
        server.shutdown()  # type: ignore[attr-defined]
        services.close()


def test_without_eab_the_second_ca_refuses_and_every_reason_is_reported(
        settings: Settings, eab_pebble: PebbleStack, failing_pebble: PebbleStack) -> None:
    services, server = services_for(settings, eab_pebble, failing_pebble, with_eab=False)
    try:
        with pytest.raises(IssuanceError) as caught:
            services.issuer.issue(["noeab.example.test"])
        reason = caught.value.reason
        assert "validation invalid" in reason and "externalAccount" in reason, reason
    finally:
        server.shutdown()  # type: ignore[attr-defined]
        services.close()


def test_a_profile_the_ca_does_not_offer_is_refused_with_a_reason(
        settings: Settings, eab_pebble: PebbleStack) -> None:
    services = Services.from_settings(dataclasses.replace(settings, acme_issuers=[{
        "directory_url": eab_pebble.directory_url, "ca_bundle": str(eab_pebble.listener_ca),
        "eab_kid": EAB_KID, "eab_hmac_key": EAB_KEY, "profile": "shortlived"}]))
    try:
        with pytest.raises(IssuanceError, match="offers no profile 'shortlived'"):
            services.issuer.issue(["profile.example.test"])
    finally:
        services.close()


def test_ari_window_drives_renewal_and_the_order_names_what_it_replaces(
        settings: Settings, tmp_path: Path) -> None:
    from certs.ari import cert_id
    from cryptography import x509
    from tests.ari_proxy import AriProxy

    pebble = PebbleStack(tmp_path / "ari", http_port=free_port())
    proxy = AriProxy(pebble)
    services = Services.from_settings(dataclasses.replace(
        settings, acme_directory_url=proxy.directory_url, acme_ca_bundle=str(pebble.listener_ca),
        acme_orders_per_3h=1))
    server = make_server("127.0.0.1", pebble.http_port, create_app(services), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        services.issuer.issue(["ari.example.test"])  # takes the one new order of the budget
        first = services.certificates.get("ari.example.test")
        assert first is not None and "replaces" not in proxy.new_orders[-1]
        proxy.window = (3600.0, 7200.0)  # the CA suggests renewing in an hour: not yet
        assert services.issuer.renewal_due("ari.example.test") is False
        proxy.window = (-7200.0, -60.0)  # the window has passed: renew now (a 5-year cert!)
        assert services.issuer.renewal_due("ari.example.test") is False, \
            "the CA's answer is kept until its Retry-After (6 h without one)"
        assert proxy.renewal_info_requests == 1
        later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=7)
        assert services.issuer.renewal_due("ari.example.test", now=later) is True
        assert proxy.renewal_info_requests == 2
        services.issuer.issue(["ari.example.test"])  # an ARI renewal: exempt, like at the CA
        old = x509.load_pem_x509_certificate(first.fullchain_pem.encode())
        assert proxy.new_orders[-1]["replaces"] == cert_id(old)
        assert services.certificates.get("ari.example.test").serial != first.serial
    finally:
        server.shutdown()
        services.close()
        proxy.stop()
        pebble.stop()


def test_a_ca_that_stops_answering_holds_a_removal_no_longer_than_the_revocation_timeout(
        settings: Settings, pebble: PebbleStack) -> None:
    """A removal (in the API's request) revokes the certificate: a CA that stopped answering
    (the suite's Pebble once wedged so) holds it ``REVOKE_SECONDS``, not the 45 s of the CA's
    other requests; the key is destroyed all the same."""
    from certs.issuer import REVOKE_SECONDS
    from tests.ari_proxy import AriProxy

    proxy = AriProxy(pebble)
    services = Services.from_settings(dataclasses.replace(
        settings, acme_directory_url=proxy.directory_url, acme_ca_bundle=str(pebble.listener_ca)))
    server = make_server("127.0.0.1", pebble.http_port, create_app(services), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        services.issuer.issue(["hung.example.test"])
        serial = services.certificates.get("hung.example.test").serial  # type: ignore[union-attr]
        proxy.stalled = "/revoke-cert"
        removal = threading.Thread(target=services.issuer.discard, args=(["hung.example.test"],))
        removal.start()
        removal.join(REVOKE_SECONDS + 20)
        assert not removal.is_alive(), "the removal still waits for the CA"
        assert services.certificates.get("hung.example.test") is None
        assert pebble.certificate_status(serial) == "Valid"  # the CA never heard of it
    finally:
        proxy.released.set()
        server.shutdown()
        services.close()
        proxy.stop()


def test_a_429_defers_until_retry_after(settings: Settings, tmp_path: Path) -> None:
    from tests.ari_proxy import AriProxy

    pebble = PebbleStack(tmp_path / "limited", http_port=free_port())
    proxy = AriProxy(pebble)
    services = Services.from_settings(dataclasses.replace(
        settings, acme_directory_url=proxy.directory_url, acme_ca_bundle=str(pebble.listener_ca)))
    try:
        proxy.rate_limit = "1800"
        started = time.time()
        with pytest.raises(IssuanceError) as caught:
            services.issuer.issue(["busy.example.test"])
        assert "rate-limits us: too many new orders" in caught.value.reason
        assert started + 1790 <= (caught.value.retry_after or 0) <= time.time() + 1810
        domain, _ = services.domains.connect("busy.example.test", "pub_1")
        deferred = services.lifecycle.issue(services.domains.transition(
            domain, "verified", "test", next_attempt_at=0))
        assert deferred["status"] == "verified"
        assert deferred["next_attempt_at"] >= started + 1790, "waits out Retry-After"
    finally:
        services.close()
        proxy.stop()
        pebble.stop()


def test_a_valid_authorization_the_ca_reuses_is_not_answered_again(
        settings: Settings, tmp_path: Path) -> None:
    """Let's Encrypt hands an account's valid authorization for a name to its next order (the
    tests' Pebbles do not, as that can wedge Pebble: devtools/pebble.py): the order comes
    with it valid, nothing is validated again, and the certificate is issued."""
    stack = PebbleStack(tmp_path / "reuse", http_port=free_port(),
                        env={"PEBBLE_AUTHZREUSE": "100"})
    services = Services.from_settings(dataclasses.replace(
        settings, acme_directory_url=stack.directory_url, acme_ca_bundle=str(stack.listener_ca)))
    server = make_server("127.0.0.1", stack.http_port, create_app(services), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        serials = set()
        for _ in range(2):
            services.issuer.issue(["again.example.test"])
            serials.add(services.certificates.get("again.example.test").serial)  # type: ignore
        assert len(serials) == 2
        log = (stack.directory / "pebble.log").read_text()
        assert log.count("Pulled a task from the Tasks queue") == 1, "validated once"
    finally:
        server.shutdown()
        services.close()
        stack.stop()


def test_rsa_keys_by_setting(settings: Settings, eab_pebble: PebbleStack) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa
    services = Services.from_settings(dataclasses.replace(
        settings, certificate_key_type="rsa2048", acme_issuers=[{
            "directory_url": eab_pebble.directory_url, "ca_bundle": str(eab_pebble.listener_ca),
            "eab_kid": EAB_KID, "eab_hmac_key": EAB_KEY}]))
    server = make_server("127.0.0.1", eab_pebble.http_port, create_app(services), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        services.issuer.issue(["rsa.example.test"])
        stored = services.certificates.get("rsa.example.test")
        from certs.keys import key_from_pem
        key = key_from_pem(stored.key_pem.encode())  # type: ignore[union-attr]
        assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    finally:
        server.shutdown()
        services.close()

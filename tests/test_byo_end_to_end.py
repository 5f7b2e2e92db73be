"""Bring your own certificate for real: control service, agent, HAProxy, Pebble, all processes.
An uploaded certificate (from a LocalCA) is what HAProxy hands out for the host, read from a
TLS handshake on loopback; removing it, or reaching its fallback time, puts Pebble's back."""
from __future__ import annotations

import socket
import ssl
import time
from typing import Any, Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from devtools.demo import LocalStack
from devtools.pebble import PebbleStack
from devtools.probe import https_get
from kit.x509 import LocalCA, build_certificate, cert_to_pem, key_to_pem
from tests.webhook_receiver import Receiver

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("byo-stack")]

HOST = "byo.example.test"


@pytest.fixture(scope="module")
def hooks() -> Iterator[Receiver]:
    server = Receiver()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pebble: PebbleStack,
          hooks: Receiver) -> Iterator[LocalStack]:
    local = LocalStack(tmp_path_factory.mktemp("byo"), pebble=pebble,
                       extra_env={"EDGE_WEBHOOK_URL": hooks.url,
                                  "EDGE_WEBHOOK_SECRET": "webhook-secret-0123456789",
                                  "EDGE_BYO_PRIVATE_ROOTS": "true"})
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def acme(stack: LocalStack) -> x509.Certificate:
    """HOST active, served with Pebble's certificate (which stays as the fallback)."""
    created = stack.api("POST", "/api/v1/domains", json={"hostname": HOST,
                                                         "publication_id": "pub_byo"})
    stack.create_records(created.json()["dns_records"])
    stack.wait_active(HOST)
    served = stack.wait_served(HOST).certificate
    assert "Pebble" in served.issuer.rfc4514_string()
    return served


def served_certificate(port: int, hostname: str) -> x509.Certificate:
    """The leaf HAProxy sends for ``hostname`` (SNI), unverified: we compare it ourselves (so
    no trust store is loaded: 28 ms of CPU a poll)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=hostname) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def sha256(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def wait_served_sha(stack: LocalStack, hostname: str, expected: str,
                    timeout: float = 30.0) -> float:
    """Seconds until the edge hands out the certificate whose SHA-256 is ``expected``."""
    start = time.monotonic()
    seen = ""
    while time.monotonic() - start < timeout:
        seen = sha256(served_certificate(stack.edge_https_port, hostname))
        if seen == expected:
            return time.monotonic() - start
        stack.check_alive()
        time.sleep(0.05)
    raise AssertionError(f"{hostname} serves {seen}, not {expected}, after {timeout}s")


def hook_bodies(hooks: Receiver, event_type: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r["body"]["data"] for r in hooks.received() if r["type"] == event_type]
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {event_type} webhook: {hooks.received()}")


def upload(stack: LocalStack, ca: LocalCA, days: float | None = None) -> x509.Certificate:
    cert, key = ca.issue([HOST], days=days)
    answer = stack.api("PUT", f"/api/v1/domains/{HOST}/certificate",
                       json={"certificate": cert + ca.pem, "private_key": key})
    assert answer.status_code == 200, answer.text
    return x509.load_pem_x509_certificate(cert.encode())


def test_an_uploaded_certificate_is_served_and_ours_comes_back(
        stack: LocalStack, hooks: Receiver, acme: x509.Certificate) -> None:
    ca = LocalCA()
    leaf = upload(stack, ca)
    wait_served_sha(stack, HOST, sha256(leaf))
    # Served to visitors with its chain, verified against the publisher's CA, by the app.
    probe = https_get(stack.edge_https_port, HOST, cadata=ca.pem)
    assert probe.status == 200 and probe.json()["publication_id"] == "pub_byo"
    uploaded = hook_bodies(hooks, "certificate.uploaded")[0]
    assert uploaded["fingerprint"] == sha256(leaf) and uploaded["served"] is True
    timeline = [e["what"] for e in stack.api("GET", f"/api/v1/domains/{HOST}").json()["events"]]
    assert "uploaded certificate" in timeline

    # Replaced by an RSA one: HAProxy swaps the key type in place, hot.
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = build_certificate("rsa test CA", ca_key, ca=True)
    rsa_key = rsa.generate_private_key(65537, 2048)
    rsa_leaf = build_certificate(HOST, rsa_key, signer=ca_key, issuer=ca_cert.subject,
                                 names=[HOST])
    answer = stack.api("PUT", f"/api/v1/domains/{HOST}/certificate", json={
        "certificate": cert_to_pem(rsa_leaf) + cert_to_pem(ca_cert),
        "private_key": key_to_pem(rsa_key)})
    assert answer.status_code == 200, answer.text
    wait_served_sha(stack, HOST, sha256(rsa_leaf))
    assert https_get(stack.edge_https_port, HOST, cadata=cert_to_pem(ca_cert)).status == 200

    assert stack.api("DELETE", f"/api/v1/domains/{HOST}/certificate").status_code == 200
    wait_served_sha(stack, HOST, sha256(acme))
    assert hook_bodies(hooks, "certificate.fallback")[0]["reason"] == "removed"
    timeline = [e["what"] for e in stack.api("GET", f"/api/v1/domains/{HOST}").json()["events"]]
    assert timeline[0] == "ACME certificate served again"


def test_an_upload_near_its_expiry_falls_back_to_ours(
        stack: LocalStack, hooks: Receiver, acme: x509.Certificate) -> None:
    # Valid 7 days (byo_fallback_days) and 12 seconds: served for 12 seconds.
    leaf = upload(stack, LocalCA(), days=7 + 12 / 86400)
    wait_served_sha(stack, HOST, sha256(leaf))
    took = wait_served_sha(stack, HOST, sha256(acme), timeout=40)
    assert took > 5  # not at once: at its due time
    fallbacks = hook_bodies(hooks, "certificate.fallback")
    deadline = time.monotonic() + 20
    while not any(f["reason"] == "expiring" for f in fallbacks):
        assert time.monotonic() < deadline, fallbacks
        time.sleep(0.1)
        fallbacks = hook_bodies(hooks, "certificate.fallback")
    shown = stack.api("GET", f"/api/v1/domains/{HOST}/certificate").json()
    assert shown["retired"] is True and shown["served"] is False

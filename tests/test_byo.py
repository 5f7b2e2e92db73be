"""Bring your own certificate through the publisher API (the control service's app, its real
store): every bad upload is a 400 with one sentence, a good one becomes the route's
certificate, its removal and its fallback time put ours back, with timeline and webhooks.
HAProxy serving it is in test_byo_end_to_end.py."""
from __future__ import annotations

import dataclasses
import re
import datetime
import time
from typing import Any, Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from flask.testing import FlaskClient

from admin_app import create_app
from certs.byo import UploadRejected, covers, validate
from control.wiring import Services
from domains.outbox import OUTBOX
from edge.node import EdgeNode
from edge.state import DesiredState, Route, StateDelta, fingerprint
from kit.settings import Settings
from kit.x509 import LocalCA, build_certificate, cert_to_pem, key_to_pem, self_signed
from store import ConflictError
from tests.conftest import FakeClock, ServicesWith

HOST = "shop.example.test"
TOKEN = "test-token-0123456789"


# A webhook endpoint: the events go to the outbox.
WEBHOOKS = {"webhook_url": "http://127.0.0.1:9/never-delivered", "webhook_secret": "s" * 20}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The uploads here come from private CAs (``LocalCA``): trusted to their own root."""
    return dataclasses.replace(settings, byo_private_roots=True)


@pytest.fixture
def services(services_with: ServicesWith) -> Services:
    return services_with(**WEBHOOKS)


@pytest.fixture
def both(services_with: ServicesWith, any_backend: Settings) -> Services:
    return services_with(base=any_backend, **WEBHOOKS)


def activate(services: Services, hostname: str = HOST, publication: str = "pub_1") -> str:
    """An active domain with an ACME-like certificate on the edge; its route's PEM."""
    domain, _ = services.domains.connect(hostname, publication)
    key = ec.generate_private_key(ec.SECP256R1())
    cert, _ = self_signed(hostname, key)
    services.certificates.save([hostname], cert, key_to_pem(key).encode())
    services.lifecycle.domains.transition(domain, "active", "seeded",
                                          next_attempt_at=time.time() + 3600)
    services.publisher.route_changes({hostname: publication})
    stored = services.certificates.get(hostname)
    assert stored is not None
    return stored.combined_pem


def served_sha(services: Services, hostname: str = HOST) -> str:
    return str(services.edge_state.routes.get(hostname)["cert_sha256"])  # type: ignore[index]


def put(client: FlaskClient, certificate: str, key: str, hostname: str = HOST,
        token: str = TOKEN) -> Any:
    return client.put(f"/api/v1/domains/{hostname}/certificate",
                      json={"certificate": certificate, "private_key": key},
                      headers={"Authorization": f"Bearer {token}"})


def call(client: FlaskClient, method: str, hostname: str = HOST) -> Any:
    return client.open(f"/api/v1/domains/{hostname}/certificate", method=method,
                       headers={"Authorization": f"Bearer {TOKEN}"})


def webhooks(services: Services, event_type: str) -> list[dict[str, Any]]:
    return [item["data"] for item in services.webhooks.table.scan(limit=500).items
            if item.get("type") == event_type]  # the table's counts item has none


def dated(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, names: list[str],
          not_before: datetime.datetime, not_after: datetime.datetime) -> tuple[str, str]:
    """A certificate with chosen dates, signed by ``ca_key`` (chain PEM with the CA, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), False)
            .sign(ca_key, hashes.SHA256()))
    return cert_to_pem(cert) + cert_to_pem(ca_cert), key_to_pem(key)


def test_an_upload_is_served_instead_of_ours_and_removed_gives_ours_back(
        both: Services) -> None:
    services = both
    client = create_app(services).test_client()
    acme_pem = activate(services)
    assert served_sha(services) == fingerprint(acme_pem)
    ca = LocalCA()
    cert, key = ca.issue([HOST])
    answer = put(client, cert + ca.pem, key)
    assert answer.status_code == 200, answer.text
    body = answer.get_json()
    leaf = x509.load_pem_x509_certificate(cert.encode())
    assert body["fingerprint"] == leaf.fingerprint(hashes.SHA256()).hex()
    assert body["served"] is True and body["names"] == [HOST]
    assert "key" not in str(sorted(body)).replace("private", "")  # no key of any kind
    # The route's certificate is the upload now (chain re-serialized, key in PKCS#8).
    assert served_sha(services) == fingerprint(cert + ca.pem + key)
    assert call(client, "GET").get_json()["upload_id"] == body["upload_id"]
    # Ours is still there as the fallback, and the timeline and the platform know.
    assert services.certificates.get(HOST) is not None
    whats = [e["what"] for e in services.domains.timeline(services.domains.get(HOST))]
    assert "uploaded certificate" in whats
    assert webhooks(services, "certificate.uploaded")[0]["fingerprint"] == body["fingerprint"]

    removed = call(client, "DELETE")
    assert removed.status_code == 200 and removed.get_json() == {"removed": HOST}
    assert served_sha(services) == fingerprint(acme_pem)
    assert call(client, "GET").status_code == 404
    assert call(client, "DELETE").status_code == 404
    assert webhooks(services, "certificate.fallback")[0]["reason"] == "removed"
    whats = [e["what"] for e in services.domains.timeline(services.domains.get(HOST))]
    assert "ACME certificate served again" in whats


def test_the_fallback_comes_at_its_due_time_from_one_index_query(
        any_backend: Settings) -> None:
    settings = any_backend
    # The upload is valid 1 day; we stop serving it 1 day minus 120 s before its expiry, and
    # the services' clock jumps those 120 s (however long the steps before took).
    ahead = [0.0]
    opened = Services.from_settings(dataclasses.replace(
        settings, byo_fallback_days=1 - 120 / 86400, webhook_url="http://127.0.0.1:9/x",
        webhook_secret="s" * 20), clock=lambda: time.time() + ahead[0])
    try:
        custom = opened.custom_certificates
        assert custom is not None
        acme_pem = activate(opened)
        ca = LocalCA()
        cert, key = ca.issue([HOST], days=1)
        upload = custom.check(HOST, cert + ca.pem, key)
        custom.upload(opened.domains.get(HOST), upload)
        assert served_sha(opened) == fingerprint(cert + ca.pem + key)
        before = opened.backend.requests
        assert custom.fall_back_due() == 0  # not due yet: one query
        assert opened.backend.requests - before == 1
        ahead[0] = 121.0
        assert custom.fall_back_due() == 1, "due at its time"
        assert served_sha(opened) == fingerprint(acme_pem)
        assert webhooks(opened, "certificate.fallback")[0]["reason"] == "expiring"
        assert custom.uploads.describe(HOST)["retired"] is True  # type: ignore[index]
        assert custom.fall_back_due() == 0  # once
        # A reconciliation (a restart) agrees: ours is served.
        opened.lifecycle.publish_routes()
        assert served_sha(opened) == fingerprint(acme_pem)
    finally:
        opened.close()


def test_removing_the_domain_forgets_its_upload(client: FlaskClient, services: Services) -> None:
    activate(services)
    ca = LocalCA()
    assert put(client, *_chain(ca)).status_code == 200
    assert client.delete(f"/api/v1/domains/{HOST}",
                         headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert services.custom_certificates is not None
    assert services.custom_certificates.uploads.describe(HOST) is None
    # Whoever connects the hostname next starts from nothing.
    activate(services, publication="pub_2")
    assert services.certificates.get(HOST) is not None
    assert services.custom_certificates.uploads.serving(HOST) is None


def test_the_key_is_encrypted_at_rest(client: FlaskClient, services: Services,
                                      settings: Settings) -> None:
    activate(services)
    cert, key = _chain(LocalCA())
    assert put(client, cert, key).status_code == 200
    body = key.split("-----")[2].strip().splitlines()[1]
    stored = b"".join(p.read_bytes() for p in
                      __import__("pathlib").Path(settings.data_dir).glob("*.db*"))
    assert b"BEGIN CERTIFICATE" in stored
    assert body.encode() not in stored and b"PRIVATE KEY" not in stored


def test_a_publication_token_uploads_only_for_its_own_domains(
        client: FlaskClient, services: Services) -> None:
    activate(services)
    activate(services, "other.example.test", "pub_2")
    own, _ = services.tokens.create("pub_1")
    ca = LocalCA()
    assert put(client, *_chain(ca), token=own).status_code == 200
    cert, key = ca.issue(["other.example.test"])
    assert put(client, cert + ca.pem, key, "other.example.test", own).status_code == 404


def test_a_domain_not_verified_yet_takes_no_upload(client: FlaskClient,
                                                   services: Services) -> None:
    services.domains.connect("new.example.test", "pub_1")
    ca = LocalCA()
    cert, key = ca.issue(["new.example.test"])
    answer = put(client, cert + ca.pem, key, "new.example.test")
    assert answer.status_code == 409 and "not verified yet" in answer.get_json()["error"]
    assert call(client, "GET", "unknown.example.test").status_code == 404


def test_an_upload_checked_before_the_domain_changed_hands_does_not_land_on_the_new_claim(
        services: Services) -> None:
    """Publication A's upload request reads the domain and checks the chain; meanwhile A's
    domain is removed and B connects the hostname. A's write finds another claim: refused, and
    B's claim gets no upload (its edge would serve A's key once B is active)."""
    activate(services)
    custom = services.custom_certificates
    assert custom is not None
    seen_by_a = services.domains.get(HOST)
    ca = LocalCA()
    cert, key = ca.issue([HOST])
    checked = custom.check(HOST, cert + ca.pem, key)
    services.lifecycle.remove(HOST)
    services.domains.connect(HOST, "pub_2")
    with pytest.raises(ConflictError):
        custom.upload(seen_by_a, checked)
    assert custom.uploads.describe(HOST) is None
    claim = services.domains.get(HOST)
    assert claim["publication_id"] == "pub_2" and not claim.get(OUTBOX)
    assert "uploaded certificate" not in [e["what"] for e in services.domains.timeline(claim)]


def test_a_claim_released_unproven_leaves_its_certificate_and_upload_to_nobody(
        services_with: ServicesWith, clock: FakeClock) -> None:
    """A pre-validated domain whose ownership record went falls back to pending_dns holding
    its certificate and an upload; past the claim's time another publication's connect
    releases it. The new claim starts from nothing: no certificate to serve or reuse."""
    services = services_with(clock=clock, claim_ttl_seconds=3600, **WEBHOOKS)
    custom = services.custom_certificates
    assert custom is not None
    activate(services)
    ca = LocalCA()
    cert, key = ca.issue([HOST])
    custom.upload(services.domains.get(HOST), custom.check(HOST, cert + ca.pem, key))
    services.domains.transition(services.domains.get(HOST), "pending_dns", "ownership lost")
    clock.advance(3601)
    claim, created = services.domains.connect(HOST, "pub_2")
    assert created and claim["publication_id"] == "pub_2"
    assert services.certificates.get(HOST) is None and custom.uploads.describe(HOST) is None
    assert not services.issuer.holds(HOST)


def test_a_chain_to_a_root_of_its_own_is_refused_unless_the_operator_allows_private_roots(
        services_with: ServicesWith, settings: Settings) -> None:
    """Browsers would refuse it, so the publisher's site would break for every visitor (and
    before a claim held its upload, another publication could break a site so)."""
    public = services_with(base=dataclasses.replace(settings, byo_private_roots=False))
    activate(public)
    ca = LocalCA()
    answer = put(create_app(public).test_client(), *_chain(ca))
    assert answer.status_code == 400
    assert answer.get_json()["code"] == "untrusted_root"
    assert "which browsers do not trust" in answer.get_json()["error"]
    assert public.custom_certificates is not None
    assert public.custom_certificates.uploads.describe(HOST) is None


def _chain(ca: LocalCA, names: list[str] | None = None) -> tuple[str, str]:
    cert, key = ca.issue(names or [HOST])
    return cert + ca.pem, key


def _rsa_chain(bits: int) -> tuple[str, str]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = build_certificate("rsa test CA", ca_key, ca=True)
    key = rsa.generate_private_key(65537, bits)
    leaf = build_certificate(HOST, key, signer=ca_key, issuer=ca_cert.subject, names=[HOST])
    return cert_to_pem(leaf) + cert_to_pem(ca_cert), key_to_pem(key)


def _many_names(count: int) -> tuple[str, str]:
    """A chain whose certificate names ``count`` more hostnames: as large as a publisher likes."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = build_certificate("many names CA", ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    names = [HOST, *(f"n{n:04d}-a-long-label-for-its-size.example.test" for n in range(count))]
    leaf = build_certificate(HOST, key, signer=ca_key, issuer=ca_cert.subject, names=names)
    return cert_to_pem(leaf) + cert_to_pem(ca_cert), key_to_pem(key)


def test_the_largest_upload_we_take_changes_hot_on_a_real_edge(
        edge_node: Callable[..., EdgeNode]) -> None:
    """The size the upload check allows is what HAProxy takes over its runtime API: the
    largest chain it accepts is swapped in without a reload (one over it cannot be: see the
    "too large to serve" case of the bad uploads)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    largest, count = None, 100
    while True:
        try:
            largest = validate(HOST, *_many_names(count), now=now,
                               min_remaining=datetime.timedelta(days=7), private_roots=True)
        except UploadRejected as too_large:
            assert too_large.code == "too_large_to_serve"
            break
        count += 10
    assert largest is not None and len(largest.fullchain_pem + largest.key_pem) > 13 * 1024
    node = edge_node()
    _, ours = self_signed(HOST)
    base = DesiredState(routes=(Route(HOST, "pub_1", ours),), app_servers=("127.0.0.1:9",),
                        control_servers=("127.0.0.1:9",))
    node.apply(base)
    uploaded = Route(HOST, "pub_1", largest.fullchain_pem + largest.key_pem)
    delta = StateDelta(base.version, "1" * 16, base.config, {HOST: uploaded}, {})
    reloads = node.reloads
    assert node.can_apply_delta(delta) and node.apply_delta(delta)
    assert (node.reloads, node.hot_applies) == (reloads, 1)


def _bad_uploads() -> dict[str, tuple[str, str, str, str]]:
    """name -> (certificate, key, expected code, a phrase of the sentence)."""
    ca, other_ca = LocalCA(), LocalCA()
    chain, key = _chain(ca)
    other_chain, other_key = _chain(ca)
    leaf_only = chain.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    encrypted = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")).decode()
    legacy = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(b"secret")).decode()
    ed_key = ed25519.Ed25519PrivateKey.generate()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = build_certificate("dated CA", ca_key, ca=True, days=3650)
    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)
    return {
        "garbage": ("\x00\xff garbage <script>", key, "not_pem", "not PEM text"),
        "base64 without PEM armour": ("TUlJQmtUQ0NBVGVnQXdJQkFnSVV" * 10, key, "not_pem",
                                      "not PEM text"),
        "empty": ("", key, "missing", "certificate is empty"),
        "huge": (chain * 60, key, "too_long", "larger than 64 KiB"),
        "a block that does not parse": (
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", key, "not_pem",
            "does not parse"),
        "64 KiB of BEGIN lines": ("-----BEGIN A-----" * 3800, key, "not_pem", "not PEM text"),
        "unterminated block": (chain + "-----BEGIN CERTIFICATE-----\nMIIB", key, "not_pem",
                               "not PEM text"),
        "a key in the chain": (chain + key, key, "key_in_chain", "holds a private key"),
        "two keys": (chain, key + other_key, "one_key", "exactly one private key"),
        "an encrypted key": (chain, encrypted, "encrypted_key", "without a passphrase"),
        "an encrypted legacy key": (chain, legacy, "encrypted_key", "without a passphrase"),
        "a key that does not parse": (
            chain, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not_pem",
            "does not parse"),
        "a key for another certificate": (chain, other_key if other_chain else "",
                                          "key_mismatch", "does not belong"),
        "an ed25519 key": (chain, ed_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()).decode(), "key_type", "ECDSA P-256"),
        "a 1024-bit RSA key": (*_rsa_chain(1024), "key_type", "RSA of 2048"),
        "names that do not cover the host": (*_chain(ca, ["elsewhere.example.test"]),
                                             "names_mismatch", "none of which covers"),
        "a wildcard does not cover its parent": (*_chain(ca, ["*.shop.example.test"]),
                                                 "names_mismatch", "none of which covers"),
        "a wildcard covers one label only": (*_chain(ca, ["*.test"]), "names_mismatch",
                                             "none of which covers"),
        "an expired chain": (*dated(ca_key, ca_cert, [HOST], now - 90 * day, now - day),
                             "expired", "expired on"),
        "not valid yet": (*dated(ca_key, ca_cert, [HOST], now + day, now + 90 * day),
                          "not_yet_valid", "not valid before"),
        "inside the fallback window": (*dated(ca_key, ca_cert, [HOST], now - day, now + 3 * day),
                                       "expiring", "within 7 days"),
        "a broken chain": (chain.split("-----END CERTIFICATE-----")[0]
                           + "-----END CERTIFICATE-----\n" + other_ca.pem, key, "broken_chain",
                           "is not signed by certificate 2"),
        "no chain to a trusted root": (leaf_only, key, "broken_chain",
                                       "add its intermediate certificates"),
        "too large for the edge to change hot": (*_many_names(300), "too_large_to_serve",
                                                 "it takes at most 14 KiB"),
    }


BAD = _bad_uploads()


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_uploads_get_one_sentence_in_a_400(case: str, client: FlaskClient,
                                               services: Services) -> None:
    acme_pem = activate(services)
    certificate, key, code, phrase = BAD[case]
    answer = put(client, certificate, key)
    assert answer.status_code == 400, answer.text
    body = answer.get_json()
    assert body["code"] == code and phrase in body["error"], body
    assert body["field"] in ("certificate", "private_key")
    assert "\n" not in body["error"] and "PRIVATE" not in body["error"]
    assert served_sha(services) == fingerprint(acme_pem)  # nothing changed
    assert call(client, "GET").status_code == 404


@pytest.mark.parametrize("name, hostname, covered", [
    ("shop.example.test", "shop.example.test", True),
    ("SHOP.example.test.", "shop.example.test", True),
    ("*.example.test", "shop.example.test", True),
    ("*.example.test", "example.test", False),
    ("*.example.test", "a.shop.example.test", False),
    ("*.example.test", "*.example.test", True),
    ("shop.example.test", "*.example.test", False),
    ("s*.example.test", "shop.example.test", False),
])
def test_which_names_cover_a_host(name: str, hostname: str, covered: bool) -> None:
    assert covers(name, hostname) is covered


def test_a_wildcard_domain_takes_its_wildcard_certificate() -> None:
    ca = LocalCA()
    cert, key = ca.issue(["*.example.test"])
    now = datetime.datetime.now(datetime.timezone.utc)
    checked = validate("*.example.test", cert + ca.pem, key, now=now,
                       min_remaining=datetime.timedelta(days=7), private_roots=True)
    assert checked.names == ("*.example.test",)
    with pytest.raises(UploadRejected, match="none of which covers"):
        validate("*.example.test", *_chain(ca, ["shop.example.test"]), now=now,
                 min_remaining=datetime.timedelta(days=7), private_roots=True)


def test_accepted_keys_and_wildcards(client: FlaskClient, services: Services) -> None:
    activate(services)
    assert put(client, *_rsa_chain(2048)).status_code == 200
    assert put(client, *_chain(LocalCA(), ["*.example.test"])).status_code == 200
    unknown = client.put(f"/api/v1/domains/{HOST}/certificate",
                         json={"certificate": "x", "private_key": "y", "passphrase": "z"},
                         headers={"Authorization": f"Bearer {TOKEN}"})
    assert unknown.status_code == 400 and unknown.get_json()["field"] == "passphrase"


class Killed(BaseException):
    """The process died here: nothing after this point runs and no handler catches it."""


def mortal(services: Services, die_at: int) -> None:
    """Kill ``services``' process at its ``die_at``-th outbox step (an entry applied, or the
    outbox cleared)."""
    steps = [0]
    for name in ("_apply", "_settle"):
        step = getattr(services.domains.outbox, name)

        def run(*args: Any, _step: Any = step, **kwargs: Any) -> Any:
            steps[0] += 1
            if steps[0] == die_at:
                raise Killed(f"killed at outbox step {die_at}")
            return _step(*args, **kwargs)
        setattr(services.domains.outbox, name, run)


UPLOAD_STEPS = 5
"""An upload's outbox: its event, the upload stored, the route, the webhook, then cleared."""


@pytest.mark.parametrize("die_at", range(1, 2 * UPLOAD_STEPS + 1))
def test_a_crash_at_any_step_of_an_upload_or_its_removal_loses_nothing(
        die_at: int, settings: Settings, clock: FakeClock) -> None:
    settings = dataclasses.replace(settings, webhook_url="http://127.0.0.1:9/x",
                                   webhook_secret="s" * 20)
    first = Services.from_settings(settings, clock=clock)
    acme_pem = activate(first)
    ca = LocalCA()
    cert, key = ca.issue([HOST])
    mortal(first, die_at)
    custom = first.custom_certificates
    assert custom is not None
    try:
        custom.upload(first.domains.get(HOST), custom.check(HOST, cert + ca.pem, key))
        custom.remove(first.domains.get(HOST))
        raise AssertionError("never killed")
    except Killed:
        first.close()
    clock.advance(settings.outbox_grace_seconds + 1)  # the dead writer is long gone
    second = Services.from_settings(settings, clock=clock)  # restarted; its worker drains first
    try:
        assert second.custom_certificates is not None
        second.domains.drain_outboxes()
        if die_at <= UPLOAD_STEPS:  # the upload was written before the crash: it is served
            assert served_sha(second) == fingerprint(cert + ca.pem + key)
            second.custom_certificates.remove(second.domains.get(HOST))
        assert served_sha(second) == fingerprint(acme_pem)
        assert second.custom_certificates.uploads.describe(HOST) is None
        events = [e["what"] for e in second.domains.timeline(second.domains.get(HOST))]
        assert events.count("uploaded certificate") == 1
        assert events.count("ACME certificate served again") == 1
        assert len(webhooks(second, "certificate.uploaded")) == 1
        assert len(webhooks(second, "certificate.fallback")) == 1
    finally:
        second.close()


def test_mangled_pem_is_refused_with_a_sentence_never_a_crash(
        caplog: pytest.LogCaptureFixture) -> None:
    """Bytes flipped inside the DER of a good chain and key: each answer is a refusal (or,
    where the flip lands in a signature-free spot, an accepted upload), never another error."""
    import base64
    import random

    ca = LocalCA()
    chain, key = _chain(ca)
    now = datetime.datetime.now(datetime.timezone.utc)
    pick = random.Random(17)
    outcomes: set[str] = set()
    for _ in range(1000):
        blocks = re.findall(r"-----BEGIN ([A-Z ]+)-----\n(.*?)\n-----END", chain + key, re.S)
        target = pick.randrange(len(blocks))
        mangled = []
        for n, (kind, body) in enumerate(blocks):
            der = bytearray(base64.b64decode(body))
            if n == target:
                for _ in range(pick.randint(1, 3)):
                    der[pick.randrange(len(der))] = pick.randrange(256)
            text = base64.encodebytes(bytes(der)).decode()
            mangled.append(f"-----BEGIN {kind}-----\n{text}-----END {kind}-----\n")
        try:
            validate(HOST, "".join(mangled[:-1]), mangled[-1], now=now,
                     min_remaining=datetime.timedelta(days=7), private_roots=True)
            outcomes.add("accepted")
        except UploadRejected as exc:
            assert "\n" not in str(exc) and len(str(exc)) < 400
            outcomes.add(exc.code)
    assert len(outcomes) >= 3, outcomes  # the flips reached several checks
    # Each refusal came from a check that names its reason, not from the catch-all.
    assert "failed a check unexpectedly" not in caplog.text


def test_the_dashboard_shows_the_publisher_s_certificate(settings: Settings) -> None:
    from admin.web import Admin
    from kit.web import provided
    from tests.test_admin_pages import PASSWORD, login

    opened = Services.from_settings(dataclasses.replace(settings, admin_cookie_secure=False))
    try:
        app = create_app(opened)
        provided(app, Admin).users.create("alice", PASSWORD)
        client = app.test_client()
        login(client)
        activate(opened)
        assert "own certificate" not in client.get(f"/admin/domains/{HOST}").get_data(True)
        assert opened.custom_certificates is not None
        ca = LocalCA()
        upload = opened.custom_certificates.check(HOST, *_chain(ca))
        opened.custom_certificates.upload(opened.domains.get(HOST), upload)
        page = client.get(f"/admin/domains/{HOST}").get_data(True)
        assert "The publisher&#39;s own certificate" in page or \
            "The publisher's own certificate" in page
        assert upload.fingerprint in page and "PRIVATE" not in page
    finally:
        opened.close()


def test_two_replicas_fall_back_once(settings: Settings) -> None:
    changed = dataclasses.replace(settings, byo_fallback_days=1 - 1 / 86400,
                                  webhook_url="http://127.0.0.1:9/x", webhook_secret="s" * 20)
    replicas = [Services.from_settings(dataclasses.replace(changed, worker_id=name))
                for name in ("replica-a", "replica-b")]
    try:
        first, second = (r.custom_certificates for r in replicas)
        assert first is not None and second is not None
        activate(replicas[0])
        ca = LocalCA()
        cert, key = ca.issue([HOST], days=1)
        first.upload(replicas[0].domains.get(HOST), first.check(HOST, cert + ca.pem, key))
        deadline = time.monotonic() + 10
        while not first.uploads.due():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # Both saw it due; the second asks while the first holds the domain.
        due_for_second = second.uploads.due()
        assert first.fall_back_due() == 1
        assert second.fall_back_due(due_for_second) == 0  # its read was before the first acted
        events = [e["what"] for e in replicas[1].domains.timeline(replicas[1].domains.get(HOST))]
        assert events.count("ACME certificate served again") == 1
        assert len(webhooks(replicas[1], "certificate.fallback")) == 1
    finally:
        for replica in replicas:
            replica.close()


def test_an_uploaded_key_follows_a_key_rotation(settings: Settings) -> None:
    from cryptography.fernet import Fernet

    old = settings.encryption_keys[0]
    new = Fernet.generate_key().decode()
    first = Services.from_settings(settings)
    try:
        activate(first)
        assert first.custom_certificates is not None
        cert, key = _chain(LocalCA())
        first.custom_certificates.upload(first.domains.get(HOST),
                                         first.custom_certificates.check(HOST, cert, key))
    finally:
        first.close()
    rotating = Services.from_settings(dataclasses.replace(settings, encryption_keys=[new, old]))
    try:
        rotating.reencrypt_keys()
    finally:
        rotating.close()
    rotated = Services.from_settings(dataclasses.replace(settings, encryption_keys=[new]))
    try:
        assert rotated.custom_certificates is not None
        served = rotated.custom_certificates.uploads.serving(HOST)
        assert served is not None and served.key_pem == key
    finally:
        rotated.close()


def test_an_intermediate_that_expires_first_sets_the_fallback(client: FlaskClient,
                                                               services: Services) -> None:
    activate(services)
    root_key, inter_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = build_certificate("root", root_key, ca=True, days=3650)

    def chain(inter_days: float) -> tuple[str, str]:
        inter = build_certificate("intermediate", inter_key, signer=root_key,
                                  issuer=root.subject, ca=True, days=inter_days)
        leaf = build_certificate(HOST, leaf_key, signer=inter_key, issuer=inter.subject,
                                 names=[HOST], days=300)
        return cert_to_pem(leaf) + cert_to_pem(inter), key_to_pem(leaf_key)

    refused = put(client, *chain(5))
    assert refused.status_code == 400
    assert refused.get_json()["error"].startswith("its chain expires on")
    answer = put(client, *chain(30))
    assert answer.status_code == 200, answer.text
    expected = time.time() + 30 * 86400 - 7 * 86400
    assert abs(answer.get_json()["fallback_at"] - expected) < 60

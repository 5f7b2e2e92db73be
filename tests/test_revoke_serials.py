"""A revocation names the certificate its claim held (domains/outbox.py ``revoke``), so one
applied after the hostname changed hands leaves the next holder's certificate; and a certificate
is saved only over the one its order started from (certs/store.py ``save``), so an order that
outlived its holder's claim cannot replace the next holder's. The takeover is the real one, DNS
a real authoritative server (knotd), certificates from Pebble; the stores are the twins."""
from __future__ import annotations

import socket
from typing import Iterator

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from admin_app import create_app
from certs.store import CERTIFICATES, CertificateStore, ReplacedMeanwhile
from control.wiring import Services
from devtools.pebble import PebbleStack
from domains import outbox
from kit.vault import KeyVault
from kit.x509 import self_signed
from store import Backend, Item
from tests.conftest import serving
from tests.test_takeover import Zone
from tests.test_takeover_e2e import go_live, services, zone  # noqa: F401  (fixtures)

HOST = "blog.example.test"


class Notifier:
    """A part that follows route changes over the network (registered after the edge's route
    consumer), down until :meth:`up`: its port is bound but not listening, so connecting to it
    is refused, as a stopped service's is."""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]

    def __call__(self, entry: Item) -> None:
        socket.create_connection(("127.0.0.1", self.port), timeout=2).close()

    def up(self) -> None:
        self._socket.listen()

    def close(self) -> None:
        self._socket.close()


@pytest.fixture
def notifier(services: Services) -> Iterator[Notifier]:  # noqa: F811
    part = Notifier()
    services.domains.consumers.also(outbox.ROUTE, part)
    try:
        yield part
    finally:
        part.close()


@pytest.mark.slow
def test_a_takeovers_revocation_drained_late_leaves_the_new_holders_certificate(
        services: Services, pebble: PebbleStack, zone: Zone,  # noqa: F811
        notifier: Notifier) -> None:
    """The takeover's drain stops at a consumer that is down, before its revocation of the
    holder's certificate; meanwhile the new holder goes live. When the drain is done, only the
    holder's certificate is revoked: the new holder keeps serving its own."""
    notifier.up()
    services.domains.connect(HOST, "pub_a")
    first = go_live(services, pebble, zone, "pub_a")
    assert services.domains.get(HOST)[outbox.HELD_SERIAL] == first
    notifier.close()
    notifier.__init__()  # type: ignore[misc]  # the part goes down (a new, refusing port)
    assert services.takeovers is not None
    zone.takeover_txt(services.takeovers.request(HOST, "pub_b")["token"])
    moved = services.takeovers.take_over(HOST, "pub_b")
    assert any(entry.get(outbox.SERIAL) == first for entry in moved[outbox.OUTBOX]), \
        "the revocation waits, naming the holder's certificate"

    second = go_live(services, pebble, zone, "pub_b")
    assert second != first, "the new holder adopted the certificate about to be revoked"
    notifier.up()
    drained = services.domains.outbox.drain(services.domains.get(HOST))
    assert not drained.get(outbox.OUTBOX)

    stored = services.certificates.get(HOST)
    assert stored is not None and stored.serial == second, \
        "the late revocation took the new holder's certificate"
    assert pebble.certificate_status(second) != "Revoked"
    assert services.edge_state.routes.get(HOST) is not None


def test_a_revocation_the_release_before_wrote_discards_whatever_is_held(
        services: Services, pebble: PebbleStack, zone: Zone) -> None:  # noqa: F811
    """Entries without a serial (the release before wrote them so) act as they did; one
    naming another certificate leaves the one stored."""
    services.domains.connect(HOST, "pub_a")
    serial = go_live(services, pebble, zone, "pub_a")
    services.lifecycle.discard_certificate(outbox.revoke(HOST, serial="1234abcd"))
    assert services.certificates.get(HOST) is not None
    services.lifecycle.discard_certificate({"kind": outbox.REVOKE, "hostname": HOST,
                                            "id": "old", "claim": "c"})
    assert services.certificates.get(HOST) is None
    assert pebble.certificate_status(serial) == "Revoked"


def test_revoke_entries_name_what_they_revoke_only_when_known() -> None:
    assert outbox.revoke(HOST) == {"kind": outbox.REVOKE, "hostname": HOST}
    assert outbox.revoke_held({"hostname": HOST, outbox.HELD_SERIAL: "ab"}) == {
        "kind": outbox.REVOKE, "hostname": HOST, outbox.SERIAL: "ab"}


VAULT = KeyVault([Fernet.generate_key().decode()])
KEY = ec.generate_private_key(ec.SECP256R1())
KEY_PEM = KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())


def saved(certificates: CertificateStore, **kwargs: object) -> str:
    chain = self_signed(HOST, KEY)[0]
    return str(certificates.save([HOST], chain, KEY_PEM, **kwargs)["serial"])  # type: ignore


def test_an_order_that_outlived_its_claim_does_not_replace_the_next_holders(
        backend: Backend) -> None:
    """The old holder's order started from its certificate; the takeover revoked it and the
    new holder stored its own; the old order's save is refused and the new one stays."""
    certificates = CertificateStore(backend.table(CERTIFICATES), VAULT)
    old = saved(certificates)
    started_from = certificates.serial_of(HOST)
    assert started_from == old
    certificates.delete(HOST)  # the takeover's revocation
    new = saved(certificates, replaces=None)  # the new holder's order started from none
    with pytest.raises(ReplacedMeanwhile):
        saved(certificates, replaces=started_from)
    assert certificates.serial_of(HOST) == new
    certificates.delete(HOST)
    with pytest.raises(ReplacedMeanwhile):  # discarded meanwhile, nothing stored since
        saved(certificates, replaces=started_from)
    assert certificates.serial_of(HOST) is None


def test_a_renewal_replaces_the_certificate_it_started_from(backend: Backend) -> None:
    certificates = CertificateStore(backend.table(CERTIFICATES), VAULT)
    first = saved(certificates, replaces=None)
    item = certificates.raw(HOST)
    assert item is not None
    certificates.remember_renewal(item, None, 0.0)  # the item moved on, the certificate not
    second = saved(certificates, replaces=first)
    assert second != first and certificates.serial_of(HOST) == second
    assert saved(certificates) != second  # not given: whatever is stored is replaced


def test_a_late_revocation_forgets_only_the_upload_it_names(
        services: Services) -> None:  # noqa: F811
    """The uploaded certificate too: an entry naming the previous holder's upload leaves the
    next holder's; one without a name (the release before) forgets whichever is stored."""
    custom = services.custom_certificates
    assert custom is not None
    custom.uploads.table.put({"hostname": HOST, "upload_id": "next-holders", "retired": False,
                              "fallback_set": None, "fallback_at": None})
    custom.forget(outbox.revoke(HOST, upload_id="previous-holders"))
    assert custom.uploads.table.get(HOST) is not None
    custom.forget({"kind": outbox.REVOKE, "hostname": HOST, "id": "old", "claim": "c"})
    assert custom.uploads.table.get(HOST) is None


def test_a_removal_revokes_the_certificate_stored_even_if_the_item_lags_it(
        services: Services, pebble: PebbleStack, zone: Zone) -> None:  # noqa: F811
    """A renewal the domain's item does not record (a replica of the release before renewed,
    or the renewal's domain write failed): the removal still names the certificate stored, and
    the hostname's next owner orders its own rather than serve the removed domain's."""
    services.domains.connect(HOST, "pub_a")
    first = go_live(services, pebble, zone, "pub_a")
    with serving(create_app(services), pebble.http_port):
        second = services.issuer.issue([HOST])  # as the release before renews: no serial kept
    assert second != first and services.domains.get(HOST)[outbox.HELD_SERIAL] == first
    services.lifecycle.remove(HOST)
    assert services.certificates.get(HOST) is None, "the removed domain's certificate went"
    assert pebble.certificate_status(second) == "Revoked"
    services.domains.connect(HOST, "pub_c")
    assert go_live(services, pebble, zone, "pub_c") not in (first, second)

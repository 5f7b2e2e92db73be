"""The order journal: what an issuance has sent to the CA, written before each network step.

A control service killed at any point finds the order it had in flight here after a restart
and resumes it (same key, same CSR, same order URL) instead of ordering again, so a crash
costs at most the one order that was being created.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from acme import client, errors, messages
from cryptography import x509

from certs.ari import NewOrderReplacing
from kit.vault import KeyVault
from store import VERSION, ConflictError, Item, Table, TableSpec

ORDERS = TableSpec("acme_orders", key="key", expiring=True)
ORDER_RECORD_TTL = 7 * 86400.0  # CAs expire pending orders within days


class OrderJournal:
    def __init__(self, table: Table, vault: KeyVault, directory_url: str,
                 clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._table = table
        self._vault = vault
        self._ca = directory_url

    def _key(self, hostnames: list[str]) -> str:
        return f"{self._ca}|{','.join(hostnames)}"

    def find(self, hostnames: list[str]) -> Item | None:
        return self._table.get(self._key(hostnames))

    def begin(self, hostnames: list[str], key_pem: bytes, csr_pem: bytes, *,
              reserved_at: float | None) -> None:
        """``reserved_at``: when the order took slots of the rate budget, which go back to
        the windows of that time (None: it took none, as a renewal naming the certificate it
        replaces). ``reserved`` says the same to the release before."""
        self._table.put({"key": self._key(hostnames), "key_enc": self._vault.encrypt(key_pem),
                         "csr_pem": csr_pem.decode(), "order_url": None,
                         "reserved": reserved_at is not None, "reserved_at": reserved_at,
                         "expires_at": self._clock() + ORDER_RECORD_TTL})

    def released(self, hostnames: list[str]) -> float | None:
        """The order's budget slots are given back: when they were taken, if it held any
        (then it holds none from now on); None if not. A record of the previous release says
        neither whether nor when: its slots are given back, as that release did, to now's
        windows."""
        record = self.find(hostnames)
        if record is None or not record.get("reserved", True):
            return None
        try:
            self._table.put({**record, "reserved": False}, expected_version=record[VERSION])
        except ConflictError:
            return None  # another run of this order gave them back (or began a new one)
        taken_at = record.get("reserved_at")
        return self._clock() if taken_at is None else float(taken_at)

    def ordered(self, hostnames: list[str], order_url: str) -> None:
        record = self.find(hostnames)
        if record is not None:
            self._table.put({**record, "order_url": order_url})

    def key_pem(self, record: Item) -> bytes:
        return self._vault.decrypt(record["key_enc"])

    def done(self, hostnames: list[str]) -> None:
        self._table.delete(self._key(hostnames))

    def reencrypt(self) -> int:
        from store import rewrite_field
        return rewrite_field(self._table, "key_enc", self._vault.rotate)


def fetch_order(acme: client.ClientV2, record: Item) -> messages.OrderResource | None:
    """The stored order as the CA sees it now, or None if it cannot be resumed."""
    def post_as_get(url: str) -> Any:
        return acme.net.post(url, None, new_nonce_url=acme.directory["newNonce"]).json()

    try:
        body = messages.Order.from_json(post_as_get(record["order_url"]))
    except messages.Error:
        return None
    except errors.ClientError as exc:  # a bare 404: the CA lost it (a reset CA, like Pebble's)
        if getattr(exc.args[0] if exc.args else None, "status_code", None) == 404:
            return None
        raise
    if body.status == messages.STATUS_INVALID:
        return None
    authorizations = [messages.AuthorizationResource(
        body=messages.Authorization.from_json(post_as_get(url)), uri=url)
        for url in body.authorizations]
    return messages.OrderResource(body=body, uri=record["order_url"],
                                  authorizations=authorizations,
                                  csr_pem=record["csr_pem"].encode())


def new_order_replacing(acme: client.ClientV2, hostnames: list[str], csr: bytes, replaces: str,
                        profile: str | None) -> messages.OrderResource | None:
    """A new order naming (RFC 9773) the certificate it replaces; None if the CA has no order
    to show for it."""
    identifiers = [messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=name)
                   for name in hostnames]
    order = NewOrderReplacing(identifiers=identifiers, replaces=replaces,
                              **({"profile": profile} if profile else {}))
    response = acme.net.post(acme.directory["newOrder"], order,
                             new_nonce_url=acme.directory["newNonce"])
    return fetch_order(acme, {"order_url": response.headers["Location"],
                              "csr_pem": csr.decode()})


def finished_serial(acme: client.ClientV2, order: messages.OrderResource) -> str | None:
    """The serial (hex) of the certificate a finished order issued; None if it is not done."""
    if order.body.status != messages.STATUS_VALID or not order.body.certificate:
        return None
    chain = acme.net.post(order.body.certificate, None, new_nonce_url=acme.directory["newNonce"])
    return format(x509.load_pem_x509_certificate(chain.text.encode()).serial_number, "x")

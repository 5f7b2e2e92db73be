"""The order journal: what an issuance has sent to the CA, written before each network step.

A control service killed at any point finds the order it had in flight here after a restart
and resumes it (same key, same CSR, same order URL) instead of ordering again, so a crash
costs at most the one order that was being created.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from acme import client, errors, messages

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
              reserved: bool) -> None:
        """``reserved``: the order took slots of the rate budget (a renewal naming the
        certificate it replaces takes none)."""
        self._table.put({"key": self._key(hostnames), "key_enc": self._vault.encrypt(key_pem),
                         "csr_pem": csr_pem.decode(), "order_url": None, "reserved": reserved,
                         "expires_at": self._clock() + ORDER_RECORD_TTL})

    def released(self, hostnames: list[str]) -> bool:
        """The order's budget slots are given back: whether it held any (then it holds none
        from now on). A record of the previous release does not say: its slots are given back,
        as that release did."""
        record = self.find(hostnames)
        if record is None or not record.get("reserved", True):
            return False
        try:
            self._table.put({**record, "reserved": False}, expected_version=record[VERSION])
        except ConflictError:
            return False  # another run of this order gave them back (or began a new one)
        return True

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

"""Publishers' own certificates, kept beside (never instead of) the ACME ones.

One item per hostname: the chain in the clear, the key encrypted like ours (``KeyVault``),
and ``fallback_at``, when we stop serving it (``byo_fallback_days`` before it expires). The
``fallback`` range index holds only uploads still served, by that time, so the worker asks
one ordered query for those whose time has come (never a read of every upload).

Writes are idempotent and name the upload they mean (``upload_id``), because the domains
part applies them from its outbox, possibly twice, possibly late: retiring or deleting an
upload never touches a newer one.
"""
from __future__ import annotations

import datetime
import hashlib
import itertools
import time
from typing import Callable

from certs.byo import UploadedChain
from certs.store import StoredCertificate
from kit.vault import KeyVault
from store import VERSION, ConflictError, Item, RangeIndex, Table, TableSpec, every, \
    rewrite_field

UPLOADS = TableSpec("uploaded_certificates", key="hostname",
                    ranges=(RangeIndex("fallback", key="fallback_set", sort="fallback_at"),))
SERVED = "served"
PUBLIC_FIELDS = ("hostname", "upload_id", "fingerprint", "names", "not_before", "not_after",
                 "issuer", "serial", "uploaded_at", "fallback_at", "retired")


def public_view(item: Item) -> dict[str, object]:
    """What a publisher or operator may see of an upload: never the key."""
    return {name: item.get(name) for name in PUBLIC_FIELDS}


class UploadStore:
    def __init__(self, table: Table, vault: KeyVault, fallback_days: float = 7.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.table = table
        self._vault = vault
        self.fallback_seconds = fallback_days * 86400.0
        self._clock = clock

    def seal(self, upload: UploadedChain) -> Item:
        """The item to store for ``upload``, its key already encrypted: it may wait in the
        domain's outbox before :meth:`store` writes it."""
        not_after = upload.not_after.timestamp()
        # An intermediate that expires first ends the chain's service first.
        serving_end = min(not_after, upload.serving_end.timestamp())
        return {"hostname": upload.hostname,
                "upload_id": hashlib.sha256(
                    (upload.fullchain_pem + upload.key_pem).encode()).hexdigest()[:32],
                "fingerprint": upload.fingerprint, "names": list(upload.names),
                "fullchain_pem": upload.fullchain_pem,
                "key_enc": self._vault.encrypt(upload.key_pem.encode()),
                "not_before": upload.not_before.isoformat(),
                "not_after": upload.not_after.isoformat(), "not_after_ts": not_after,
                "issuer": upload.issuer, "serial": upload.serial,
                "uploaded_at": datetime.datetime.fromtimestamp(
                    self._clock(), datetime.timezone.utc).isoformat(timespec="seconds"),
                "fallback_set": SERVED, "fallback_at": serving_end - self.fallback_seconds,
                "retired": False}

    def store(self, sealed: Item) -> None:
        """Keep ``sealed`` as the host's upload (idempotent: the same upload twice is once)."""
        existing = self.table.get(sealed["hostname"])
        if existing is not None and existing["upload_id"] == sealed["upload_id"]:
            return
        self.table.put({k: v for k, v in sealed.items() if k != VERSION})

    def retire(self, hostname: str, upload_id: str) -> bool:
        """Stop serving this upload (its fallback time came): it leaves the ``fallback``
        index and stays for the publisher to see. False if it is not the host's upload."""
        for _ in range(3):
            existing = self.table.get(hostname)
            if existing is None or existing["upload_id"] != upload_id or existing["retired"]:
                return False
            try:
                self.table.put({**existing, "retired": True, "fallback_set": None,
                                "fallback_at": None}, expected_version=existing[VERSION])
                return True
            except ConflictError:
                continue
        return False

    def delete(self, hostname: str, upload_id: str | None = None) -> bool:
        """Forget the host's upload (``upload_id``: only that one; None: whichever it is)."""
        existing = self.table.get(hostname)
        if existing is None or upload_id not in (None, existing["upload_id"]):
            return False
        try:
            return self.table.delete(hostname, expected_version=existing[VERSION])
        except ConflictError:
            return False

    def describe(self, hostname: str) -> dict[str, object] | None:
        item = self.table.get(hostname)
        return public_view(item) if item else None

    def in_time(self, item: Item | dict[str, object]) -> bool:
        """Whether an upload (item or public view) is to be served now: not retired, and its
        fallback time not come (so a publish before the worker's fallback step already
        serves ours)."""
        at = item.get("fallback_at")
        return not item.get("retired") and at is not None and self._clock() < float(at)  # type: ignore[arg-type]

    def serving(self, hostname: str) -> StoredCertificate | None:
        """The upload the edge serves for ``hostname`` (see :meth:`in_time`). The only place
        an uploaded key is decrypted."""
        item = self.table.get(hostname)
        if item is None or not self.in_time(item):
            return None
        return StoredCertificate(
            hostname=hostname, names=list(item["names"]), fullchain_pem=item["fullchain_pem"],
            not_before=item["not_before"], not_after=item["not_after"], serial=item["serial"],
            issuer=item["issuer"], key_pem=self._vault.decrypt(item["key_enc"]).decode(),
            ca="uploaded")

    def due(self, limit: int = 500) -> list[Item]:
        """Served uploads whose fallback time has come, soonest first: one ordered query."""
        found = every(lambda cursor: self.table.query_range(
            "fallback", SERVED, upper=self._clock(), limit=min(limit, 500), cursor=cursor))
        return list(itertools.islice(found, limit))

    def reencrypt(self) -> int:
        return rewrite_field(self.table, "key_enc", self._vault.rotate)

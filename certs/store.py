"""The certificate store: chain in the clear, private key encrypted, keyed by hostname."""
from __future__ import annotations

import dataclasses
import datetime
import itertools

from cryptography import x509

from kit.vault import KeyVault
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from store import (VERSION, ConflictError, Item, Page, RangeIndex, Table, TableSpec, every,
                   rewrite_field)

CERTIFICATES = TableSpec("certificates", key="hostname",
                         ranges=(RangeIndex("expiry", key="expiry_set", sort="not_after_ts"),),
                         spread=("expiry_set",))
"""``expiry``: every certificate by its not-after time, so the soonest to expire are one
ordered query (``/metrics``), never a read of every certificate."""
EXPIRY_SET = "all"
PUBLIC_FIELDS = ("hostname", "names", "not_before", "not_after", "serial", "issuer", "ca",
                 "stored_at")


def key_type(fullchain_pem: str) -> str:
    """The leaf's key, named as settings name it (``ec256``, ``rsa2048``...)."""
    key = x509.load_pem_x509_certificate(fullchain_pem.encode()).public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ec{key.curve.key_size}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa{key.key_size}"
    return type(key).__name__


def public_view(item: Item) -> dict[str, object]:
    """What an operator may see of a stored certificate: never the key, encrypted or not."""
    return {name: item.get(name) for name in PUBLIC_FIELDS} | {
        "key_type": key_type(item["fullchain_pem"])}


@dataclasses.dataclass(frozen=True)
class StoredCertificate:
    hostname: str
    names: list[str]
    fullchain_pem: str
    not_before: str
    not_after: str
    serial: str
    issuer: str
    key_pem: str = dataclasses.field(repr=False)
    ca: str = ""
    """The ACME directory URL that issued it (to revoke it there)."""

    @property
    def combined_pem(self) -> str:
        """Chain plus key in the one file HAProxy loads."""
        return self.fullchain_pem.rstrip("\n") + "\n" + self.key_pem


class CertificateStore:
    def __init__(self, table: Table, vault: KeyVault) -> None:
        self.table = table
        self._vault = vault

    def save(self, hostnames: list[str], fullchain_pem: str, key_pem: bytes,
             ca: str = "") -> Item:
        leaf = x509.load_pem_x509_certificate(fullchain_pem.encode())
        item = {"hostname": hostnames[0], "names": hostnames, "fullchain_pem": fullchain_pem,
                "key_enc": self._vault.encrypt(key_pem),
                "not_before": leaf.not_valid_before_utc.isoformat(),
                "not_after": leaf.not_valid_after_utc.isoformat(),
                "expiry_set": EXPIRY_SET, "not_after_ts": leaf.not_valid_after_utc.timestamp(),
                "serial": format(leaf.serial_number, "x"),
                "issuer": leaf.issuer.rfc4514_string(), "ca": ca,
                "stored_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        return self.table.put(item)

    def get(self, hostname: str) -> StoredCertificate | None:
        item = self.table.get(hostname)
        if item is None:
            return None
        return StoredCertificate(
            hostname=item["hostname"], names=item["names"], fullchain_pem=item["fullchain_pem"],
            not_before=item["not_before"], not_after=item["not_after"], serial=item["serial"],
            issuer=item["issuer"], key_pem=self._vault.decrypt(item["key_enc"]).decode(),
            ca=item.get("ca", ""))

    def raw(self, hostname: str) -> Item | None:
        """The stored item as it is: the key stays encrypted (renewal checks need only dates)."""
        return self.table.get(hostname)

    def remember_renewal(self, item: Item, renew_at: float | None, ask_again_at: float) -> None:
        """Keep the CA's renewal time (ARI; None: the CA offers none) on the certificate until
        ``ask_again_at``. A certificate replaced meanwhile is left alone: its successor is
        asked about afresh."""
        try:
            self.table.put({**item, "ari_renew_at": renew_at, "ari_ask_again_at": ask_again_at},
                           expected_version=item[VERSION])
        except ConflictError:
            pass

    def describe(self, hostname: str) -> dict[str, object] | None:
        item = self.table.get(hostname)
        return public_view(item) if item else None

    def browse(self, limit: int = 50, cursor: str | None = None) -> Page:
        """One page of certificates (public view), for lists."""
        page = self.table.scan(limit=limit, cursor=cursor)
        return Page([public_view(item) for item in page.items], page.next_cursor)

    def expiring(self, before: float, limit: int = 10000) -> list[tuple[str, float]]:
        """(hostname, not-after timestamp) of the certificates that expire before ``before``
        (expired ones too), soonest first, at most ``limit``: an ordered index query whose
        cost follows the answer, not the number of certificates. Certificates stored by a
        version without the index enter it when they are renewed."""
        found = every(lambda cursor: self.table.query_range(
            "expiry", EXPIRY_SET, upper=before, limit=min(limit, 500), cursor=cursor))
        return [(item["hostname"], float(item["not_after_ts"]))
                for item in itertools.islice(found, limit)]

    def next_expiry(self) -> float | None:
        """The soonest not-after timestamp of any certificate (None: there are none)."""
        page = self.table.query_range("expiry", EXPIRY_SET, limit=1)
        return float(page.items[0]["not_after_ts"]) if page.items else None

    def reencrypt(self) -> int:
        """Re-encrypt every stored private key under the newest encryption key."""
        return rewrite_field(self.table, "key_enc", self._vault.rotate)

    def delete(self, hostname: str, stored: Item | None = None) -> bool:
        """Delete the certificate of ``hostname``; with ``stored`` (as :meth:`raw` read it),
        only if it is still that one: one stored since is another claim's, and stays."""
        if stored is None:
            return self.table.delete(hostname)
        try:
            return self.table.delete(hostname, expected_version=stored[VERSION])
        except ConflictError:
            return False

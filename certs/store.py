"""The certificate store: chain in the clear, private key encrypted, keyed by hostname."""
from __future__ import annotations

import dataclasses
import datetime
import itertools

from cryptography import x509

from kit.vault import KeyVault
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certs.errors import CertsError
from store import (ABSENT, VERSION, ConflictError, Item, Page, RangeIndex, Table, TableSpec,
                   every, rewrite_field)

CERTIFICATES = TableSpec("certificates", key="hostname",
                         ranges=(RangeIndex("expiry", key="expiry_set", sort="not_after_ts"),),
                         spread=("expiry_set",))
"""``expiry``: every certificate by its not-after time, so the soonest to expire are one
ordered query (``/metrics``), never a read of every certificate."""
EXPIRY_SET = "all"


class _Anything:
    """Whatever the hostname holds (a save that replaces it unconditionally)."""


ANYTHING = _Anything()
SAVE_ATTEMPTS = 3


class ReplacedMeanwhile(CertsError):
    """The certificate an order started from is no longer the hostname's: another one was
    stored, or it was discarded, meanwhile (the hostname changed hands while the CA answered,
    and the next holder's certificate must not be replaced by this order's)."""

    def __init__(self, hostname: str, replaces: str | None, found: str | None) -> None:
        super().__init__(f"the certificate of {hostname} changed during the order "
                         f"(it started from {replaces or 'none'}, {found or 'none'} is stored)")
        self.hostname = hostname
        self.replaces = replaces
        self.found = found


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
             ca: str = "", replaces: str | None | _Anything = ANYTHING) -> Item:
        """Store the certificate of ``hostnames``. ``replaces``: the serial of the certificate
        the order started from (:meth:`serial_of` before ordering; None: there was none), so
        the certificate is stored only while that one is still the hostname's, else
        ``ReplacedMeanwhile``: an order that outlived its holder's claim must not replace the
        next holder's certificate. Not given: whatever is stored is replaced."""
        leaf = x509.load_pem_x509_certificate(fullchain_pem.encode())
        item = {"hostname": hostnames[0], "names": hostnames, "fullchain_pem": fullchain_pem,
                "key_enc": self._vault.encrypt(key_pem),
                "not_before": leaf.not_valid_before_utc.isoformat(),
                "not_after": leaf.not_valid_after_utc.isoformat(),
                "expiry_set": EXPIRY_SET, "not_after_ts": leaf.not_valid_after_utc.timestamp(),
                "serial": format(leaf.serial_number, "x"),
                "issuer": leaf.issuer.rfc4514_string(), "ca": ca,
                "stored_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        if isinstance(replaces, _Anything):
            return self.table.put(item)
        found: str | None = None
        for _ in range(SAVE_ATTEMPTS):
            stored = self.table.get(hostnames[0])
            found = str(stored["serial"]) if stored is not None else None
            if found != replaces:
                raise ReplacedMeanwhile(hostnames[0], replaces, found)
            try:
                return self.table.put(item, expected_version=ABSENT if stored is None
                                      else stored[VERSION])
            except ConflictError:  # renewal info kept meanwhile, or another save: look again
                continue
        raise ReplacedMeanwhile(hostnames[0], replaces, found)

    def serial_of(self, hostname: str) -> str | None:
        """The serial of the certificate stored for ``hostname`` (None: none is), what an
        order names as the one it replaces."""
        stored = self.table.get(hostname)
        return str(stored["serial"]) if stored is not None else None

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

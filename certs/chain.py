"""An ordered list of CAs: when one fails for a domain, the next is tried."""
from __future__ import annotations

import datetime
import logging

from certs.issuer import AcmeIssuer, IssuanceError
from certs.stats import IssuanceStats
from certs.store import CertificateStore

log = logging.getLogger(__name__)


class IssuerChain:
    """An ordered list of CAs: when one fails for a domain, the next is tried."""

    def __init__(self, issuers: list[AcmeIssuer], certificates: CertificateStore,
                 stats: IssuanceStats | None = None) -> None:
        if not issuers:
            raise ValueError("at least one ACME issuer is needed")
        self.issuers = issuers
        self._certificates = certificates
        self.stats = stats

    def issue(self, hostnames: list[str]) -> str:
        """Issue with the first CA that succeeds; each result is counted for the dashboard.
        Returns the serial of the certificate stored."""
        try:
            serial = self._issue(hostnames)
        except Exception:
            self._count("failed")
            raise
        self._count("issued")
        return serial

    def _count(self, result: str) -> None:
        try:  # a statistic must never turn an issued certificate into a failure
            if self.stats:
                self.stats.record(result)
        except Exception:
            log.warning("could not count an issuance result", exc_info=True)

    def _issue(self, hostnames: list[str]) -> str:
        failures: list[IssuanceError] = []
        for issuer in self.issuers:
            try:
                return issuer.issue(hostnames)
            except IssuanceError as exc:
                log.warning("%s could not issue for %s: %s", issuer.directory_url,
                            ", ".join(hostnames), exc.reason)
                failures.append(IssuanceError(hostnames, f"{issuer.directory_url}: "
                                              f"{exc.reason}", exc.retry_after))
        waits = [f.retry_after for f in failures]
        retry_after = min(waits) if all(w is not None for w in waits) else None  # type: ignore
        raise IssuanceError(hostnames, "; ".join(f.reason for f in failures), retry_after)

    def _issuer_of(self, hostname: str) -> AcmeIssuer:
        stored = self._certificates.raw(hostname)  # the CA's name only: the key stays sealed
        ca = stored.get("ca", "") if stored else ""
        return next((i for i in self.issuers if i.directory_url == ca), self.issuers[0])

    def discard(self, hostnames: list[str], serial: str | None = None) -> None:
        self._issuer_of(hostnames[0]).discard(hostnames, serial)

    def renewal_due(self, hostname: str, now: datetime.datetime | None = None) -> bool:
        return self._issuer_of(hostname).renewal_due(hostname, now)

    def serial_of(self, hostname: str) -> str | None:
        return self._certificates.serial_of(hostname)

    def holds(self, hostname: str) -> bool:
        return self._certificates.raw(hostname) is not None and not self.renewal_due(hostname)

    def reencrypt(self) -> int:
        return self.issuers[0].reencrypt()  # the accounts and orders tables are shared

    @property
    def bad_nonce_retries(self) -> int:
        return sum(i.bad_nonce_retries for i in self.issuers)

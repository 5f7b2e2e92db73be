"""The certificates an agent downloads: in batches when the control service offers them (one
request carrying up to ``CERT_BATCH_MAX``, gzip'd), else one GET each, as the releases before
did (edge/protocol.py says which control services offer what).

Either way each certificate is asked for by hostname and fingerprint and checked against that
fingerprint, so a batch yields the same PEMs, byte for byte, as the GETs. A batch that reaches
a replica that does not know the endpoint (a control service of the release before, during its
upgrade) is asked again one GET at a time.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence
from urllib.parse import quote

import requests

from edge.errors import EdgeError
from edge.protocol import CERT_BATCH
from edge.state import fingerprint

log = logging.getLogger(__name__)

Request = Callable[..., requests.Response]


class StateUnavailable(EdgeError):
    """The control service's answer could not be turned into a state to apply (a certificate
    not what its route names, say: renewed or removed while fetching)."""


class CertificateDownloads:
    def __init__(self, request: Request) -> None:
        self._request = request
        self.singles = 0
        """Certificates downloaded by their own GET."""
        self.batched = 0
        """Certificates downloaded in batches."""
        self.batches = 0

    @property
    def count(self) -> int:
        return self.singles + self.batched

    def fetch(self, wanted: Sequence[tuple[str, str]], batch: int) -> dict[str, str]:
        """The PEM (chain and key) of each ``(hostname, sha256)``, by hostname: in batches of
        ``batch`` (0: one GET each)."""
        pems: dict[str, str] = {}
        rest = list(wanted)
        while batch > 0 and rest:
            chunk, rest = rest[:batch], rest[batch:]
            got = self._batch(chunk)
            if got is None:
                rest = chunk + rest
                break
            pems.update(got)
        for hostname, cert_sha256 in rest:
            pems[hostname] = self.one(hostname, cert_sha256)
        return pems

    def one(self, hostname: str, cert_sha256: str) -> str:
        response = self._request("GET", f"/api/v1/edge/certs/{quote(hostname)}", timeout=30,
                                 params={"sha256": cert_sha256})
        response.raise_for_status()
        pem = _checked(hostname, cert_sha256, response.json()["pem"])
        self.singles += 1
        return pem

    def _batch(self, chunk: list[tuple[str, str]]) -> dict[str, str] | None:
        """One batch request; None if this replica has no batch endpoint (a release before)."""
        response = self._request("POST", "/api/v1/edge/certs", timeout=120, json={
            "format": CERT_BATCH,
            "certs": [{"hostname": hostname, "sha256": sha} for hostname, sha in chunk]})
        if response.status_code in (404, 405):
            log.info("the control replica answers no batch download (%d); downloading "
                     "certificates one at a time", response.status_code)
            return None
        response.raise_for_status()
        doc: dict[str, Any] = response.json()
        asked = dict(chunk)
        if doc.get("missing"):
            missing = doc["missing"][0]
            raise StateUnavailable(f"certificate of {missing.get('hostname')} changed "
                                   "while fetching")
        pems = {}
        for cert in doc["certs"]:
            hostname = cert["hostname"]
            if hostname not in asked:
                raise StateUnavailable(f"the control service sent {hostname}, not asked for")
            pems[hostname] = _checked(hostname, asked[hostname], cert["pem"])
        if len(pems) != len(asked):
            raise StateUnavailable("a batch download lacks certificates it was asked for")
        self.batches += 1
        self.batched += len(pems)
        return pems


def _checked(hostname: str, cert_sha256: str, pem: Any) -> str:
    text = str(pem)
    if fingerprint(text) != cert_sha256:
        raise StateUnavailable(f"certificate of {hostname} changed while fetching")
    return text

"""Bring your own certificate: the domain's side (upload, removal, fallback to ACME).

Each step is one conditional write on the domain's item carrying, in its outbox
(domains/outbox.py), everything that follows: the timeline event, the upload to store (its key
already encrypted) or to retire/delete, the route (so the edge picks the certificate to serve
again, hot) and the webhook. A crash after that write loses none of them; the worker drains
what is left.

The ACME certificate is never touched: it is issued and renewed as usual, and served again
when the upload is removed or comes within ``byo_fallback_days`` of its expiry. That time is
the upload's due time in an index (certs/uploads.py), which :meth:`CustomCertificates.tick`
asks once per worker round: a round with nothing due costs one query.
"""
from __future__ import annotations

import datetime
import logging
import time
import uuid
from typing import Callable

from certs.byo import UploadedChain, validate
from certs.uploads import UploadStore
from domains import outbox
from domains.errors import DomainError
from domains.service import PENDING_DNS, REMOVING, ROUTED, DomainService
from store import ConflictError, Item

log = logging.getLogger(__name__)
STORE_UPLOAD, RETIRE_UPLOAD, DELETE_UPLOAD = "byo_store", "byo_retire", "byo_delete"
UPLOADED, FALLBACK = "certificate.uploaded", "certificate.fallback"


class NotVerifiedYet(DomainError):
    status = 409

    def __init__(self, hostname: str) -> None:
        super().__init__(f"{hostname} is not verified yet: create its DNS records first, "
                         "then upload a certificate")
        self.hostname = hostname


class NoUpload(DomainError):
    status = 404

    def __init__(self, hostname: str) -> None:
        super().__init__(f"{hostname} has no uploaded certificate")
        self.hostname = hostname


class CustomCertificates:
    def __init__(self, domains: DomainService, uploads: UploadStore, worker_id: str = "",
                 lease_seconds: float = 120.0, clock: Callable[[], float] = time.time,
                 private_roots: bool = False) -> None:
        self.domains = domains
        self.private_roots = private_roots
        self.uploads = uploads
        self._clock = clock
        self._worker_id = worker_id or f"byo-{uuid.uuid4().hex[:12]}"
        self._lease_seconds = lease_seconds

    # The consumers of STORE_UPLOAD, RETIRE_UPLOAD, DELETE_UPLOAD and, after the lifecycle's,
    # of REVOKE (control/wiring.py's table).

    def store_upload(self, entry: Item) -> None:
        self.uploads.store(entry["upload"])

    def retire_upload(self, entry: Item) -> None:
        self.uploads.retire(entry["hostname"], entry["upload_id"])

    def delete_upload(self, entry: Item) -> None:
        self.uploads.delete(entry["hostname"], entry["upload_id"])

    def forget(self, entry: Item) -> None:
        """A removed domain's upload goes with its ACME certificate, so a later owner of the
        hostname never serves (or sees) it; only the one the entry names, when it names one
        (a later owner's upload stays)."""
        self.uploads.delete(entry["hostname"], entry.get(outbox.UPLOAD_ID))

    def check(self, hostname: str, chain_pem: object, key_pem: object) -> UploadedChain:
        """The upload, validated for this domain (``UploadRejected`` says why not)."""
        now = datetime.datetime.fromtimestamp(self._clock(), datetime.timezone.utc)
        return validate(hostname, chain_pem, key_pem, now=now,
                        min_remaining=datetime.timedelta(seconds=self.uploads.fallback_seconds),
                        private_roots=self.private_roots)

    def upload(self, domain: Item, upload: UploadedChain,
               actor: str = "api") -> tuple[Item, Item]:
        """Serve ``upload`` for ``domain`` (replacing any earlier upload): (the domain, the
        upload as stored)."""
        if domain["status"] in (PENDING_DNS, REMOVING):
            raise NotVerifiedYet(domain["hostname"])
        sealed = self.uploads.seal(upload)
        served = domain["status"] in ROUTED
        why = (f"SHA-256 {sealed['fingerprint'][:16]}..., expires {sealed['not_after'][:10]}; "
               + ("served instead of the ACME certificate" if served
                  else "served once the domain is routed at the edge"))
        stored = self.domains.record(domain, "uploaded certificate", why, actor, effects=[
            {"kind": STORE_UPLOAD, "hostname": domain["hostname"], "upload": sealed},
            *self._route(domain),
            self._webhook(UPLOADED, domain, fingerprint=sealed["fingerprint"],
                          not_after=sealed["not_after"], served=served)],
            **{outbox.HELD_UPLOAD: sealed["upload_id"]})
        return stored, sealed

    def remove(self, domain: Item, actor: str = "api") -> Item:
        """Stop serving the domain's upload and forget it; the ACME certificate is served."""
        existing = self.uploads.describe(domain["hostname"])
        if existing is None:
            raise NoUpload(domain["hostname"])
        return self._fall_back(domain, str(existing["upload_id"]), DELETE_UPLOAD, "removed",
                               "the uploaded certificate was removed", actor)

    def tick(self) -> None:
        """The worker's step: :meth:`fall_back_due`."""
        self.fall_back_due()

    def fall_back_due(self, found: list[Item] | None = None) -> int:
        """Fall back to the ACME certificate for every upload whose time has come: one
        ordered index query, plus a lease and a write per upload due. Returns how many fell
        back. Replicas racing for one upload: the lease lets one in, and it looks again at
        the upload (and at the retirement a dead process left in the domain's outbox) before
        it writes, so the fallback is recorded once. ``found``: the uploads an earlier query
        found due (a replica that read before another one acted)."""
        count = 0
        for due in self.uploads.due() if found is None else found:
            hostname, upload_id = due["hostname"], due["upload_id"]
            domain = self.domains.find(hostname)
            try:
                if domain is None or domain["status"] == REMOVING:
                    self.uploads.retire(hostname, upload_id)
                    continue
                leased = self.domains.lease(domain, self._worker_id, self._lease_seconds)
                if leased is None or not self._still_due(leased, upload_id):
                    continue  # another worker has it, or it is done already
                self._fall_back(leased, upload_id, RETIRE_UPLOAD, "expiring",
                                f"the uploaded certificate expires on {due['not_after'][:10]}, "
                                f"within {self.uploads.fallback_seconds / 86400:g} days",
                                "worker")
                count += 1
            except ConflictError:  # another writer changed it meanwhile: due next round
                log.info("fallback of %s raced another writer", hostname)
        return count

    def _still_due(self, domain: Item, upload_id: str) -> bool:
        current = self.uploads.table.get(domain["hostname"])
        if current is None or current["upload_id"] != upload_id or current["retired"]:
            return False
        return not any(entry.get("kind") in (RETIRE_UPLOAD, DELETE_UPLOAD)
                       and entry.get("upload_id") == upload_id
                       for entry in domain.get(outbox.OUTBOX) or [])

    def _fall_back(self, domain: Item, upload_id: str, kind: str, reason: str, why: str,
                   actor: str) -> Item:
        return self.domains.record(domain, "ACME certificate served again", why, actor, effects=[
            {"kind": kind, "hostname": domain["hostname"], "upload_id": upload_id},
            *self._route(domain),
            self._webhook(FALLBACK, domain, reason=reason, upload_id=upload_id)])

    @staticmethod
    def _route(domain: Item) -> list[Item]:
        """The route entry: the edge follows the domain as it is when drained (served only
        while active), and picks the certificate to serve then."""
        return [outbox.route(domain["hostname"], domain["publication_id"])]

    @staticmethod
    def _webhook(event_type: str, domain: Item, **extra: object) -> Item:
        return outbox.webhook(event_type, hostname=domain["hostname"],
                              publication_id=domain["publication_id"],
                              status=domain["status"], **extra)

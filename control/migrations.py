"""The store's schema version and the migrations that move it, one numbered step at a time.

The schema version is one item of the ``store_meta`` table (none: 0, the release before
versions, v0.1.0). Each migration is a small function, with its number and a sentence, that
is idempotent: run twice, or by two processes, it leaves the same store. ``edgectl migrate
--apply`` runs the pending ones in order under a lease (one process at a time) and records each
number as it completes, so an interrupted run goes on where it stopped.

``serve`` refuses a schema newer than it knows and runs on the current or an older one; it
never migrates by itself. A migration may only be run once every replica runs the release that
brings it (a rolling upgrade first replaces the replicas, then the agents, then migrates), and
only the operator knows when that is: a replica started first in a rolling upgrade would
otherwise change the store under the replicas of the release before.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from typing import Callable

from certs.store import CERTIFICATES
from domains.repository import DOMAINS, PENDING_FOR, pending_indexed
from domains.webhooks import COUNTS as WEBHOOK_COUNTS
from domains.webhooks import DUE_INDEXED, PENDING, SENDING, WEBHOOKS
from edge.state_changes import EDGE_CERTS, EDGE_REDIRECTS, EDGE_ROUTES, cert_key
from shortlinks.links import index_links
from store import (ABSENT, SCHEMA_ITEM, SPREAD_SCHEMA, VERSION, Backend, ConflictError,
                   Item, Table, TableSpec, all_items, every)
import store

log = logging.getLogger(__name__)
META = TableSpec(store.META, key="name")
LEASE_ITEM = "migration_lease"
LEASE_SECONDS = 600.0
"""A lease outlives its holder by at most this long; each migration renews it."""


@dataclasses.dataclass(frozen=True)
class Migration:
    number: int
    sentence: str
    run: Callable[[Backend], int]
    """Applies the step; returns how many items it changed (0 when there was nothing to do)."""


def rekey_edge_certs(backend: Backend) -> int:
    """Copy every certificate stored under its bare hostname (the release before's key) to
    ``<hostname>/<sha256>`` when the host's route names it: agents then download by
    fingerprint. The bare items stay while this release's replicas still write them for the
    release before's: the next release drops them."""
    certs, routes = backend.table(EDGE_CERTS), backend.table(EDGE_ROUTES)
    copied = 0
    for item in all_items(certs):
        hostname = str(item["hostname"])
        if "/" in hostname:
            continue
        route = routes.get(hostname)
        if route is None or route.get("removed") or route["cert_sha256"] != item["cert_sha256"]:
            continue  # no route names it: nothing will ask for it by fingerprint
        key = cert_key(hostname, str(item["cert_sha256"]))
        if certs.get(key) is None:
            try:
                certs.put({"hostname": key, "cert_sha256": item["cert_sha256"],
                           "pem_enc": item["pem_enc"]}, expected_version=ABSENT)
                copied += 1
            except ConflictError:
                pass  # a replica stored it meanwhile
    return copied


def drop_hot_link_items(backend: Backend) -> int:
    """Delete the ``edge_redirects`` items the hot-links releases wrote (a link's fields, with
    no ``revision`` and no map ``value``): the table is the change feed's since, and a
    snapshot cannot read them. No table is orphaned: this is what was left of the old use."""
    redirects = backend.table(EDGE_REDIRECTS)
    dropped = 0
    for item in all_items(redirects):
        if item.get("revision") is not None:
            continue
        try:
            if redirects.delete(str(item["key"]), expected_version=item[VERSION]):
                dropped += 1
        except ConflictError:
            pass  # rewritten meanwhile, by the feed: no longer one of those
    return dropped


SPREAD_TABLES = (DOMAINS, EDGE_ROUTES, EDGE_REDIRECTS, CERTIFICATES)
"""The tables with spread index keys (``TableSpec.spread``)."""


def spread_index_keys(backend: Backend) -> int:
    """Store the index keys that carry writes growing with the fleet (a status, a work queue's
    flag, the edge feed) as ``store.SPREAD`` partition key values each (store/dynamo_spread.py):
    from now on this process writes them so, the other replicas within a minute of the schema
    being recorded, and every item written before is rewritten (its index attributes only; its
    version stays). Readers read the one value and the spread ones throughout, so nothing is
    missed meanwhile. Nothing to do on SQLite."""
    backend.spread_keys()
    return sum(backend.table(spec).respread() for spec in SPREAD_TABLES)


def reindex_domains(backend: Backend) -> int:
    """Put back the domains the ``pending`` and ``redirected`` indexes may lack: the unproven
    claims (and the domains still marked as one) from before those indexes, and every domain
    with a redirect (a v0.1.0 replica's write took it out of them on DynamoDB). Each write is
    conditional: a domain changed meanwhile was indexed by that change."""
    domains = backend.table(DOMAINS)
    rewritten = 0
    for item in all_items(domains):
        indexed = pending_indexed(item)
        if indexed.get(PENDING_FOR) == item.get(PENDING_FOR) and not item.get("redirect_to"):
            continue
        try:
            domains.put(indexed, expected_version=item[VERSION])
            rewritten += 1
        except ConflictError:
            pass
    return rewritten


def index_webhooks(backend: Backend) -> int:
    """Put the queued webhooks a replica of the release before wrote (DynamoDB: without the
    ``due`` index's attributes) into that index, then record that it holds every queued one
    (``DUE_INDEXED``): the senders stop reading queued events by state. Reads the queued events
    only; each rewrite is conditional (one changed meanwhile was indexed by that change).
    Returns how many it rewrote; 0 on a store that lacks the index (it stays unused)."""
    webhooks = backend.table(WEBHOOKS)
    if "due" in webhooks.lacking:
        return 0
    rewritten = seen = 0
    for state in (PENDING, SENDING):
        for event in _queued(webhooks, state):
            seen += 1
            try:
                webhooks.put(event, expected_version=event[VERSION])
                rewritten += 1
            except ConflictError:
                pass
    mark_webhooks_indexed(backend)
    recount_webhooks(backend, seen)
    return rewritten


def _queued(webhooks: Table, state: str) -> list[Item]:
    return list(every(lambda cursor: webhooks.query("state", state, limit=500, cursor=cursor)))


def recount_webhooks(backend: Backend, queued: int) -> None:
    """Set the kept count of queued webhooks to ``queued`` (the release before did not keep
    it, so it drifted while both ran); one queued meanwhile may leave it off by one."""
    counts = backend.table(WEBHOOKS)
    kept = int((counts.get(WEBHOOK_COUNTS) or {}).get(PENDING) or 0)
    if queued == kept:
        return
    try:
        counts.put({"id": WEBHOOK_COUNTS}, expected_version=ABSENT)
    except ConflictError:
        pass  # there: its counters stay
    counts.increment(WEBHOOK_COUNTS, PENDING, queued - kept)


def mark_webhooks_indexed(backend: Backend) -> None:
    webhooks = backend.table(WEBHOOKS)
    if "due" not in webhooks.lacking:
        webhooks.put({"id": DUE_INDEXED, "complete": True})


MIGRATIONS = (
    Migration(1, "edge_certs keyed by hostname and fingerprint (the bare-hostname items stay "
                 "for the release before)", rekey_edge_certs),
    Migration(2, "edge_redirects without the hot-link items of the releases before the "
                 "change feed", drop_hot_link_items),
    Migration(SPREAD_SCHEMA, "index keys written by every domain, certificate and edge feed "
                             "change spread over several partitions (DynamoDB)",
              spread_index_keys),
    Migration(4, "domains: unproven claims and redirects in their sparse indexes (the cap on "
                 "claims and the redirect check read them, not a publication's domains)",
              reindex_domains),
    Migration(5, "short_links: every link in the domain index (removing a short domain reads "
                 "its links, not every link)", index_links),
    Migration(6, "webhook_outbox: every queued webhook in the due index (a sender's round "
                 "reads what is due, not every queued webhook)", index_webhooks),
)
SCHEMA = MIGRATIONS[-1].number
"""The schema this release knows."""


def schema_version(backend: Backend) -> int:
    item = backend.table(META).get(SCHEMA_ITEM)
    return int(item["schema_version"]) if item is not None else 0


def pending(backend: Backend) -> list[Migration]:
    current = schema_version(backend)
    return [migration for migration in MIGRATIONS if migration.number > current]


def refusal(backend: Backend) -> str | None:
    """Why this release must not run against this store (a schema newer than it knows)."""
    current = schema_version(backend)
    if current > SCHEMA:
        return (f"the store's schema is {current}, newer than this release knows ({SCHEMA}): "
                "run the release that migrated it, or a newer one")
    return None


class LeaseHeld(Exception):
    """Another process holds the migration lease."""


class MigrationLease:
    """The one process migrating: a ``store_meta`` item created only where none is live (it
    expires, so a holder that died frees it after ``LEASE_SECONDS``)."""

    def __init__(self, backend: Backend, holder: str | None = None) -> None:
        self._meta = backend.table(META)
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self._version: int | None = None

    def take(self) -> None:
        try:
            self._version = self._meta.put(self._item(), expected_version=ABSENT)[VERSION]
        except ConflictError:
            item = self._meta.get(LEASE_ITEM) or {}
            raise LeaseHeld(f"{item.get('holder', 'another process')} is migrating the store "
                            f"(its lease ends within {LEASE_SECONDS:.0f} s): wait for it to "
                            "finish, then plan again") from None

    def renew(self) -> None:
        try:
            self._version = self._meta.put(self._item(), expected_version=self._version)[VERSION]
        except ConflictError:
            raise LeaseHeld("the migration lease expired and another process took it: "
                            "stopping here (every step so far is recorded)") from None

    def release(self) -> None:
        try:
            self._meta.delete(LEASE_ITEM, expected_version=self._version)
        except ConflictError:
            pass  # expired and taken meanwhile: it is the other holder's now

    def _item(self) -> dict[str, object]:
        return {"name": LEASE_ITEM, "holder": self.holder,
                "expires_at": time.time() + LEASE_SECONDS}


def apply(backend: Backend, holder: str | None = None) -> list[tuple[Migration, int]]:
    """Run the pending migrations in order under the lease; each one's number is recorded
    once it has run. Returns what ran, with the items each changed. Raises
    :class:`LeaseHeld` if another process migrates."""
    lease = MigrationLease(backend, holder)
    lease.take()
    done: list[tuple[Migration, int]] = []
    try:
        for migration in pending(backend):
            lease.renew()
            changed = migration.run(backend)
            _record(backend, migration.number)
            log.info("store schema %d: %s (%d items)", migration.number, migration.sentence,
                     changed)
            done.append((migration, changed))
    finally:
        lease.release()
    return done


def stamp(backend: Backend) -> None:
    """Record this release's schema on a store that holds nothing yet (none to migrate), and
    what a migration would have recorded there: that the links' ``domain`` index holds every
    link (without it, each short domain's removal read every link, for good), and that the
    ``due`` index holds every queued webhook."""
    index_links(backend)
    mark_webhooks_indexed(backend)
    _record(backend, SCHEMA)


def _record(backend: Backend, number: int) -> None:
    """Move the recorded schema to ``number``, never back (conditional on what was read)."""
    meta = backend.table(META)
    while True:
        item = meta.get(SCHEMA_ITEM)
        if item is not None and int(item["schema_version"]) >= number:
            return
        try:
            meta.put({"name": SCHEMA_ITEM, "schema_version": number},
                     expected_version=item[VERSION] if item is not None else ABSENT)
            return
        except ConflictError:
            continue

"""How the control service changes the desired edge state: one route (or link) at a time.

Storage: one item per route (publication, certificate fingerprint, the revision that wrote it),
per certificate (chain and key, encrypted), per short link the edge answers from its map
(``edge_redirects``), and one small ``desired`` item: the content version, the routes and
redirects digests (``edge.state.routes_digest``) and the route count, kept by adding and
subtracting so no change reads every route, the config, a monotonic ``revision`` (which
routes and redirects share) and the feed's log with the keys its last revisions wrote
(edge/feed_log.py). No item grows with the number of domains or links.

A change commits in one conditional write of the ``desired`` item, which carries the changed
routes as ``pending`` (an outbox); the route items are written after it, each only over an older
revision. A replica that loses the race writes no route item; one that dies after committing
leaves ``pending`` for the next writer or reader to apply. So the version never names a state
the route items do not hold, and no stale row outlives a newer change.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from typing import Any, Callable, Collection

from edge.state import (DIGEST_MODULUS, EdgeConfig, Redirect, RouteRef, fingerprint,
                        redirect_hash, route_hash, state_version)
from edge import feed_log
from edge.state_reconcile import Reconciliation, _newer, route_ref
from edge.watch import VersionWatch
from kit.vault import KeyVault
from store import (ABSENT, EXPIRES_AT, VERSION, ConflictError, Item, RangeIndex, Table,
                   TableSpec, rewrite_field)

log = logging.getLogger(__name__)
EDGE_STATE = TableSpec("edge_state", key="name")
FEED = "routes"
EDGE_ROUTES = TableSpec("edge_routes", key="hostname", spread=("feed",),
                        ranges=(RangeIndex("feed", key="feed", sort="revision"),))
"""Route items, and tombstones (``removed``) of routes taken off, both listed by the revision
that wrote them (the ``feed`` index): an agent asks for the changes since its revision.
A reconciliation drops the tombstones and records ``compacted_revision``: an agent from before
it gets a full snapshot, so no removal can be missed."""
EDGE_REDIRECTS = TableSpec("edge_redirects", key="key", ranges=(
    RangeIndex("feed", key="feed", sort="revision"),
    RangeIndex("expiry", key="expiring", sort="expires")), spread=("feed", "expiring"))
"""Short links the edge answers from its map (``host/slug`` -> ``value``, the map value), with
tombstones like routes; one with an expiry is in the ``expiry`` index until it is removed, so
the worker finds what is due without reading the rest."""
EDGE_CERTS = TableSpec("edge_certs", key="hostname")
"""Certificates keyed by hostname and fingerprint (:func:`cert_key`): an agent gets the one its
route names, also after a renewal (the one replaced stays ``SUPERSEDED_SECONDS``). The release
before's replicas read one item per bare hostname: it is written too, until the next release."""
SUPERSEDED_SECONDS = 86400.0
COMMIT_ATTEMPTS = 20
CHUNK = 200
"""Route changes per commit: the outbox rides in the version item, which must stay small."""
OUTBOX_BYTES = 100_000
"""And at most about this much of it: a link's target may take 2 kB (items cap at 400 KB)."""
RouteChange = tuple[str, str] | tuple[str, str, str] | None
"""A route's new (publication id, certificate + key PEM[, extras]), or None to remove it."""
RedirectChange = Redirect | None
Read = tuple[dict[str, Item | None], dict[str, Item | None]]
"""Route and link items as a commit read them, by key."""
UNREAD = object()


class StateChanges(Reconciliation):
    """Commits route, redirect and config changes; the version item and the route, redirect
    and certificate items it keeps in step."""

    def __init__(self, state: Table, routes: Table, certs: Table, vault: KeyVault,
                 redirects: Table | None = None, clock: Callable[[], float] = time.time) -> None:
        self.state, self.routes, self.certs, self.redirects = state, routes, certs, redirects
        self._vault, self._clock = vault, clock
        self.watch = VersionWatch(self.current_version)
        """Agents waiting for the next version (a long poll) wait here."""

    def meta(self) -> dict[str, Any] | None:
        return self.state.get("desired")

    def current_version(self) -> str | None:
        meta = self.meta()
        return str(meta["edge_version"]) if meta else None

    def reencrypt(self) -> int:
        return rewrite_field(self.certs, "pem_enc", self._vault.rotate)

    def change(self, routes: dict[str, RouteChange], config: EdgeConfig | None = None,
               redirects: dict[str, RedirectChange] | None = None,
               since: int | None = None, tombstones: Collection[str] = ()) -> bool:
        """Apply these route and redirect changes (and the config, if given); True if the
        version moved. Reads the ``desired`` item and each changed item, never all of them. Up
        to ``CHUNK`` changes (``OUTBOX_BYTES``) commit at once; more (a reconciliation) commit
        chunk by chunk. ``since``: a reconciliation's, which decided from what it read up to
        that revision: an item a later commit wrote is left as that commit made it.
        ``tombstones``: removed routes (hostnames) and links (keys) whose tombstone is written
        at this revision even where none (or an older tombstone) is held, so that a commit built
        on an earlier read (a move's publish, with its ``since``) leaves the removal in place."""
        redirects = redirects or {}
        chunks: list[list[tuple[str, str]]] = [[]]
        size = 0
        for kind, key in [("route", h) for h in sorted(routes)] + \
                [("redirect", k) for k in sorted(redirects)]:
            redirect = redirects.get(key) if kind == "redirect" else None
            route = routes.get(key) if kind == "route" else None
            weight = len(key) + 64 + (len(redirect.value) if redirect is not None else 0) \
                + (len(_extras(route)) if route else 0)
            if len(chunks[-1]) >= CHUNK or size + weight > OUTBOX_BYTES:
                chunks.append([])
                size = 0
            chunks[-1].append((kind, key))
            size += weight
        moved = False
        for chunk in chunks:
            moved = self._change({h: routes[h] for kind, h in chunk if kind == "route"}, config,
                                 {k: redirects[k] for kind, k in chunk
                                  if kind == "redirect"}, since, frozenset(tombstones)) or moved
        return moved

    def _change(self, routes: dict[str, RouteChange], config: EdgeConfig | None,
                redirects: dict[str, RedirectChange], since: int | None,
                tombstones: frozenset[str] = frozenset()) -> bool:
        for attempt in range(COMMIT_ATTEMPTS):
            meta = self.settled(self.state.get("desired"))
            try:
                return self._commit(meta, routes, config, redirects, since, tombstones)
            except ConflictError:  # another replica committed meanwhile: build on its state
                time.sleep(0.005 * attempt)
        raise ConflictError(EDGE_STATE.name, "desired", None)

    def _commit(self, meta: Item | None, routes: dict[str, RouteChange],
                config: EdgeConfig | None, redirects: dict[str, RedirectChange],
                since: int | None = None, tombstones: frozenset[str] = frozenset()) -> bool:
        digest = int(meta["routes_digest"], 16) if meta and "routes_digest" in meta else 0
        overwritten: list[int] = []  # the revisions of the feed items this commit rewrites
        read = self._read(routes, redirects)
        rdigest, pending_redirects = self._redirect_changes(meta, redirects, since, overwritten,
                                                            read[1], tombstones)
        pending: dict[str, dict[str, str] | None] = {}
        superseded, added = list[str](), 0  # added: routes added less routes removed
        stored: list[tuple[RouteRef, str]] = []  # the certificates to store before the commit
        for hostname, new in sorted(routes.items()):
            old = read[0][hostname]
            if _newer(old, since):
                continue
            old_ref = route_ref(old) if old is not None and not old.get("removed") else None
            new_ref = RouteRef(hostname, new[0], fingerprint(new[1]), _extras(new)) \
                if new else None
            if old_ref == new_ref and (new_ref is not None or hostname not in tombstones):
                continue
            overwritten += [int(old["revision"])] if old and old.get("revision") else []
            if new is not None and new_ref is not None and (
                    old_ref is None or old_ref.cert_sha256 != new_ref.cert_sha256):
                stored.append((new_ref, new[1]))  # one the route named already was stored then
                if old_ref is not None:
                    superseded.append(cert_key(hostname, old_ref.cert_sha256))
            digest = (digest - (route_hash(old_ref) if old_ref else 0)
                      + (route_hash(new_ref) if new_ref else 0)) % DIGEST_MODULUS
            pending[hostname] = dataclasses.asdict(new_ref) if new_ref else None
            added += (new_ref is not None) - (old_ref is not None)
        current = EdgeConfig.from_json(meta["config"]) if meta and "config" in meta else None
        config = config or current or EdgeConfig((), ())
        version = state_version(digest, config, rdigest)
        if meta is not None and not pending and not pending_redirects \
                and meta["edge_version"] == version:
            return False
        self._store_certificates(stored)
        revision = int(meta.get("revision") or 0) + 1 if meta else 1
        committed = self.state.put({
            "name": "desired", "edge_version": version, "routes_digest": f"{digest:032x}",
            "redirects_digest": f"{rdigest:032x}", "pending_redirects": pending_redirects,
            "config": config.to_json(), "revision": revision, "pending": pending,
            "published_at": self._clock(),
            "compacted_revision": meta.get("compacted_revision", 0) if meta else 0,
            "forced_version": meta.get("forced_version")  # a force ends with the version
            if meta and meta["edge_version"] == version else None,
            **({"routes_count": int((meta or {}).get("routes_count", 0)) + added}
               if not meta or "routes_count" in meta else {}),  # none: a version item of old
            **feed_log.advanced(meta, revision, overwritten,
                                len(pending) + len(pending_redirects)),
            **feed_log.keyed(meta, revision, sorted(pending), sorted(pending_redirects))},
            expected_version=meta[VERSION] if meta else ABSENT)
        self.settled(committed, read)
        self._expire_certificates(superseded)
        self.watch.changed(version)
        log.info("edge state %s (revision %d): %d route and %d redirect changes", version,
                 revision, len(pending), len(pending_redirects))
        return True

    def _read(self, routes: dict[str, RouteChange],
              redirects: dict[str, RedirectChange]) -> Read:
        """The items a commit changes, read in batches: its settle writes over them without a
        second read."""
        if redirects and self.redirects is None:
            raise ValueError("this store keeps no redirects")
        return (_read_all(self.routes, routes),
                _read_all(self.redirects, redirects) if self.redirects is not None else {})

    def _redirect_changes(self, meta: Item | None, redirects: dict[str, RedirectChange],
                          since: int | None, overwritten: list[int], read: dict[str, Item | None],
                          tombstones: frozenset[str] = frozenset()
                          ) -> tuple[int, dict[str, dict[str, Any] | None]]:
        """The redirects digest after these changes, and the changes to write (each read by
        key; one a commit after ``since`` wrote is left; ``tombstones``: see :meth:`change`)."""
        rdigest = int(meta.get("redirects_digest") or "0", 16) if meta else 0
        pending: dict[str, dict[str, Any] | None] = {}
        for key, redirect in sorted(redirects.items()):
            old = read[key]
            if _newer(old, since):
                continue
            old_value = old["value"] if old is not None and not old.get("removed") else None
            new_value = redirect.value if redirect is not None else None
            if old_value == new_value and (new_value is not None or key not in tombstones):
                continue
            overwritten += [int(old["revision"])] if old and old.get("revision") else []
            rdigest = (rdigest - (redirect_hash(key, old_value) if old_value else 0)
                       + (redirect_hash(key, new_value) if new_value else 0)) % DIGEST_MODULUS
            pending[key] = None if redirect is None else {
                "value": new_value, "expires": redirect.expires}
        return rdigest, pending

    def settled(self, meta: Item | None, read: Read = ({}, {})) -> Item | None:
        """``meta`` with its pending route changes written to the route items (idempotent:
        an item is written only over an older revision) and the outbox cleared. ``read``:
        route and link items as the commit read them, written over without reading them again
        (a conditional write: one changed since is read again)."""
        if meta is None or not (meta.get("pending") or meta.get("pending_redirects")):
            return meta
        revision = int(meta["revision"])
        for hostname, ref in (meta.get("pending") or {}).items():
            self._write_route(hostname, ref, revision, read[0].get(hostname, UNREAD))
        for key, redirect in (meta.get("pending_redirects") or {}).items():
            self._write_redirect(key, redirect, revision, read[1].get(key, UNREAD))
        try:
            return self.state.put({**meta, "pending": {}, "pending_redirects": {}},
                                  expected_version=meta[VERSION])
        except ConflictError:  # a newer commit: it settled ours before building on it, but
            # its own changes may still be pending: settle them too before anyone builds on it
            # (a commit built on unwritten route items computes its digest from stale ones)
            return self.settled(self.state.get("desired"))

    def _write_route(self, hostname: str, ref: dict[str, str] | None, revision: int,
                     existing: Item | None | object = UNREAD) -> None:
        while True:
            if existing is UNREAD:
                existing = self.routes.get(hostname)
            assert existing is None or isinstance(existing, dict)
            if existing is not None and int(existing.get("revision") or 0) >= revision:
                return  # a newer change already wrote it
            item = {"hostname": hostname, "removed": True} if ref is None else dict(ref)
            try:
                self.routes.put({**item, "feed": FEED, "revision": revision},
                                expected_version=existing[VERSION] if existing else ABSENT)
                if ref is None:
                    self._drop_certificate(hostname, (existing or {}).get("cert_sha256"))
                return
            except ConflictError:
                existing = UNREAD

    def _write_redirect(self, key: str, redirect: dict[str, Any] | None, revision: int,
                        existing: Item | None | object = UNREAD) -> None:
        assert self.redirects is not None
        while True:
            if existing is UNREAD:
                existing = self.redirects.get(key)
            assert existing is None or isinstance(existing, dict)
            if existing is not None and int(existing.get("revision") or 0) >= revision:
                return  # a newer change already wrote it
            item: Item = {"key": key, "feed": FEED, "revision": revision}
            if redirect is None:
                item["removed"] = True
            else:
                item["value"] = redirect["value"]
                if redirect.get("expires"):  # in the expiry index only while it has one
                    item.update(expiring="1", expires=int(redirect["expires"]))
            try:
                self.redirects.put(item, expected_version=existing[VERSION] if existing
                                   else ABSENT)
                return
            except ConflictError:
                existing = UNREAD

    def due_redirects(self, now: float, limit: int = CHUNK) -> list[str]:
        """Keys of redirects whose link has expired by ``now``: one index query."""
        if self.redirects is None:
            return []
        page = self.redirects.query_range("expiry", "1", upper=now, limit=limit)
        return [str(item["key"]) for item in page.items]

    def _store_certificates(self, wanted: list[tuple[RouteRef, str]]) -> None:
        """Each route's certificate under its hostname and fingerprint, and under the bare
        hostname for the release before's replicas (each only if not there already: a PEM is
        encrypted once); what is there read in batches."""
        keys = [(key, ref.cert_sha256, pem) for ref, pem in wanted
                for key in (cert_key(ref.hostname, ref.cert_sha256), ref.hostname)]
        found = _read_all(self.certs, [key for key, _, _ in keys])
        for key, cert_sha256, pem in keys:
            stored = found[key]
            if stored is None or stored["cert_sha256"] != cert_sha256 \
                    or stored.get(EXPIRES_AT) is not None:
                self.certs.put({"hostname": key, "cert_sha256": cert_sha256,
                                "pem_enc": self._vault.encrypt(pem.encode())})

    def _expire_certificates(self, keys: list[str]) -> None:
        """Certificates renewals replaced: kept a while for agents on an earlier revision."""
        for item in filter(None, map(self.certs.get, keys)):
            with contextlib.suppress(ConflictError):  # stored again: a route names it again
                self.certs.put({**item, EXPIRES_AT: self._clock() + SUPERSEDED_SECONDS},
                               expected_version=item[VERSION])

    def _drop_certificate(self, hostname: str, cert_sha256: str | None) -> None:
        """The key of a removed route, unless a newer change routed the host again meanwhile
        (it stores its certificate before it commits: a conditional delete leaves that one)."""
        route = self.routes.get(hostname)
        if route is None or not route.get("removed"):
            return
        for key in (hostname, cert_key(hostname, cert_sha256 or "")):
            cert = self.certs.get(key)
            with contextlib.suppress(ConflictError):
                if cert is not None:
                    self.certs.delete(key, expected_version=cert[VERSION])

    def force(self, version: str) -> bool:
        """Let nodes apply ``version`` even if its plan looks unsafe (an operator's decision)."""
        meta = self.meta()
        if meta is None or meta["edge_version"] != version:
            return False
        try:
            self.state.put({**meta, "forced_version": version}, expected_version=meta[VERSION])
        except ConflictError:
            return False
        return True


def _read_all(table: Table, keys: Collection[str]) -> dict[str, Item | None]:
    """Each key's item (None: absent): one read for one key, else batch reads (``get_many``:
    consistent, ``store.BATCH_GET`` keys a request)."""
    if len(keys) <= 1:
        return {key: table.get(key) for key in keys}
    found = table.get_many(sorted(keys))
    return {key: found.get(key) for key in keys}


def cert_key(hostname: str, cert_sha256: str) -> str:
    """An ``edge_certs`` key: no hostname holds a "/", so none is a bare hostname's."""
    return f"{hostname}/{cert_sha256}"


def _extras(change: tuple[str, ...]) -> str:
    return change[2] if len(change) > 2 else ""

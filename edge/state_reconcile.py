"""A reconciliation of the desired edge state: make the stored routes (or links) exactly a
desired set read elsewhere (at a replica's start, or on an operator's request), while other
replicas go on changing them.

Its reads are not one snapshot: the desired set is read from one table (perhaps through an
index that lags it), the stored items through the feed index (which may lag too), page by page.
So a reconciliation decides nothing from an item another commit wrote after it began (the
revision it took first, ``since``); it takes off only what the caller confirmed off (``gone``,
read by key: a route stored but missing from a lagging read of the desired set is not proof
that it is unwanted); and it repairs a digest only where there is none (a lagging scan's digest
is not proof of drift).
"""
from __future__ import annotations

from typing import Any, Callable

from edge.state import DIGEST_MODULUS, DesiredState, EdgeConfig, Redirect, RouteRef, fingerprint, \
    redirect_hash, routes_digest
from store import VERSION, ConflictError, Item, Table, every

PEMS_HELD = 200
"""A reconciliation commits as it goes: at most this many changed routes' PEMs in memory."""
Gone = Callable[[set[str]], set[str]]
"""Of the keys a reconciliation would take off, those a consistent read confirms are off."""


class Reconciliation:
    """The reconciliation half of :class:`edge.state_changes.StateChanges`, which it is mixed
    into (it commits through that class's ``change``)."""

    state: Table
    routes: Table
    redirects: Table | None

    def meta(self) -> Item | None:
        raise NotImplementedError

    def settled(self, meta: Item | None) -> Item | None:
        raise NotImplementedError

    def change(self, routes: dict[str, Any], config: EdgeConfig | None = None,
               redirects: dict[str, Redirect | None] | None = None,
               since: int | None = None) -> bool:
        raise NotImplementedError

    def mark(self) -> int:
        """The current revision: what a reconciliation's ``since`` is taken as, before it
        reads what it reconciles to."""
        return _mark(self.meta()) or 0

    def save(self, desired: DesiredState) -> bool:
        """Make the stored state exactly ``desired`` (see :meth:`reconcile`)."""
        pems = {route.hostname: route.pem for route in desired.routes}
        return self.reconcile({r.hostname: (r.publication_id, r.extras) for r in desired.routes},
                              pems.get, desired.config)

    def reconcile(self, routes: dict[str, str | tuple[str, str]],
                  pem_of: Callable[[str], str | None], config: EdgeConfig,
                  since: int | None = None, gone: Gone | None = None) -> bool:
        """Make the stored state exactly ``routes`` (hostname -> publication id, or (publication
        id, extras); a route whose ``pem_of`` is None is left out): reads every route item
        once, keeps only the changed routes' PEMs in memory, sets the digest of a store from
        an earlier version (it has none) and drops tombstones. True if anything changed.

        ``since``: the revision read before ``routes`` was (:meth:`mark`; default: now). A
        route a change committed after it is newer than ``routes`` and stays as that change
        made it. ``gone``: of the stored routes missing from ``routes``, those confirmed off
        (default: all); the others stay."""
        before = self.settled(self.meta())  # the scan must not miss a change after this
        since = _mark(before) if since is None else since
        stored: dict[str, RouteRef] = {}
        tombstones, fresh = [], set()
        for item in every(lambda cursor: self.routes.scan(limit=500, cursor=cursor)):
            if _newer(item, since):
                fresh.add(item["hostname"])
            if item.get("removed"):
                tombstones.append(item)
            else:
                stored[item["hostname"]] = route_ref(item)
        if before is not None and ("routes_digest" not in before
                                   or "routes_count" not in before):
            self._repair(before, {"routes_digest": f"{routes_digest(stored.values()):032x}",
                                  "routes_count": len(stored)})
        self._compact([t for t in tombstones if t["hostname"] not in fresh])
        changes: dict[str, Any] = dict.fromkeys(_confirmed(gone, {
            hostname for hostname in stored if hostname not in routes and hostname not in fresh}))
        moved = False
        for hostname, route in routes.items():
            if hostname in fresh:
                continue
            publication_id, extras = _split(route)
            pem = pem_of(hostname)
            if pem is None:
                if hostname in stored:
                    changes[hostname] = None
            elif stored.get(hostname) != RouteRef(hostname, publication_id, fingerprint(pem),
                                                  extras):
                changes[hostname] = (publication_id, pem, extras)
            if len(changes) >= PEMS_HELD:
                moved = self.change(changes, config, since=since) or moved
                changes = {}
        return self.change(changes, config, since=since) or moved

    def reconcile_redirects(self, desired: dict[str, Redirect], since: int | None = None,
                            gone: Gone | None = None) -> bool:
        """Make the stored redirects exactly ``desired`` (reads every redirect item once) and
        drop their tombstones. True if anything changed. ``since`` and ``gone``: as for
        :meth:`reconcile`."""
        table = self.redirects
        if table is None:
            return False
        before = self.settled(self.meta())
        since = _mark(before) if since is None else since
        stored, tombstones, fresh = {}, [], set()
        for item in every(lambda cursor: table.scan(limit=500, cursor=cursor)):
            if _newer(item, since):
                fresh.add(item["key"])
            if item.get("removed"):
                tombstones.append(item)
            else:
                stored[item["key"]] = item["value"]
        if before is not None and not before.get("redirects_digest"):
            digest = sum(redirect_hash(k, v) for k, v in stored.items()) % DIGEST_MODULUS
            self._repair(before, {"redirects_digest": f"{digest:032x}"})
        self._compact([t for t in tombstones if t["key"] not in fresh], table)
        changes: dict[str, Redirect | None] = dict.fromkeys(_confirmed(gone, {
            key for key in stored if key not in desired and key not in fresh}))
        changes.update((key, r) for key, r in desired.items()
                       if stored.get(key) != r.value and key not in fresh)
        return self.change({}, redirects=changes, since=since) if changes else False

    def _compact(self, tombstones: list[Item], table: Table | None = None) -> None:
        """Drop tombstones, after recording that agents older than them need a snapshot."""
        table = table or self.routes
        meta = self.settled(self.meta())
        if not tombstones or meta is None:
            return
        newest = max(int(item["revision"]) for item in tombstones)
        try:
            self.state.put({**meta, "compacted_revision": max(
                newest, int(meta.get("compacted_revision") or 0))},
                expected_version=meta[VERSION])
        except ConflictError:
            return  # a change meanwhile; the next reconciliation compacts
        for item in tombstones:
            try:
                table.delete(item[table.spec.key], expected_version=item[VERSION])
            except ConflictError:
                continue  # routed again meanwhile

    def _repair(self, meta: Item, found: dict[str, Any]) -> None:
        """Set what a scan found on a version item of an earlier release, which kept no digest
        or count, only if it has not moved since ``meta`` was read before the scan."""
        try:
            self.state.put({**meta, **found}, expected_version=meta[VERSION])
        except ConflictError:
            pass  # a change meanwhile; the next reconciliation looks again


def _confirmed(gone: Gone | None, keys: set[str]) -> set[str]:
    return keys if gone is None or not keys else gone(keys) & keys


def _mark(meta: Item | None) -> int | None:
    return int(meta.get("revision") or 0) if meta is not None else None


def _newer(item: Item | None, since: int | None) -> bool:
    """Whether a commit after revision ``since`` wrote ``item``."""
    return since is not None and item is not None and int(item.get("revision") or 0) > since


def route_ref(item: Item) -> RouteRef:
    return RouteRef(item["hostname"], item["publication_id"], item["cert_sha256"],
                    item.get("extras") or "")


def _split(route: str | tuple[str, str]) -> tuple[str, str]:  # a publication id [, extras]
    return (route, "") if isinstance(route, str) else route

"""The edge state of every shard, and the router's map, behind the interface the publisher
uses (docs/shards.md).

Each shard keeps an :class:`EdgeStateStore` of its own: its own version item, revision, feed,
routes, certificates, short links and nodes, in the same tables under the shard's namespace
(store/namespace.py). The default shard's namespace is the tables' plain keys: with no shard
configured the edge stores, answers and costs exactly what it did before shards. A change is
split by the shard each hostname is assigned to (edge/shards.py; a short link goes with its
host), so it commits, and wakes long polls, in that shard only; the config goes to every shard.
Hostnames off the default shard also get an entry in the router's map (edge/router_feed.py).

Moving a hostname between shards (publish to the new one, switch the router, drop it from the
old one) is built from :meth:`ShardedState.publish_to`, :meth:`holding`, :meth:`nodes` and
``router.assign``: :meth:`change` itself always follows the current assignment.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Callable, Protocol

from edge.router_feed import ROUTER, Assignment, RouterFeed
from edge.shards import DEFAULT_SHARD, ShardSet
from edge.state import EdgeConfig, Redirect
from edge.state_changes import FEED, RedirectChange, RouteChange, StateChanges
from edge.state_feed import StateFeed
from edge.state_store import (EDGE_CERTS, EDGE_NODES, EDGE_REDIRECTS, EDGE_ROUTES, EDGE_STATE,
                              EDGE_VISIT_REPORTS, EdgeStateStore)
from kit.vault import KeyVault
from store import Backend, Table, rewrite_field
from store.namespace import namespaced


LISTING = ("feed", FEED)
"""Every route and link item of a shard is in the feed index: a shard's snapshot and its
reconciliation read their share through it, not the whole table (store/namespace.py)."""


@dataclasses.dataclass(frozen=True)
class EdgeTables:
    """The edge state's tables, whole (every namespace's items)."""

    state: Table
    routes: Table
    certs: Table
    nodes: Table
    reports: Table
    redirects: Table


def link_host(key: str) -> str:
    """The host of a short link's map key (``host/slug``): its shard is the host's."""
    return key.partition("/")[0]


Parts = dict[str, tuple[dict[str, RouteChange], dict[str, RedirectChange]]]
"""Route and link changes by shard."""


class Moves(Protocol):
    """What the state hands the mover (edge/moves.py), which sets itself as ``mover``."""

    def enqueue(self, hostname: str, source: str, target: str,
                link: str | None = None) -> None: ...

    def flying(self) -> dict[str, tuple[str, str]]:
        """Every hostname with a move in flight: (source, target)."""

    def follow(self, hostname: str, links: list[str]) -> None:
        """These links of ``hostname`` move with it (dropped from the source after it)."""

    def source(self, hostname: str) -> str | None:
        """The shard a move of ``hostname`` in flight copies from (one read by key)."""


class ShardedState:
    def __init__(self, tables: EdgeTables, vault: KeyVault,
                 shard_set: Callable[[], ShardSet] = ShardSet,
                 report_memory: float = 7 * 86400.0,
                 clock: Callable[[], float] = time.time) -> None:
        """``shard_set`` is asked on every change: it must answer from memory."""
        self.tables = tables
        self.shard_set = shard_set
        self._vault = vault
        self._report_memory = report_memory
        self._clock = clock
        self.mover: Moves | None = None
        """Where misplaced hostnames go, and what says which hostnames are moving."""
        self._stores: dict[str, EdgeStateStore] = {}
        self._lock = threading.Lock()
        self.default = self.store(DEFAULT_SHARD)
        router = StateChanges(namespaced(tables.state, ROUTER),
                              namespaced(tables.routes, ROUTER, LISTING),
                              namespaced(tables.certs, ROUTER), vault,
                              namespaced(tables.redirects, ROUTER, LISTING), clock)
        self._router_changes = router
        self.router = RouterFeed(router, StateFeed(router, router.routes, router.certs, vault,
                                                   router.redirects),
                                 lambda: self.shard_set())

    @classmethod
    def from_backend(cls, backend: Backend, vault: KeyVault, shard_set: Callable[[], ShardSet],
                     report_memory: float, clock: Callable[[], float]) -> "ShardedState":
        return cls(EdgeTables(*(backend.table(spec) for spec in (
            EDGE_STATE, EDGE_ROUTES, EDGE_CERTS, EDGE_NODES, EDGE_VISIT_REPORTS,
            EDGE_REDIRECTS))), vault, shard_set, report_memory, clock)

    def store(self, shard: str) -> EdgeStateStore:
        """Shard ``shard``'s state (whether or not it is configured: a shard being removed
        keeps its state until its hostnames have moved)."""
        with self._lock:
            found = self._stores.get(shard)
            if found is None:
                ns = "" if shard == DEFAULT_SHARD else shard
                t = self.tables
                found = EdgeStateStore(
                    namespaced(t.state, ns), namespaced(t.routes, ns, LISTING),
                    namespaced(t.certs, ns), namespaced(t.nodes, ns), self._vault, t.reports,
                    self._report_memory, self._clock,
                    redirects=namespaced(t.redirects, ns, LISTING))
                self._stores[shard] = found
            return found

    def known(self, shard: str) -> bool:
        return shard in self.shard_set().all_names

    # --- what the publisher calls ----------------------------------------------------------

    def change(self, routes: dict[str, RouteChange], config: EdgeConfig | None = None,
               redirects: dict[str, RedirectChange] | None = None) -> bool:
        """Each route and link change committed in its hostname's shard (one commit per shard
        changed), the config in every shard; the router's map follows the routes. A removal
        also goes to the shard the router sends the hostname to, and a hostname served by
        another shard than its assignment with no move in flight (a replica that read the
        shard set before it changed put it there) is handed to the mover. A link removed while
        its host moves is removed from the move's source too (else the move copies it back).

        Such a removal (a route the router sends elsewhere than its assignment, a link whose
        host has a move in flight) leaves a tombstone in the assigned shard even if that holds
        nothing yet, written after the removal from the serving shard: a move publishing there
        read the serving shard's copy before that removal, so after its own revision mark, and
        its commit keeps the tombstone (``since``) instead of serving the copy again."""
        shards = self.shard_set()
        sharded = shards.all_names != [DEFAULT_SHARD]
        served = {hostname: self._served(hostname) for hostname in routes} if sharded else {}
        parts, later, misplaced = self._split(shards, routes, redirects or {}, served)
        moved = False
        for shard in sorted(set(parts) | (set(shards.all_names) if config is not None
                                          else set())):
            shard_routes, shard_links = parts.get(shard, ({}, {}))
            moved = self.store(shard).change(shard_routes, config, shard_links) or moved
        for shard, (shard_routes, shard_links) in sorted(later.items()):
            moved = self.store(shard).changes.change(
                shard_routes, None, shard_links, tombstones=[*shard_routes, *shard_links]) \
                or moved
        switched = {hostname: shards.assign(hostname) if route else None
                    for hostname, route in sorted(routes.items()) if sharded and (
                        served[hostname] is None and shards.assign(hostname) != DEFAULT_SHARD
                        if route else served[hostname] not in (None, DEFAULT_SHARD))}
        if switched:
            self.router.assign(switched)
        for hostname, source, target in misplaced:
            if self.mover is not None:
                self.mover.enqueue(hostname, source, target)
        return moved

    def _split(self, shards: ShardSet, routes: dict[str, RouteChange],
               redirects: dict[str, RedirectChange], served: dict[str, str | None]
               ) -> tuple[Parts, Parts, list[tuple[str, str, str]]]:
        """:meth:`change`'s changes by shard, the removals it writes last as tombstones (by
        assigned shard), and the misplaced hostnames (hostname, where served, assigned)."""
        parts: Parts = {}
        later: Parts = {}
        misplaced: list[tuple[str, str, str]] = []
        for hostname, route in routes.items():
            assigned = shards.assign(hostname)
            where = served.get(hostname)
            if where is not None and where != assigned and where in shards.all_names:
                if route is None:
                    parts.setdefault(where, ({}, {}))[0][hostname] = None
                    later.setdefault(assigned, ({}, {}))[0][hostname] = None
                    continue
                misplaced.append((hostname, where, assigned))
            parts.setdefault(assigned, ({}, {}))[0][hostname] = route
        sharded = shards.all_names != [DEFAULT_SHARD]
        for key, redirect in redirects.items():
            assigned = shards.assign(link_host(key))
            source = self.mover.source(link_host(key)) \
                if sharded and redirect is None and self.mover is not None else None
            if source is not None and source != assigned and source in shards.all_names:
                parts.setdefault(source, ({}, {}))[1][key] = None
                later.setdefault(assigned, ({}, {}))[1][key] = None
                continue
            parts.setdefault(assigned, ({}, {}))[1][key] = redirect
        return parts, later, misplaced

    def _served(self, hostname: str) -> str | None:
        """The shard that serves ``hostname`` now: its router entry, else the default shard if
        it holds it; None when no shard serves it yet, so its router entry may point at its
        shard at once (any other switch is a move's, after the new shard's nodes hold it).
        Reads its router entry, and the default shard's route without one."""
        entry = self.router.holding(hostname)
        if entry is not None:
            return entry
        return DEFAULT_SHARD if self.holding(DEFAULT_SHARD, hostname) is not None else None

    def marks(self) -> dict[str, int]:
        """Every shard's revision, and the router's under ``ROUTER``: a reconciliation's
        ``since``, read before what it reconciles to (:meth:`StateChanges.reconcile`)."""
        return {**{shard: self.store(shard).mark() for shard in self.shard_set().all_names},
                ROUTER: self.router.mark()}

    def reconcile(self, routes: dict[str, str | tuple[str, str]],
                  pem_of: Callable[[str], str | None], config: EdgeConfig,
                  since: dict[str, int] | None = None, seen: set[str] | None = None) -> bool:
        """Every shard made exactly its share of ``routes``, and the router's map (see
        :meth:`StateChanges.reconcile`: reads every route item, router entry and move in
        flight). Never a switch: a hostname the router sends elsewhere than its assignment
        stays in that shard too, and keeps its entry; a moving hostname stays in both ends of
        its move until the mover drops it; only the mover switches it. A hostname served away
        from its assignment with no move in flight is handed to the mover.

        ``since``: :meth:`marks`, taken before ``routes`` was read. ``seen``: what
        :meth:`routed` read after it, which ``routes`` was checked against: a stored route
        that read missed (an index lagging) was confirmed off by nothing, and stays. A router
        entry goes only once a read by key finds its shard no longer holds the hostname, and
        a hostname missing from the read of every entry has its own read by key: what that
        read missed must not look unrouted (which would switch it)."""
        shards = self.shard_set()
        sharded = shards.names != [DEFAULT_SHARD]  # an edge without shards has no entries
        placed = self.router.entries() if sharded else {}
        flying = self.mover.flying() if sharded and self.mover is not None else {}
        parts: dict[str, dict[str, str | tuple[str, str]]] = {n: {} for n in shards.all_names}
        keep: dict[str, str] = {}
        for hostname, route in routes.items():
            assigned = shards.assign(hostname)
            where = placed.get(hostname) or (self.router.holding(hostname) if sharded else None) \
                or DEFAULT_SHARD
            keep[hostname] = now = where if where in parts else assigned
            for shard in (assigned, now) + flying.get(hostname, ()):
                if shard in parts:
                    parts[shard][hostname] = route
        routed: set[str] = set()

        def pem(hostname: str) -> str | None:
            found = pem_of(hostname)
            if found is not None:
                routed.add(hostname)
            return found

        moved = False
        for shard, part in sorted(parts.items()):
            moved = self.store(shard).changes.reconcile(
                part, pem, config, _since(since, shard), None if seen is None else seen.__and__) \
                or moved
        if sharded:
            self._router_changes.reconcile_redirects(
                {hostname: Assignment(hostname, "", 0, keep[hostname]) for hostname in routed
                 if keep[hostname] != DEFAULT_SHARD}, _since(since, ROUTER), self._unheld)
        for hostname in sorted(routed):
            assigned = shards.assign(hostname)
            if sharded and self.mover is not None and keep[hostname] != assigned \
                    and hostname not in flying:
                self.mover.enqueue(hostname, keep[hostname], assigned)
        return moved

    def _unheld(self, hostnames: set[str]) -> set[str]:
        """Of these hostnames' router entries, those whose shard (read by key) no longer
        holds the hostname, or is gone: an entry is never taken off while its shard serves it
        (that would be a switch, the mover's; a lagging read of the entries may miss it)."""
        names = self.shard_set().all_names
        return {hostname for hostname in hostnames
                if (shard := self.router.holding(hostname)) is None or shard not in names
                or self.holding(shard, hostname) is None}

    def reconcile_redirects(self, desired: dict[str, Redirect],
                            since: dict[str, int] | None = None,
                            gone: Callable[[set[str]], set[str]] | None = None) -> bool:
        """Every shard made exactly its share of ``desired``; a link of a hostname in flight
        is in both ends of its move, and the move drops it from the source with the route.
        A shard draining is only added to (its links go with its moves). ``since`` and
        ``gone``: see :meth:`StateChanges.reconcile_redirects`."""
        shards = self.shard_set()
        flying = self.mover.flying() if self.mover is not None else {}
        parts: dict[str, dict[str, Redirect]] = {name: {} for name in shards.names}
        extra: dict[str, dict[str, RedirectChange]] = {}
        following: dict[str, list[str]] = {}
        for key, redirect in desired.items():
            host = link_host(key)
            parts[shards.assign(host)][key] = redirect
            for shard in flying.get(host, ()):
                following.setdefault(host, []).append(key)
                if shard in parts:
                    parts[shard][key] = redirect
                elif shard in shards.all_names:
                    extra.setdefault(shard, {})[key] = redirect
        for host, keys in sorted(following.items()):
            if self.mover is not None:
                self.mover.follow(host, sorted(set(keys)))
        moved = False
        for shard, part in sorted(parts.items()):
            moved = self.store(shard).changes.reconcile_redirects(
                part, _since(since, shard), gone) or moved
        for shard, links in sorted(extra.items()):
            moved = self.store(shard).change({}, None, links) or moved
        return moved

    def due_redirects(self, now: float, limit: int = 200) -> list[str]:
        """Expired links of every shard (one index query per shard)."""
        due: list[str] = []
        for shard in self.shard_set().all_names:
            if len(due) >= limit:
                break
            due += self.store(shard).due_redirects(now, limit - len(due))
        return due

    def nodes(self, shard: str) -> list[dict[str, Any]]:
        """Shard ``shard``'s nodes, each with the version it applied and whether that is the
        shard's current one."""
        return [{**node, "shard": shard} for node in self.store(shard).list_nodes()]

    def list_nodes(self) -> list[dict[str, Any]]:
        return [node for shard in self.shard_set().all_names for node in self.nodes(shard)]

    def routed(self) -> set[str]:
        """Every hostname some configured shard routes (reads every shard's snapshot)."""
        hosts: set[str] = set()
        for shard in self.shard_set().all_names:
            state = self.store(shard).load()
            hosts |= {str(route["hostname"]) for route in state["routes"]} if state else set()
        return hosts

    # --- moves (issue 29 item 4) build on these ---------------------------------------------

    def publish_to(self, shard: str, routes: dict[str, RouteChange],
                   redirects: dict[str, RedirectChange] | None = None,
                   config: EdgeConfig | None = None, since: int | None = None) -> bool:
        """Commit these changes in ``shard`` whatever the assignment says, and leave the
        router's map alone (a move switches it once the new shard's nodes apply them).
        ``config``: for a shard that has none yet (one just added). ``since``: the shard's
        revision before the changes were read elsewhere: an item written after it stays."""
        return self.store(shard).changes.change(routes, config, redirects, since)

    def holding(self, shard: str, hostname: str) -> int | None:
        """The revision of ``shard`` that wrote its route for ``hostname``, or None when the
        shard does not route it: a node of the shard holds it once it applied that revision
        (its report names the version: :meth:`nodes`)."""
        item = self.store(shard).routes.get(hostname)
        return None if item is None or item.get("removed") else int(item["revision"])

    def revision(self, shard: str) -> int:
        """Shard ``shard``'s current revision (0: nothing published)."""
        meta = self.store(shard).meta()
        return int(meta["revision"]) if meta else 0

    def size(self, shard: str) -> int | None:
        """How many routes shard ``shard`` holds: the count its commits keep (one read; None
        until a reconciliation counted a store from the release before)."""
        meta = self.store(shard).meta()
        return int(meta["routes_count"]) if meta and "routes_count" in meta else \
            0 if meta is None else None

    def emptied(self, shard: str) -> bool:
        """Whether shard ``shard`` holds no route and no short link, by the count and digests
        its commits keep (one read; a digest is a 128-bit sum over what it holds, so zero
        only when it holds nothing). A count not kept yet (a store of old) says not empty."""
        meta = self.store(shard).meta()
        if meta is None:
            return True
        return "routes_count" in meta and int(meta["routes_count"]) == 0 and all(
            int(meta.get(field) or "0", 16) == 0 for field in ("routes_digest",
                                                               "redirects_digest"))

    # --- the whole edge -------------------------------------------------------------------

    def reencrypt(self) -> int:
        """Every shard's certificates (read once, whichever namespace holds them)."""
        return rewrite_field(self.tables.certs, "pem_enc", self._vault.rotate)

    def drain(self) -> None:
        for store in self._each():
            store.watch.drain()
        self.router.watch.drain()

    def close(self) -> None:
        for store in self._each():
            store.watch.close()
        self.router.watch.close()

    def _each(self) -> list[EdgeStateStore]:
        with self._lock:
            return list(self._stores.values())


def _since(marks: dict[str, int] | None, name: str) -> int | None:
    """A reconciliation's ``since`` for one shard (or the router): a shard with no mark was
    added after it, so everything in it is newer (0)."""
    return None if marks is None else marks.get(name, 0)

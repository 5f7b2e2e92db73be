"""Moving hostnames between edge shards without a failed request (docs/shards.md).

When the shard set changes (a shard added or draining, a pin changed: the registry's revision
moves), every hostname whose assignment changed moves in three steps, each kept in the store
so that any replica resumes a move where a dead one left it:

1. **publish**: its route (publication, certificate, extras, read from the old shard's route
   item and certificate) and its short links are committed in the new shard;
2. **switch**: the router's entry points at the new shard once every node of it reports a
   version that holds the route. A version is a digest of the shard's content
   (edge/state_changes.py), so a node holds the route when its version is one the shard had
   while the route was in it: the move records the shard's version (both forms) after it
   published and at every check, and compares each node's report with those;
3. **drop**: after ``grace`` seconds (routers catching up still find it served in both
   places) the old shard removes the route and links, and the move item goes.

Work proportional to change: the moved hostnames are found by reading the edge's route and
link tables once (paged, the cursor in the ``scan`` item), only when the registry's revision
moved; the worker then takes moves by their due time (the ``due`` range index: one query when
none is due, none while the shard set never changed). A step is taken under a lease (a
conditional write on the move item), so two replicas never both do one, and every step is
idempotent, so a step repeated after a crash does the same thing again.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

from edge.move_counts import MoveCounts
from edge.plan import MIN_EXISTING_FOR_SHARE
from edge.protocol import OLDEST, meta_version
from edge.router_feed import ROUTER
from edge.shard_registry import ShardRegistry
from edge.sharded_state import ShardedState, link_host
from edge.shards import DEFAULT_SHARD, ShardSet
from edge.state import EdgeConfig, Redirect
from edge.state_changes import RedirectChange, RouteChange
from store import (ABSENT, VERSION, ConflictError, Item, RangeIndex, Table, TableSpec,
                   all_items)
from store.namespace import SEPARATOR

log = logging.getLogger(__name__)
EDGE_MOVES = TableSpec("edge_moves", key="key", spread=("queue",),
                       ranges=(RangeIndex("due", key="queue", sort="due_at"),))
"""One item per hostname in flight (``move#<hostname>``), in the ``due`` index by when its
next step is due; the ``scan`` item (finding the moved hostnames) and the ``counts`` item
(moves in flight from and to each shard)."""
SCAN, QUEUE = "scan", "1"
PUBLISH, SWITCH, DROP = "publish", "switch", "drop"
PAGE, VERSIONS = 500, 16
"""Routes read a page; versions a move remembers as holding its route (the shard's last)."""


def move_key(hostname: str) -> str:
    return f"move#{hostname}"


def shard_of(key: str) -> tuple[str, str] | None:
    """(shard, key in it) of a raw edge table key, None for the router's map."""
    ns, sep, rest = key.partition(SEPARATOR)
    if not sep:
        return DEFAULT_SHARD, key
    return None if ns == ROUTER else (ns, rest)


class Mover:
    """The worker's step (:meth:`tick`); ``owner`` names this replica in its leases."""

    def __init__(self, state: ShardedState, registry: ShardRegistry, table: Table,
                 grace: float = 60.0, poll: float = 1.0, lease: float = 30.0,
                 stale: float = 120.0, owner: str = "", page: int = PAGE, pages: int = 20,
                 clock: Callable[[], float] = time.time) -> None:
        self.state, self.registry, self.table = state, registry, table
        self.grace, self.poll, self.lease, self.stale = grace, poll, lease, stale
        self.page, self.pages = page, pages
        """Rows a page of the scan reads, and pages a round reads at most (the rest waits
        for the next round, which resumes at the kept cursor)."""
        self.owner, self._clock = owner or f"mover-{id(self):x}", clock
        self._done: int | None = None
        """The registry revision whose moved hostnames this process saw all enqueued."""
        self._recount_at = 0.0
        """When an idle round next checks the counts (and recounts the draining shards)."""
        self.counts = MoveCounts(table)
        state.mover = self

    def tick(self, current: tuple[int, ShardSet] | None = None) -> int:
        """Find what a shard-set change moved (when the registry's revision moved), then take
        the due moves; the steps taken. ``current``: the registry as the round read it."""
        revision, shards = current or self.registry.current()
        if revision == 0:
            return 0
        if revision != self._done:
            self.discover(revision, shards)
        steps = self.run_due(shards)
        if not steps and self._clock() >= self._recount_at:
            self._recount_at = self._clock() + self.grace
            self._settle_counts()
            self._drop_drained(shards, recount=True)  # a count too high stalls a drain
        return steps

    # --- finding the moved hostnames --------------------------------------------------------

    def discover(self, revision: int, shards: ShardSet) -> bool:
        """Enqueue a move for every routed hostname and link not on its assigned shard, reading
        the route and link tables once, page by page; the cursor is kept after every page, so
        a replica that dies resumes there, and two replicas racing write it in turn (the loser
        stops). True once the scan for ``revision`` is complete."""
        scan = self.table.get(SCAN) or {"key": SCAN}
        if revision == 0 or scan.get("done") == revision:  # 0: never sharded, nothing moved
            self._done = revision
            return True
        if scan.get("revision") != revision:
            scan = {**scan, "revision": revision, "phase": "routes", "cursor": None}
        for _ in range(self.pages):
            if scan["phase"] == "end":
                break
            tables = self.state.tables
            table = tables.routes if scan["phase"] == "routes" else tables.redirects
            page = table.scan(limit=self.page, cursor=scan.get("cursor"))
            for item in page.items:
                self._consider(item, scan["phase"] == "routes", shards)
            if page.next_cursor:
                scan["cursor"] = page.next_cursor
            else:
                scan["phase"] = "redirects" if scan["phase"] == "routes" else "end"
                scan["cursor"] = None
            if scan["phase"] == "end":
                scan["done"] = revision
            try:
                scan = self.table.put(scan, expected_version=scan.get(VERSION, ABSENT))
            except ConflictError:
                return False  # another replica scans; its cursor is the one kept
        if scan["phase"] != "end":
            return False  # the next round goes on from the cursor
        self._done = revision
        log.info("shard set revision %d: moved hostnames enqueued", revision)
        self._drop_drained(shards)
        return True

    def _consider(self, item: Item, is_route: bool, shards: ShardSet) -> None:
        found = shard_of(str(item["hostname" if is_route else "key"]))
        if found is None or item.get("removed"):
            return
        shard, key = found
        host = key if is_route else link_host(key)
        target = shards.assign(host)
        if target != shard:
            self.enqueue(host, shard, target, None if is_route else key)

    def enqueue(self, hostname: str, source: str, target: str, link: str | None = None) -> None:
        """Write down the move of ``hostname`` (and ``link``, one of its short links) from
        ``source`` to ``target``, unless one is in flight: a move still to publish takes the
        new target and link; one past it ends first, and its drop enqueues the next."""
        while True:
            item = self.table.get(move_key(hostname))
            if item is None:
                item = {"key": move_key(hostname), "hostname": hostname, "source": source,
                        "target": target, "step": PUBLISH, "links": [], "queue": QUEUE,
                        "due_at": self._clock(), "versions": []}
            elif item["step"] != PUBLISH or item["source"] != source:
                return
            links = sorted(set(item["links"]) | ({link} if link else set()))
            if item.get(VERSION) and item["target"] == target and links == item["links"]:
                return
            try:
                self.table.put({**item, "target": target, "links": links},
                               expected_version=item.get(VERSION, ABSENT))
                if not item.get(VERSION):
                    self.counts.add(source, target, 1)
                return
            except ConflictError:
                continue

    def flying(self) -> dict[str, tuple[str, str]]:
        """Every hostname in flight: (source, target); reads every move (a reconciliation's)."""
        return {str(item["hostname"]): (str(item["source"]), str(item["target"]))
                for item in all_items(self.table) if str(item["key"]).startswith("move#")}

    def source(self, hostname: str) -> str | None:
        """The shard a move of ``hostname`` in flight copies from (one read by key)."""
        return str(item["source"]) if (item := self.table.get(move_key(hostname))) else None

    def follow(self, hostname: str, links: list[str]) -> None:
        """Add ``links`` to the move of ``hostname`` (whatever its step), so that its drop
        takes them off the source too; nothing if it has no move in flight."""
        while True:
            item = self.table.get(move_key(hostname))
            if item is None:
                return
            merged = sorted(set(item["links"]) | set(links))
            if merged == item["links"]:
                return
            try:
                self.table.put({**item, "links": merged}, expected_version=item[VERSION])
                return
            except ConflictError:
                continue

    # --- taking the due moves ---------------------------------------------------------------

    def due(self, limit: int = 100) -> list[Item]:
        """Moves whose next step is due: one index query."""
        return self.table.query_range("due", QUEUE, upper=self._clock(), limit=limit).items

    def run_due(self, shards: ShardSet) -> int:
        """Take the due moves; a round drops at most a tenth of a shard's routes (all of them
        below ``MIN_EXISTING_FOR_SHARE``), so that a node following its feed never sees a
        delta its agent refuses as a mass removal (edge/plan.py)."""
        steps, budgets = 0, dict[str, int]()
        for item in self.due():
            if item["step"] == DROP:
                source = item["source"]
                if source not in budgets:
                    size = self.state.size(source) or 0  # unknown (an old store): one a round
                    budgets[source] = max(1, size if size < MIN_EXISTING_FOR_SHARE
                                          else size // 10)
                if budgets[source] <= 0:
                    continue
                budgets[source] -= 1
            leased = self._lease(item)
            if leased is not None:
                self.step(leased, shards)
                steps += 1
        return steps

    def _lease(self, item: Item) -> Item | None:
        """The move leased to this replica (its due time pushed past the lease, so no other
        replica takes it meanwhile), or None if another replica got it first."""
        try:
            return self.table.put({**item, "owner": self.owner,
                                   "due_at": self._clock() + self.lease},
                                  expected_version=item[VERSION])
        except ConflictError:
            return None

    def step(self, move: Item, shards: ShardSet) -> None:
        """Take the move's next step (idempotent: a repeat after a crash does the same)."""
        if move["step"] != DROP and move["target"] not in shards.names:
            self._retarget(move, shards)
        elif move["step"] == PUBLISH:
            self._publish(move)
        elif move["step"] == SWITCH:
            self._switch(move, shards)
        else:
            self._drop(move, shards)

    def _publish(self, move: Item) -> None:
        host, source, target = move["hostname"], move["source"], move["target"]
        old, new = self.state.store(source), self.state.store(target)
        since = new.mark()  # the target's own changes (newer than the source's) stay
        route = old.routes.get(host)
        routes: dict[str, RouteChange] = {}
        if route is not None and not route.get("removed") \
                and self.state.holding(target, host) is None:
            cert = old.certificate(host, str(route["cert_sha256"]))
            if cert is not None:
                routes[host] = (str(route["publication_id"]), cert["pem"],
                                str(route.get("extras") or ""))
        links: dict[str, RedirectChange] = {}
        for key in move["links"]:
            item = old.redirects.get(key) if old.redirects is not None else None
            if item is not None and not item.get("removed") and new.redirects is not None \
                    and new.redirects.get(key) is None:
                links[key] = Redirect.from_map(key, str(item["value"]))
        config = None if new.meta() else old.meta()
        self.state.publish_to(target, routes, links, EdgeConfig.from_json(config["config"])
                              if config and "config" in config else None, since)
        self._next(move, SWITCH, self._clock(), versions=self._versions(move, target))

    def _versions(self, move: Item, shard: str) -> list[str]:
        """The move's versions with the shard's current one, if it holds the route (or the
        hostname has no route: its links moved alone)."""
        known = list(move.get("versions") or [])
        meta = self.state.store(shard).meta()
        if meta is None:
            return known
        if self.state.holding(shard, move["hostname"]) is None and \
                self.state.holding(move["source"], move["hostname"]) is not None:
            return known
        for version in (str(meta["edge_version"]), meta_version(meta, OLDEST)):
            if version not in known:
                known.append(version)
        return known[-VERSIONS:]

    def held(self, move: Item, shards: ShardSet) -> bool:
        """Whether every node of the move's target holds its route: as many fresh reports as
        the registry lists nodes (at least one), each naming a version that holds it."""
        versions = set(move.get("versions") or [])
        fresh = [node for node in self.state.nodes(move["target"])
                 if node["last_seen_seconds"] <= self.stale]
        wanted = max(1, len(shards.shards.get(move["target"], ())))
        return len(fresh) >= wanted and all(node.get("applied_version") in versions
                                            for node in fresh)

    def _switch(self, move: Item, shards: ShardSet) -> None:
        move = {**move, "versions": self._versions(move, move["target"])}
        if not self.held(move, shards):
            self._next(move, SWITCH, self._clock() + self.poll)
            return
        host, target = move["hostname"], move["target"]
        entry = target if target != DEFAULT_SHARD and \
            self.state.holding(target, host) is not None else None
        if self.state.router.holding(host) != entry:
            self.state.router.assign({host: entry})
        self._next(move, DROP, self._clock() + self.grace)

    def _drop(self, move: Item, shards: ShardSet) -> None:
        host, source, target = move["hostname"], move["source"], move["target"]
        if self.state.holding(source, host) is not None or move["links"]:
            self.state.publish_to(source, {host: None} if self.state.holding(
                source, host) is not None else {}, {key: None for key in move["links"]})
        try:
            self.table.delete(move_key(host), expected_version=move[VERSION])
        except ConflictError:
            return
        self.counts.add(source, target, -1)
        log.info("%s moved from shard %s to %s", host, source, target)
        now = shards.assign(host)
        if now != target:  # the shard set changed again while this move ran
            self.enqueue(host, target, now)
        if source in shards.draining:
            self._drop_drained(shards)

    def _retarget(self, move: Item, shards: ShardSet) -> None:
        """The target stopped taking hostnames before the switch (removed right after it was
        added): take back what was published there, and move to the hostname's shard now, or
        nowhere if that is the source."""
        host, source, old = move["hostname"], move["source"], move["target"]
        self.state.publish_to(old, {host: None} if self.state.holding(old, host) is not None
                              else {}, {key: None for key in move["links"]})
        now = shards.assign(host)
        if now == source:
            try:
                self.table.delete(move_key(host), expected_version=move[VERSION])
            except ConflictError:
                return
        else:
            self._next(move, PUBLISH, self._clock(), target=now, versions=[])
        self.counts.add(source, old, -1)
        if now != source:
            self.counts.add(source, now, 1)
        if old in shards.draining:
            self._drop_drained(shards)

    def _next(self, move: Item, step: str, due_at: float, **fields: Any) -> None:
        try:
            self.table.put({**move, **fields, "step": step, "due_at": due_at},
                           expected_version=move[VERSION])
        except ConflictError:  # the lease ran out and another replica took the move
            pass

    # --- what the dashboard shows ----------------------------------------------------------

    def in_flight(self) -> dict[str, dict[str, int]]:
        """Moves in flight per shard, from it and to it (one read)."""
        return self.counts.in_flight()

    def _settle_counts(self) -> None:
        """Counts a crash left off are zeroed once no move is left: one read while they are
        all zero; when not, a consistent page of three items (the ``due`` index may not show
        a move just written yet), which holds a move if any is left beside scan and counts."""
        found = self.counts.in_flight()
        if found and not any(str(item["key"]).startswith("move#")
                             for item in self.table.scan(limit=3).items):
            self.counts.zero(found)

    def _drop_drained(self, shards: ShardSet, recount: bool = False) -> None:
        """Delete each draining shard nothing moves off any more (once its scan is done). The
        counts are a hint (edge/move_counts.py): a shard is recounted from the moves
        themselves before it goes (a count too low), and with ``recount`` whatever it counts
        (a count too high)."""
        if not shards.draining or self._done is None:
            return
        flying = self.in_flight()
        for name in sorted(shards.draining):
            if any(flying.get(name, {}).values()) and not recount:
                continue
            if any(self.recount(name).values()):
                continue
            if self.registry.drop_drained(name):
                log.info("shard %s drained and removed", name)

    def recount(self, shard: str) -> dict[str, int]:
        """The moves from and to ``shard``, counted from the move items (reads them all)."""
        return self.counts.recount(shard, [item for item in all_items(self.table)
                                           if str(item["key"]).startswith("move#")])

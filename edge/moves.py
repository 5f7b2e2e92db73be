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
   places), and once every router that serves and reports has applied the router map's
   revision that switched it (a router behind does not lose the hostname's visitors), the
   old shard removes the route and links, and the move item goes.

A round takes its due moves together: one change of each shard they publish to or drop
from, one of the router's map for those that switch (edge/move_steps.py).

Work proportional to change: when the registry's revision moved by pins and unpins only (its
log says so, edge/shard_registry.py), the move of each such hostname is enqueued alone (a few
reads by key, and its links: ``links_of``); when the shards changed, the moved hostnames are
found by reading the edge's route and link tables once (paged, the cursor in the ``scan``
item), which a pin landing meanwhile does not restart. The worker then takes moves by their
due time (the ``due`` range index: one query when none is due, none while the shard set never
changed). A step is taken under a lease (a
conditional write on the move item), so two replicas never both do one, and every step is
idempotent, so a step repeated after a crash does the same thing again.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Callable, Iterable

from edge.move_counts import MoveCounts
from edge.move_steps import DROP, PUBLISH, MoveSteps, Pair, move_key
from edge.plan import MIN_EXISTING_FOR_SHARE
from edge.router_feed import ROUTER
from edge.shard_registry import ShardRegistry
from edge.sharded_state import ShardedState, link_host
from edge.shards import DEFAULT_SHARD, ShardSet
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
PAGE = 500
"""Routes read a page."""


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
                 clock: Callable[[], float] = time.time,
                 links_of: Callable[[str], Iterable[str]] | None = None) -> None:
        """``links_of``: the map keys of a host's short links, whichever shard holds them
        (a pin moves them with it); without it they are looked for in the source shard's
        links, all read."""
        self.state, self.registry, self.table = state, registry, table
        self.links_of = links_of
        self.grace, self.poll, self.lease, self.stale = grace, poll, lease, stale
        self.page, self.pages = page, pages
        """Rows a page of the scan reads, and pages a round reads at most (the rest waits
        for the next round, which resumes at the kept cursor)."""
        self.owner, self.clock = owner or f"mover-{id(self):x}", clock
        self._done: int | None = None
        """The registry revision whose moved hostnames this process saw all enqueued."""
        self._read: int | None = None
        """The registry revision this round reads: a draining shard goes only once the scan
        of that very revision is done (before, its hostnames may not have moves yet)."""
        self._recount_at = 0.0
        """When an idle round next checks the counts (and recounts the draining shards)."""
        self.counts = MoveCounts(table)
        self._steps = MoveSteps(self)
        state.mover = self

    def tick(self, current: tuple[int, ShardSet] | None = None) -> int:
        """Find what a shard-set change moved (when the registry's revision moved), then take
        the due moves; the steps taken. ``current``: the registry as the round read it."""
        revision, shards = current or self.registry.current()
        if revision == 0:
            return 0
        self._read = revision
        if revision != self._done:
            self.discover(revision, shards)
        steps = self.run_due(shards)
        if not steps and self.clock() >= self._recount_at:
            self._recount_at = self.clock() + self.grace
            self._settle_counts()
            self.drop_drained(shards, recount=True)  # a count too high stalls a drain
        return steps

    # --- finding the moved hostnames --------------------------------------------------------

    def discover(self, revision: int, shards: ShardSet) -> bool:
        """Enqueue a move for every routed hostname and link not on its assigned shard, reading
        the route and link tables once, page by page; the cursor is kept after every page, so
        a replica that dies resumes there, and two replicas racing write it in turn (the loser
        stops). Since the scan's revision only pins changed (the registry's log): just their
        hostnames (:meth:`_repin`). True once the scan for ``revision`` is complete."""
        self._read = revision
        scan = self.table.get(SCAN) or {"key": SCAN}
        if revision == 0 or scan.get("done") == revision:  # 0: never sharded, nothing moved
            self._done = revision
            return True
        if int(scan.get("revision") or 0) > revision:
            return False  # another replica read a later revision: its rounds go on
        pinned = None if scan.get("revision") in (None, revision) else \
            self.registry.pinned_since(int(scan["revision"]), revision)
        if pinned is not None:
            repinned = self._repin(scan, revision, pinned, shards)
            if repinned is None:
                return False  # another replica enqueued them (enqueueing is idempotent)
            scan = repinned
        elif scan.get("revision") != revision:
            scan = {**scan, "revision": revision, "phase": "routes", "cursor": None}
        for _ in range(self.pages):
            if scan["phase"] == "end":
                break
            tables = self.state.tables
            table = tables.routes if scan["phase"] == "routes" else tables.redirects
            page = table.scan(limit=self.page, cursor=scan.get("cursor"))
            counted = Counter[Pair]()  # the page's moves counted at once, not one by one
            for item in page.items:
                counted.update(self._consider(item, scan["phase"] == "routes", shards))
            self.count(counted)
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
        self.drop_drained(shards)
        return True

    def _consider(self, item: Item, is_route: bool, shards: ShardSet) -> Counter[Pair]:
        found = shard_of(str(item["hostname" if is_route else "key"]))
        if found is None or item.get("removed"):
            return Counter()
        shard, key = found
        host = key if is_route else link_host(key)
        target = shards.assign(host)
        if target == shard:
            return Counter()
        return self.enqueued(host, shard, target, None if is_route else key)

    def _repin(self, scan: Item, revision: int, pinned: set[str],
               shards: ShardSet) -> Item | None:
        """Only these hostnames' overrides changed since the scan's revision: enqueue their
        moves, and move the scan item on to ``revision`` (a scan under way goes on from its
        cursor; one ended is done for it too). None if another replica moved it first."""
        counted = Counter[Pair]()
        for hostname in sorted(pinned):
            counted.update(self._repinned(hostname, shards))
        self.count(counted)
        scan = {**scan, "revision": revision}
        if scan.get("phase") == "end":
            scan["done"] = revision
        try:
            return self.table.put(scan, expected_version=scan.get(VERSION, ABSENT))
        except ConflictError:
            return None

    def _repinned(self, hostname: str, shards: ShardSet) -> Counter[Pair]:
        """Enqueue the move of ``hostname`` (its override changed) off each shard that may
        hold it (where the router sends it, the default shard, a move's source) and holds
        its route or links: reads by key, and its links (``links_of``)."""
        target = shards.assign(hostname)
        counted = Counter[Pair]()
        for source in dict.fromkeys((self.state.router.holding(hostname), DEFAULT_SHARD,
                                     self.source(hostname))):
            if source is None or source == target or source not in shards.all_names:
                continue
            links = self._links(source, hostname)
            if links or self.state.holding(source, hostname) is not None:
                counted.update(self.enqueued(hostname, source, target, None, links))
        return counted

    def _links(self, shard: str, hostname: str) -> list[str]:
        """The keys of ``hostname``'s links ``shard`` holds."""
        redirects = self.state.store(shard).redirects
        if redirects is None:
            return []
        if self.links_of is None:
            found = (item for item in all_items(redirects) if not item.get("removed")
                     and link_host(str(item["key"])) == hostname)
            return sorted(str(item["key"]) for item in found)
        keys = sorted(set(self.links_of(hostname)))
        held = redirects.get_many(keys) if keys else {}
        return [key for key in keys if key in held and not held[key].get("removed")]

    def enqueue(self, hostname: str, source: str, target: str, link: str | None = None) -> None:
        """Write down the move of ``hostname`` (and ``link``, one of its short links) from
        ``source`` to ``target``, unless one is in flight: a move still to publish takes the
        new target and link; one past it ends first, and its drop enqueues the next."""
        self.count(self.enqueued(hostname, source, target, link))

    def enqueued(self, hostname: str, source: str, target: str,
                 link: str | None, more: Iterable[str] = ()) -> Counter[Pair]:
        """:meth:`enqueue`, leaving the counts to the caller: their change is returned.
        ``more``: other links of it that move too."""
        while True:
            item = self.table.get(move_key(hostname))
            if item is None:
                item = {"key": move_key(hostname), "hostname": hostname, "source": source,
                        "target": target, "step": PUBLISH, "links": [], "queue": QUEUE,
                        "due_at": self.clock(), "versions": []}
            elif item["step"] != PUBLISH or item["source"] != source:
                return Counter()
            links = sorted(set(item["links"]) | ({link} if link else set()) | set(more))
            if item.get(VERSION) and item["target"] == target and links == item["links"]:
                return Counter()
            try:
                self.table.put({**item, "target": target, "links": links},
                               expected_version=item.get(VERSION, ABSENT))
            except ConflictError:
                continue
            if not item.get(VERSION):
                return Counter({(source, target): 1})
            if item["target"] == target:  # a link added to it
                return Counter()
            return Counter({(source, item["target"]): -1, (source, target): 1})

    def count(self, changes: Counter[Pair]) -> None:
        """Add these changes to the moves in flight from and to each shard."""
        for (source, target), amount in sorted(changes.items()):
            if amount:
                self.counts.add(source, target, amount)

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
        return self.table.query_range("due", QUEUE, upper=self.clock(), limit=limit).items

    def run_due(self, shards: ShardSet) -> int:
        """Take the due moves; a round drops at most a tenth of a shard's routes (all of them
        below ``MIN_EXISTING_FOR_SHARE``), so that a node following its feed never sees a
        delta its agent refuses as a mass removal (edge/plan.py)."""
        due, budgets = list[Item](), dict[str, int]()
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
            due.append(item)
        return self._steps.take(due, shards)

    def leased(self, item: Item) -> Item | None:
        """The move leased to this replica (its due time pushed past the lease, so no other
        replica takes it meanwhile), or None if another replica got it first."""
        try:
            return self.table.put({**item, "owner": self.owner,
                                   "due_at": self.clock() + self.lease},
                                  expected_version=item[VERSION])
        except ConflictError:
            return None

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

    def drop_drained(self, shards: ShardSet, recount: bool = False) -> None:
        """Delete each draining shard nothing moves off any more, once the scan of the
        registry revision this round read is done: until then its hostnames may have no move
        yet, and no move is not an empty shard. The counts are a hint (edge/move_counts.py):
        a shard is recounted from the moves themselves before it goes (a count too low), and
        with ``recount`` whatever it counts (a count too high). Last, its own kept figures
        must say it holds no route and no link (one read): a hostname a stale replica put
        there after the scan passed waits for a reconciliation to hand it to the mover."""
        if not shards.draining or self._done is None or self._done != self._read:
            return
        flying = self.in_flight()
        for name in sorted(shards.draining):
            if any(flying.get(name, {}).values()) and not recount:
                continue
            if any(self.recount(name).values()):
                continue
            if not self.state.emptied(name):
                log.warning("shard %s has no move left but still holds routes or links: kept "
                            "until a reconciliation hands them to the mover", name)
                continue
            if self.registry.drop_drained(name):
                log.info("shard %s drained and removed", name)

    def recount(self, shard: str) -> dict[str, int]:
        """The moves from and to ``shard``, counted from the move items (reads them all)."""
        return self.counts.recount(shard, [item for item in all_items(self.table)
                                           if str(item["key"]).startswith("move#")])

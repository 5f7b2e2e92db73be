"""Resolving a slug fast: an in-process cache in front of the table, serving stale entries
when the table is down, and visit counts buffered into periodic atomic ADDs.

A visit costs one counter increment here: its User-Agent and Referer are buffered as they
came and classified by the flusher (bots apart, referrer hosts, the day), off the request path.
Each carries its link's ``created_at``: a flush writes a visit only to the link it came to, not
to one deleted since, nor to one made again with its slug (nor to their days).
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from typing import Any, Callable

from shortlinks.leases import VisitLeases
from shortlinks.changes import ANY_LINK, CHANGE_RING, change_slot, generation
from shortlinks.links import link_id
from shortlinks.stats import REFERRER, BotDetector, VisitStats, referrer_host
from shortlinks.targets import device_of, locations
from shortlinks.totals import LinkTotals
from store import BATCH_GET, Item, StoreError, Table

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Verdict:
    status: int  # 301/302/307/308 redirect, 404 unknown, 410 gone
    target: str | None = None
    reason: str = ""
    vary: bool = False  # the target depends on the User-Agent (a per-device rule)
    lives: float | None = None  # seconds it may be cached: 0 limited, else to its expiry


Seen = tuple[str, Any, int, bool, bool, str, str]
"""A buffered visit: (link key, its ``created_at``, day, limited, HEAD, User-Agent, Referer)."""
Totals = collections.Counter[tuple[str, Any, str]]
"""Link totals to write: (link key, its ``created_at``, visits|bots) -> n."""
Days = dict[tuple[str, Any, int], collections.Counter[str]]
"""Day counts to write: (link key, its ``created_at``, day) -> visits, bots, ref:<host>."""
_GONE = object()


class Resolver:
    def __init__(self, table: Table, ttl: float | None = None,
                 clock: Callable[[], float] = time.time, changes: Table | None = None,
                 check_every: float = 1.0, max_entries: int = 200_000,
                 stats: VisitStats | None = None, leases: VisitLeases | None = None,
                 ticks: Callable[[], float] | None = None) -> None:
        self._table = table
        self.leases = leases
        """Where a limited link's visits come from in blocks (shortlinks/leases.py); None:
        each visit is one conditional ADD in the store."""
        self._stats = stats
        self._bots: BotDetector | None = None
        self._ttl = ttl if ttl is not None else 30.0 if changes is None else 300.0
        """How long an entry is good without a store read: changes reach the cache through the
        change counter (``changes``), so with it this only bounds a write that bypassed it."""
        self._clock = clock
        self._ticks = ticks or (time.monotonic if clock is time.time else clock)
        """What the cache's lifetimes and the change checks count in: monotonic, so a wall clock
        stepped back an hour does not keep serving what changed meanwhile for an hour. The
        wall ``clock`` is for what is dated: a link's ``valid_until``, a visit's day. A test's
        clock stands for both."""
        self._changes = changes
        self._check_every = check_every
        self._max_entries = max_entries
        self._generation = 0
        self._next_check = 0.0
        self._cache: dict[str, tuple[float, Item | None]] = {}
        """link key -> (good until, the item or None for unknown)."""
        self._seen: collections.Counter[Seen] = collections.Counter()
        self._unwritten: Totals = collections.Counter()
        """Link totals a flush could not write, for the next one."""
        self._unwritten_days: Days = {}
        self._totals = LinkTotals(changes) if changes is not None else None
        self._limited: collections.Counter[str] = collections.Counter()
        """Visits a limited link counted itself since the last flush (for the kept totals)."""
        self._limited_now: dict[str, int] = {}
        self._totals_unwritten = 0
        self._lock = threading.Lock()
        self.store_errors = 0
        self.stale_served = 0

    def _follow_changes(self, now: float, force: bool = False) -> bool:
        """Read the links' change counter, at most every ``check_every`` seconds (``force``:
        now); if it moved, drop the links its slots name (one batch read), or everything when
        they cannot say. False when the cache cannot be said to follow the changes (no change
        counter, or it cannot be read)."""
        if self._changes is None:
            return False
        if now < self._next_check and not force:
            return True
        self._next_check = now + self._check_every
        seen = self._generation
        try:
            current = generation(self._changes)
        except StoreError:
            return False  # the store is down: cached entries stay good (stale-if-error)
        if current == seen:
            return True
        try:
            changed = self._changed_links(self._changes, seen, current) if self._cache else None
        except StoreError as exc:  # the counter moved: what it names must not stay cached
            log.warning("dropping every cached link: the changes cannot be read: %s", exc)
            with self._lock:
                self.store_errors += 1
            changed = None
        with self._lock:
            if self._generation != seen:
                return True  # another thread followed them meanwhile
            if changed is None:
                self._cache.clear()
            for key in changed or ():
                self._cache.pop(key, None)
            self._generation = current
        return True

    @staticmethod
    def _changed_links(changes: Table, seen: int, current: int) -> set[str] | None:
        """The links changes ``seen``+1 .. ``current`` name, or None (drop everything): too
        many to read at once, the counter went back (a restore), a change of more links than a
        slot names, or a slot that does not hold its change (overwritten, not yet written, or
        the release before moved the counter without one)."""
        if not 0 < current - seen <= min(BATCH_GET, CHANGE_RING):
            return None
        wanted = range(seen + 1, current + 1)
        slots = changes.get_many([change_slot(n) for n in wanted])
        links: set[str] = set()
        for n in wanted:
            slot = slots.get(change_slot(n)) or {}
            link, named = slot.get("link"), slot.get("links")
            if slot.get("n") != n or not isinstance(link, str):
                return None
            if link != ANY_LINK:
                links.add(link)
            elif isinstance(named, list) and all(isinstance(key, str) for key in named):
                links.update(named)
            else:
                return None
        return links

    def _lookup(self, key: str) -> Item | None:
        now = self._ticks()
        self._follow_changes(now)
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        seen = self._generation
        try:
            item = self._table.get(key)
        except StoreError as exc:
            with self._lock:
                self.store_errors += 1
            if cached is None:
                raise
            log.warning("serving %s from cache: %s", key, exc)
            with self._lock:
                self.stale_served += 1
            return cached[1]
        if item is not None:  # where it sends visitors, computed once per read, not per visit
            item["_locations"] = locations(item)
        with self._lock:
            # Kept only if no change was followed during the read: one may have named this
            # link before it was cached, and the read may be older than that change.
            if self._generation == seen:
                if len(self._cache) >= self._max_entries:
                    self._evict(now)
                self._cache[key] = (now + self._ttl, item)
        return item

    def answers_from_memory(self, domain: str, slug: str, margin: float = 0.05) -> bool:
        """Whether :meth:`resolve` would answer without a store request for at least ``margin``
        seconds: the entry is cached and fresh, the change counter is not due, and the link
        has no visit limit or its next visit is in this process's lease.
        The server answers these on its I/O thread (see shortlinks/inline.py)."""
        now = self._ticks() + margin
        if self._changes is not None and now >= self._next_check:
            return False
        cached = self._cache.get(link_id(domain, slug))
        if cached is None or cached[0] <= now:
            return False
        item = cached[1]
        if item is None or item.get("max_visits") is None:
            return True
        return self.leases is not None and self.leases.has_room(
            link_id(domain, slug), int(item["max_visits"]), item.get("created_at"))

    @property
    def cache_size(self) -> int:
        return len(self._cache)

    def _evict(self, now: float) -> None:
        """Random slugs must not grow the cache without end: drop what expired, and if that is
        not enough the oldest quarter (a dict keeps insertion order)."""
        entries = list(self._cache.items())  # one C call: safe beside the other threads
        for key, (until, _) in entries:
            if until <= now:
                self._cache.pop(key, None)
        if len(self._cache) >= self._max_entries:
            for key, _ in entries[:max(1, self._max_entries // 4)]:
                self._cache.pop(key, None)

    def invalidate(self, domain: str, slug: str) -> None:
        self._cache.pop(link_id(domain, slug), None)

    def resolve(self, domain: str, slug: str, agent: str = "", referrer: str = "",
                head: bool = False) -> Verdict:
        """The answer for a visit; ``agent`` (User-Agent) picks a device target and, with
        ``head`` and ``referrer``, goes into the visit statistics."""
        key = link_id(domain, slug)
        item = self._lookup(key)
        if item is None:
            return Verdict(404, reason="This short link does not exist.")
        if item.get("disabled"):
            return Verdict(410, reason="This short link has been disabled.")
        now = self._clock()
        if item.get("valid_until") is not None and item["valid_until"] <= now:
            return self._gone(item, "This short link has expired.")
        limited, born = item.get("max_visits") is not None, item.get("created_at")
        if limited:
            # A limited link's visits are taken from the store's counter, never past the limit:
            # in blocks leased to this process, or one conditional ADD each. A bot's visit
            # counts too: a User-Agent is anyone's to claim.
            limit = int(item["max_visits"])
            total = self.leases.take(key, limit, born) if self.leases is not None else \
                self._table.increment(key, "visits", 1, existing_only=True, at_most=limit)
            if total is None:
                return self._gone(item, "This short link has reached its visit limit.")
            with self._lock:
                self._limited[key] += 1
                self._limited_now[key] = total
        with self._lock:
            self._seen[(key, born, int(now // 86400), limited, head, agent, referrer)] += 1
        found = item.get("_locations") or locations(item)
        lives = 0 if limited else None if item.get("valid_until") is None else \
            item["valid_until"] - now
        if len(found) == 1:
            return Verdict(int(item["code"]), target=found[""], lives=lives)
        return Verdict(int(item["code"]), target=found.get(device_of(agent), found[""]),
                       vary=True, lives=lives)

    @staticmethod
    def _gone(item: Item, reason: str) -> Verdict:
        """410, or a 302 to the link's ``expired_url`` when it has one."""
        if item.get("expired_url"):
            return Verdict(302, target=str(item["expired_url"]), reason=reason)
        return Verdict(410, reason=reason)

    def _is_bot(self, agent: str) -> bool:
        if self._bots is None:
            self._bots = BotDetector()
        return self._bots.is_bot(agent)

    def _classify(self, pending: collections.Counter[Seen]) -> tuple[Totals, Days]:
        """Buffered visits -> link totals (a limited link's ``visits`` are counted already,
        every answer, a bot's too: only its ``bots`` here) and day counts."""
        totals: Totals = collections.Counter()
        days: Days = {}
        for (key, born, day, limited, head, agent, referrer), count in pending.items():
            bot = head or (bool(agent) and self._is_bot(agent))
            name = "bots" if bot else "visits"
            if bot or not limited:
                totals[(key, born, name)] += count
            counts = days.setdefault((key, born, day), collections.Counter())
            counts[name] += count
            host = referrer_host(referrer) if referrer and not bot else None
            if host:
                counts[REFERRER + host] += count
        return totals, days

    def flush_visits(self) -> int:
        """Write buffered visits: one atomic ADD per link and counter, then the day counts
        (:class:`VisitStats`), each only to the link it came to (:meth:`_links_now`): a link
        deleted since, or deleted and made again with its slug, gets none of them, nor do its
        days. What the store refuses is kept for the next flush, each count apart, so none is
        written twice. Returns how many visits and bots were added to the links' totals."""
        with self._lock:
            pending, self._seen = self._seen, collections.Counter()
            totals, self._unwritten = self._unwritten, collections.Counter()
            days, self._unwritten_days = self._unwritten_days, {}
        new_totals, new_days = self._classify(pending)
        totals.update(new_totals)
        for day_key, counts in new_days.items():
            days.setdefault(day_key, collections.Counter()).update(counts)
        written, visits, failed, failed_days = 0, 0, totals, days
        visited: dict[str, int] = {}
        try:
            live = self._links_now({key for key, _, _ in totals} | {key for key, _, _ in days})
        except StoreError:
            pass  # all kept for the next flush
        else:
            written, visits, visited, failed = self._write_totals(totals, live)
            failed_days = self._write_days(days, live)
        self._add_to_totals(visits, visited)
        with self._lock:
            self._unwritten.update(failed)
            for day_key, counts in failed_days.items():
                self._unwritten_days.setdefault(day_key, collections.Counter()).update(counts)
        return written

    def _links_now(self, keys: set[str]) -> dict[str, Any]:
        """The ``created_at`` of each of ``keys`` whose link exists now: from the cache once
        the change counter is read (a change drops the links it names), else one batch read
        per ``BATCH_GET`` links. So a flush costs a store read or two, not one per visit."""
        if not keys:
            return {}
        follows = self._follow_changes(self._ticks(), force=True)
        now, found, unread = self._ticks(), {}, []
        for key in keys:
            cached = self._cache.get(key) if follows else None
            if cached is None or cached[0] <= now:
                unread.append(key)
            elif cached[1] is not None:
                found[key] = cached[1].get("created_at")
        if unread:
            found.update((key, item.get("created_at"))
                         for key, item in self._table.get_many(unread).items())
        return found

    def _write_totals(self, totals: Totals, live: dict[str, Any]) -> tuple[
            int, int, dict[str, int], Totals]:
        """The links' totals, each an ADD only while its link exists (refused: dropped):
        (visits and bots written, visits written, link -> its visits now, what failed)."""
        written = visits = 0
        visited: dict[str, int] = {}  # link -> its visits now, for the kept top
        failed: Totals = collections.Counter()
        for (key, born, name), count in totals.items():
            if live.get(key, _GONE) != born:
                continue  # not the link these visits came to
            try:
                now = self._table.increment(key, name, count, existing_only=True)
            except StoreError:
                failed[(key, born, name)] += count  # kept for the next flush
                continue
            if now is None:
                continue  # deleted meanwhile
            written += count
            if name == "visits":
                visits += count
                visited[key] = now
        return written, visits, visited, failed

    def _write_days(self, days: Days, live: dict[str, Any]) -> Days:
        """The day counts of the links still there (:meth:`VisitStats.strays`); what failed."""
        mine = {k: counts for k, counts in days.items() if live.get(k[0], _GONE) == k[1]}
        if self._stats is None or not mine:
            return {}
        try:
            strays = self._stats.strays({(k, d): b for k, b, d in mine}, self._table.get_many)
        except StoreError:
            return mine
        failed: Days = {}
        for (key, born, day), counts in mine.items():
            if (key, day) in strays:
                continue
            left = self._stats.add(key, dict(counts), day=day, still=self._still(key, born))
            if left:
                failed[(key, born, day)] = collections.Counter(left)
        return failed

    def _still(self, key: str, born: Any) -> Callable[[], bool]:
        """Whether link ``key`` is still the one made at ``born`` (a store read): asked when a
        day item is made for its counts."""
        def check() -> bool:
            item = self._table.get(key)
            return item is not None and item.get("created_at") == born
        return check

    def _add_to_totals(self, visits: int, visited: dict[str, int]) -> None:
        """The kept totals (:mod:`shortlinks.totals`): this flush's visits and a limited
        link's own counts, one ADD; what the store refuses goes with the next flush."""
        if self._totals is None:
            return
        with self._lock:
            limited, self._limited = self._limited, collections.Counter()
            limited_now, self._limited_now = self._limited_now, {}
        delta = visits + sum(limited.values()) + self._totals_unwritten
        try:
            self._totals.add(visits=delta)
            self._totals_unwritten = 0
            self._totals.visited({**visited, **limited_now})
        except StoreError:
            self._totals_unwritten = delta

    def start_flusher(self, stop: threading.Event, interval: float = 2.0) -> threading.Thread:
        def loop() -> None:
            while not stop.wait(interval):
                self.flush_visits()
                if self.leases is not None:
                    self.leases.renew()
            if self.leases is not None:
                self.leases.close()  # a clean stop gives back what this process did not use
            self.flush_visits()
        thread = threading.Thread(target=loop, name="visit-flusher", daemon=True)
        thread.start()
        return thread

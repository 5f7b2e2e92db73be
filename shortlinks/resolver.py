"""Resolving a slug fast: an in-process cache in front of the table, serving stale entries
when the table is down, and visit counts buffered into periodic atomic ADDs."""
from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from typing import Callable

from shortlinks.links import GENERATION, link_id
from store import Item, StoreError, Table

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Verdict:
    status: int  # 301/302/307/308 redirect, 404 unknown, 410 gone
    target: str | None = None
    reason: str = ""


class Resolver:
    def __init__(self, table: Table, ttl: float = 30.0,
                 clock: Callable[[], float] = time.time, changes: Table | None = None,
                 check_every: float = 1.0, max_entries: int = 200_000) -> None:
        self._table = table
        self._ttl = ttl
        self._clock = clock
        self._changes = changes
        self._check_every = check_every
        self._max_entries = max_entries
        self._generation = 0
        self._next_check = 0.0
        self._cache: dict[str, tuple[float, int, Item | None]] = {}
        self._visits: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self.store_errors = 0
        self.stale_served = 0

    def _current_generation(self, now: float) -> int:
        """The links' change counter, read at most every ``check_every`` seconds."""
        if self._changes is not None and now >= self._next_check:
            self._next_check = now + self._check_every
            try:
                item = self._changes.get(GENERATION)
                self._generation = int((item or {}).get("n") or 0)
            except StoreError:
                pass  # the store is down: cached entries stay good (stale-if-error)
        return self._generation

    def _lookup(self, key: str) -> Item | None:
        now = self._clock()
        generation = self._current_generation(now)
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now and cached[1] == generation:
            return cached[2]
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
            return cached[2]
        if len(self._cache) >= self._max_entries:
            self._evict(now)
        self._cache[key] = (now + self._ttl, generation, item)
        return item

    def answers_from_memory(self, domain: str, slug: str, margin: float = 0.05) -> bool:
        """Whether :meth:`resolve` would answer without a store request for at least ``margin``
        seconds: the entry is cached, fresh, of the current generation, the change counter is
        not due, and the link has no visit limit (a limited link is counted in the store). The
        server answers these on its I/O thread (see shortlinks/inline.py)."""
        now = self._clock() + margin
        if self._changes is not None and now >= self._next_check:
            return False
        cached = self._cache.get(link_id(domain, slug))
        if cached is None or cached[0] <= now or cached[1] != self._generation:
            return False
        item = cached[2]
        return item is None or item.get("max_visits") is None

    @property
    def cache_size(self) -> int:
        return len(self._cache)

    def _evict(self, now: float) -> None:
        """Random slugs must not grow the cache without end: drop what expired, and if that is
        not enough the oldest quarter (a dict keeps insertion order)."""
        entries = list(self._cache.items())  # one C call: safe beside the other threads
        for key, (until, _, _) in entries:
            if until <= now:
                self._cache.pop(key, None)
        if len(self._cache) >= self._max_entries:
            for key, _ in entries[:max(1, self._max_entries // 4)]:
                self._cache.pop(key, None)

    def invalidate(self, domain: str, slug: str) -> None:
        self._cache.pop(link_id(domain, slug), None)

    def resolve(self, domain: str, slug: str) -> Verdict:
        key = link_id(domain, slug)
        item = self._lookup(key)
        if item is None:
            return Verdict(404, reason="This short link does not exist.")
        if item.get("disabled"):
            return Verdict(410, reason="This short link has been disabled.")
        if item.get("valid_until") is not None and item["valid_until"] <= self._clock():
            return Verdict(410, reason="This short link has expired.")
        if item.get("max_visits") is not None:
            # A limited link counts each visit at once, atomically, in the store: a cached or
            # buffered count would let every process hand out its own share over the limit.
            if self._table.increment(key, "visits") > item["max_visits"]:
                return Verdict(410, reason="This short link has reached its visit limit.")
        else:
            with self._lock:
                self._visits[key] += 1
        return Verdict(int(item["code"]), target=str(item["target"]))

    def flush_visits(self) -> int:
        """Write buffered visits as one atomic ADD per link; returns how many were written."""
        with self._lock:
            pending, self._visits = self._visits, collections.Counter()
        written = 0
        for key, count in pending.items():
            try:
                self._table.increment(key, "visits", count)
                written += count
            except StoreError:
                with self._lock:
                    self._visits[key] += count  # keep them for the next flush
        return written

    def start_flusher(self, stop: threading.Event, interval: float = 2.0) -> threading.Thread:
        def loop() -> None:
            while not stop.wait(interval):
                self.flush_visits()
            self.flush_visits()
        thread = threading.Thread(target=loop, name="visit-flusher", daemon=True)
        thread.start()
        return thread

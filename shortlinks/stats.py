"""Visit statistics: visits, bots and referrer hosts per link per day, kept for 90 days.

One item per link per day (``<domain>/<slug>@<day>``, the day counted in UTC days since the
epoch), its counts as atomic counters beside it: ``visits``, ``bots`` (crawlers by the
maintained CrawlerDetect list, and HEAD requests) and ``ref:<host>``. The item carries
``expires_at`` (90 days after its day ends), so the retention sweep (store/sweep.py) or
DynamoDB's TTL removes it, and a range index on (link, day): a read of N days is one query.
Deleting a link deletes its days (:meth:`VisitStats.forget`); counts that arrive after it, which
the caller can tell (``still``), do not make them again for a link made again with its slug.

Who is a bot is decided off the request path: the resolver buffers the raw User-Agent and the
flusher classifies it here, with a bounded cache per User-Agent (CrawlerDetect's regular
expression takes milliseconds on a browser's User-Agent).
"""
from __future__ import annotations

import datetime
import threading
import time
from typing import Any, Callable
from urllib.parse import urlsplit

import idna

from store import (ABSENT, VERSION, ConflictError, Item, RangeIndex, StoreError, Table,
                   TableSpec)

LINK_DAYS = TableSpec("short_link_days", key="id", expiring=True,
                      ranges=(RangeIndex("by_link", key="link", sort="day"),))
DAY = 86400
RETENTION_DAYS = 90
MAX_REFERRERS = 50
"""Distinct referrer hosts kept per link and day; more are counted under ``OTHER``."""
OTHER = "(other)"
REFERRER = "ref:"
_AGENTS = 10_000
"""User-Agents whose verdict is cached (the cache starts over when full)."""
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.")


def day_of(now: float) -> int:
    return int(now // DAY)


def date_of(day: int) -> str:
    return datetime.date.fromordinal(datetime.date(1970, 1, 1).toordinal() + day).isoformat()


class BotDetector:
    """``is_bot(user_agent)`` by CrawlerDetect (PyPI ``crawlerdetect``, a port of the
    maintained PHP list), cached per User-Agent. Thread-safe (one detector, under a lock)."""

    def __init__(self, size: int = _AGENTS) -> None:
        from crawlerdetect import CrawlerDetect

        self._detector = CrawlerDetect()
        self._cache: dict[str, bool] = {}
        self._size = size
        self._lock = threading.Lock()

    def is_bot(self, agent: str) -> bool:
        verdict = self._cache.get(agent)
        if verdict is None:
            with self._lock:
                verdict = bool(self._detector.isCrawler(agent))
            if len(self._cache) >= self._size:
                self._cache.clear()
            self._cache[agent] = verdict
        return verdict


def referrer_host(referrer: str) -> str | None:
    """The host of a Referer header, lowercase and IDNA (A-label), or None when it has none."""
    try:
        host = urlsplit(referrer).hostname
    except ValueError:
        return None
    if not host:
        return None
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode()
        except (idna.IDNAError, UnicodeError):
            return None
    host = host.lower().rstrip(".")
    return host if host and len(host) <= 253 and set(host) <= _HOST_CHARS else None


class VisitStats:
    def __init__(self, table: Table, clock: Callable[[], float] = time.time,
                 retention_days: int = RETENTION_DAYS,
                 max_referrers: int = MAX_REFERRERS) -> None:
        self.table = table
        self._clock = clock
        self._retention = retention_days
        self._max_referrers = max_referrers
        self._made: set[str] = set()
        """Day items this process knows exist (cleared when it grows past a day's worth)."""

    @staticmethod
    def key(link: str, day: int) -> str:
        return f"{link}@{day}"

    def strays(self, wanted: dict[tuple[str, int], Any],
               read: Callable[[list[str]], dict[str, Item]]) -> set[tuple[str, int]]:
        """Make the day items of ``wanted`` ((link, day) -> the ``created_at`` of the link the
        counts came to) this process has not seen yet, a put each, then read their links in
        one batch (``read``: ``get_many``): an item made for a link deleted since, or made
        again, is deleted again. Returns those (link, day), whose counts must go. Read after
        the puts, so a delete of the link either found the item or is seen here (as
        :meth:`_ensure`'s ``still``, in a read per hundred links, not per link)."""
        made: dict[tuple[str, int], int] = {}
        for link, day in wanted:
            key = self.key(link, day)
            if key in self._made:
                continue
            try:
                made[(link, day)] = self.table.put(
                    {"id": key, "link": link, "day": day, "date": date_of(day),
                     "expires_at": (day + 1 + self._retention) * DAY},
                    expected_version=ABSENT)[VERSION]
            except ConflictError:
                pass  # another process (or report) made it first
            self._seen(key)
        links = read(sorted({link for link, _ in made})) if made else {}
        gone = {(link, day) for link, day in made if links.get(link) is None
                or links[link].get("created_at") != wanted[(link, day)]}
        for link, day in gone:
            self._made.discard(self.key(link, day))
            try:
                self.table.delete(self.key(link, day), expected_version=made[(link, day)])
            except ConflictError:
                pass  # deleted with its link meanwhile
        return gone

    def _seen(self, key: str) -> None:
        if len(self._made) > 100_000:
            self._made.clear()
        self._made.add(key)

    def _ensure(self, link: str, day: int, still: Callable[[], bool] | None = None) -> str | None:
        """The key of ``link``'s day item, made if this process has not seen it yet. With
        ``still`` (whether the link is still the one the counts came to: a store read, asked
        only when the put made the item), an item made for a link deleted since, or deleted
        and made again with its slug, is deleted again: None, the counts go with their link.
        Asked after the put, so a delete of the link either finds the item (and deletes it)
        or is seen here."""
        key = self.key(link, day)
        if key in self._made:
            return key
        try:
            made = self.table.put({"id": key, "link": link, "day": day, "date": date_of(day),
                                   "expires_at": (day + 1 + self._retention) * DAY},
                                  expected_version=ABSENT)
        except ConflictError:
            made = None  # another process (or report) made it first
        if made is not None and still is not None and not still():
            try:
                self.table.delete(key, expected_version=made[VERSION])
            except ConflictError:
                pass  # deleted with its link meanwhile
            return None
        self._seen(key)
        return key

    def add(self, link: str, counts: dict[str, int], now: float | None = None,
            day: int | None = None, still: Callable[[], bool] | None = None) -> dict[str, int]:
        """Add ``counts`` (``visits``, ``bots``, ``ref:<host>``) to ``link``'s day, each as an
        atomic ADD; returns the counts that could not be written (the store failed), for the
        caller to retry. Referrer hosts past ``max_referrers`` go to ``ref:(other)``.
        ``still``: see :meth:`_ensure` (without it the day item is made whatever the link)."""
        day = day_of(self._clock() if now is None else now) if day is None else day
        try:
            key = self._ensure(link, day, still)
            if key is None:
                return {}  # its link is gone: so are these counts
            counts = self._bounded(key, counts)
        except StoreError:
            return dict(counts)
        failed: dict[str, int] = {}
        for name, count in counts.items():
            if count <= 0:
                continue
            try:
                if self.table.increment(key, name, count, existing_only=True) is None:
                    # Gone since this process made it: its link was deleted. Made again, once,
                    # for a link made again with its slug (``still`` says whether these counts
                    # are that link's; else they go with the deleted one).
                    self._made.discard(key)
                    if self._ensure(link, day, still) is None:
                        return failed
                    self.table.increment(key, name, count, existing_only=True)
            except StoreError:
                failed[name] = count
        return failed

    def _bounded(self, key: str, counts: dict[str, int]) -> dict[str, int]:
        referrers = [name for name in counts if name.startswith(REFERRER)]
        if not referrers:
            return counts
        item = self.table.get(key) or {}
        known = {name for name in item if name.startswith(REFERRER)}
        room = self._max_referrers - len(known - {REFERRER + OTHER})
        bounded: dict[str, int] = {}
        for name, count in counts.items():
            if name.startswith(REFERRER) and name not in known:
                if room <= 0:
                    name = REFERRER + OTHER
                else:
                    room -= 1
            bounded[name] = bounded.get(name, 0) + count
        return bounded

    def read(self, link: str, days: int, now: float | None = None) -> dict[str, Any]:
        """The last ``days`` days of ``link`` (today included, oldest first, days without
        visits as zeros) and its referrer hosts over them, most visits first: one query."""
        today = day_of(self._clock() if now is None else now)
        first = today - days + 1
        found: dict[int, Item] = {}
        cursor = None
        while True:
            page = self.table.query_range("by_link", link, first, today, limit=days,
                                          cursor=cursor)
            found.update((int(item["day"]), item) for item in page.items)
            cursor = page.next_cursor
            if not cursor:
                break
        referrers: dict[str, int] = {}
        for item in found.values():
            for name, value in item.items():
                if name.startswith(REFERRER):
                    host = name[len(REFERRER):]
                    referrers[host] = referrers.get(host, 0) + int(value)
        return {
            "days": [{"date": date_of(day), "visits": int(found.get(day, {}).get("visits") or 0),
                      "bots": int(found.get(day, {}).get("bots") or 0)}
                     for day in range(first, today + 1)],
            "referrers": [{"host": host, "visits": count} for host, count in
                          sorted(referrers.items(), key=lambda pair: (-pair[1], pair[0]))],
        }

    def forget(self, link: str, now: float | None = None) -> int:
        """Delete ``link``'s days (the link is deleted: a new link with its slug starts from
        nothing); at most ``retention`` items, read by one query."""
        today = day_of(self._clock() if now is None else now)
        page = self.table.query_range("by_link", link, today - self._retention - 1, today + 1,
                                      limit=self._retention + 3)
        deleted = 0
        for item in page.items:
            deleted += self.table.delete(str(item["id"]))
            self._made.discard(str(item["id"]))
        return deleted

"""Short-link totals (links, disabled, visits) and the most-visited links, kept on every change
with atomic ADDs, so the dashboard reads two items and the top links instead of every link.

They live beside the change counter in the ``link_changes`` table. A crash between a link's
write and its ADD leaves a total off by that change; the first process to find no totals item
(a new store, or one from an earlier version) counts every link once, and :meth:`recount`
does it again on demand.
"""
from __future__ import annotations

from typing import Callable, Iterable

from store import ABSENT, ConflictError, Item, Table

TOTALS = "totals"
TOP = "top"
FIELDS = ("links", "disabled", "visits")


def counted_visits(link: Item) -> int:
    return int(link.get("visits") or 0)


class LinkTotals:
    def __init__(self, table: Table, top: int = 10) -> None:
        self.table = table
        self.top_size = top

    def open(self, links: Callable[[], Iterable[Item]]) -> None:
        """Count every link once if no totals item exists yet (this process made it)."""
        try:
            self.table.put({"name": TOTALS}, expected_version=ABSENT)
        except ConflictError:
            return
        self.recount(links)

    def recount(self, links: Callable[[], Iterable[Item]]) -> dict[str, int]:
        """Set the totals and the top to what ``links()`` holds (one pass; ADDs of the
        differences, so changes made meanwhile are not overwritten)."""
        actual = dict.fromkeys(FIELDS, 0)
        top: dict[str, int] = {}
        for link in links():
            actual["links"] += 1
            actual["disabled"] += 1 if link.get("disabled") else 0
            actual["visits"] += counted_visits(link)
            top[link["id"]] = counted_visits(link)
        current = self.totals()
        self.add(**{name: actual[name] - current[name] for name in FIELDS})
        self._write_top(lambda _: top)
        return self.totals()

    def add(self, links: int = 0, disabled: int = 0, visits: int = 0) -> None:
        """ADDs to the totals item, only if it exists: made by :meth:`open`, which counts what
        is there (an ADD must not create it before the count, which would then not run)."""
        for name, delta in (("links", links), ("disabled", disabled), ("visits", visits)):
            if delta:
                self.table.increment(TOTALS, name, delta, existing_only=True)

    def totals(self) -> dict[str, int]:
        item = self.table.get(TOTALS) or {}
        return {name: max(0, int(item.get(name) or 0)) for name in FIELDS}

    def top(self) -> list[tuple[str, int]]:
        """``(link id, visits)``, most visited first (links never visited are not in it)."""
        links = (self.table.get(TOP) or {}).get("links") or {}
        return sorted(((key, int(n)) for key, n in links.items()), key=lambda kv: (-kv[1], kv[0]))

    def visited(self, totals: dict[str, int]) -> None:
        """Links whose visit totals are now ``totals`` (as their ADDs returned): those that
        beat the top's lowest join it. One read, and a write only when the top changes."""
        if totals:
            self._write_top(lambda current: {**current, **totals})

    def forget(self, key: str) -> None:
        """A deleted link leaves the top."""
        self._write_top(lambda current: {k: n for k, n in current.items() if k != key})

    def _write_top(self, change: Callable[[dict[str, int]], dict[str, int]]) -> None:
        for _ in range(5):  # conditional on the version read: another writer means read again
            item = self.table.get(TOP)
            current = {k: int(n) for k, n in ((item or {}).get("links") or {}).items()}
            ranked = sorted(change(current).items(), key=lambda kv: (-kv[1], kv[0]))
            wanted = {key: n for key, n in ranked[:self.top_size] if n > 0}
            if item is not None and wanted == current:
                return
            try:
                self.table.put({"name": TOP, "links": wanted},
                               expected_version=item["version"] if item else ABSENT)
                return
            except ConflictError:
                continue

"""The feed's log in the version item: for each recent revision, how many feed items (route
and redirect items, tombstones included) hold that revision now.

The feed is read through a global secondary index, which DynamoDB updates after the write: a
query may lack an item written a moment ago, or still show it at its revision before. With the
log a reader knows what the index must show for a revision range and reads again until it
does, so a delta is complete by construction rather than by luck.

A commit adds its revision with the number of items it writes and takes one from the revision
of each item it overwrites (read before the commit, which is conditional on the version item:
no other commit can overwrite one meanwhile). Only the last ``WINDOW`` revisions are kept, so
the item stays small. A version item written by the release before has no log: a reader then
answers as that release did, and the next commit starts one.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

WINDOW = 1000
"""Revisions the log names (about 8 bytes each): an agent further behind gets a snapshot."""
FROM, COUNTS = "feed_from", "feed_counts"
KEYS_FROM, KEYS = "feed_keys_from", "feed_keys"
KEYS_BYTES = 4000
"""The keys the last revisions wrote, kept while they fit in about this much (a few hundred
links or hosts): an agent a few changes behind reads its delta by key, in one consistent batch
read per table, rather than from the index (on DynamoDB a query per spread partition, 34 in
all, and behind its table)."""


def window(meta: dict[str, Any]) -> tuple[int, list[int]] | None:
    """(first revision, counts from it up to ``meta``'s revision), or None without a log (or
    one that does not end at its revision: an item of the release before kept its fields)."""
    start, counts = meta.get(FROM), meta.get(COUNTS)
    if not isinstance(start, int) or not isinstance(counts, list) or not counts \
            or start + len(counts) - 1 != int(meta.get("revision") or 0):
        return None
    return start, [int(count) for count in counts]


def advanced(meta: dict[str, Any] | None, revision: int, overwritten: Iterable[int],
             count: int) -> dict[str, Any]:
    """The log fields of the version item that commits ``revision``, writing ``count`` items
    over items at the ``overwritten`` revisions."""
    found = window(meta) if meta is not None else None
    start, counts = found if found and found[0] + len(found[1]) == revision else (revision, [])
    for old in overwritten:
        if start <= old < start + len(counts):
            counts[old - start] -= 1
    counts.append(count)
    drop = max(0, len(counts) - WINDOW)
    return {FROM: start + drop, COUNTS: counts[drop:]}


def covers(log: tuple[int, list[int]], since: int) -> bool:
    return since + 1 >= log[0]


def complete(log: tuple[int, list[int]], since: int, revisions: Iterable[int]) -> bool:
    """Whether feed items at these ``revisions`` (read after ``since``, up to the log's last)
    are exactly what the log names, revision by revision."""
    start, counts = log
    wanted = {start + n: count for n, count in enumerate(counts) if start + n > since and count}
    return Counter(revisions) == wanted


def keyed(meta: dict[str, Any] | None, revision: int, routes: list[str],
          links: list[str]) -> dict[str, Any]:
    """The recent-keys fields of the version item that commits ``revision``, writing the
    route items ``routes`` and the link items ``links``; the oldest revisions go first once
    they do not fit in ``KEYS_BYTES`` (a change too big for it leaves no revision named)."""
    found = _keys(meta) if meta is not None else None
    start, entries = found if found and found[0] + len(found[1]) == revision else (revision, [])
    entries.append([routes, links])
    sizes = [8 + sum(len(key) + 4 for key in entry[0] + entry[1]) for entry in entries]
    while entries and sum(sizes) > KEYS_BYTES:
        entries.pop(0)
        sizes.pop(0)
        start += 1
    return {KEYS_FROM: start, KEYS: entries}


def keys_since(meta: dict[str, Any], since: int) -> tuple[list[str], list[str]] | None:
    """The route and link keys written after revision ``since`` up to ``meta``'s, when its
    recent keys name every one of those revisions; else None (read the index)."""
    found = _keys(meta)
    if found is None or since + 1 < found[0]:
        return None
    routes: set[str] = set()
    links: set[str] = set()
    for written_routes, written_links in found[1][since + 1 - found[0]:]:
        routes.update(written_routes)
        links.update(written_links)
    return sorted(routes), sorted(links)


def _keys(meta: dict[str, Any]) -> tuple[int, list[list[list[str]]]] | None:
    """(first revision, the keys each revision wrote from it up to ``meta``'s), or None (an
    item of the release before, or one that rewrote the version without them)."""
    start, entries = meta.get(KEYS_FROM), meta.get(KEYS)
    if not isinstance(start, int) or not isinstance(entries, list) \
            or start + len(entries) - 1 != int(meta.get("revision") or 0):
        return None
    return start, [[list(entry[0]), list(entry[1])] for entry in entries]

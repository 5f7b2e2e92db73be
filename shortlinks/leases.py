"""Visits of a limited link, leased from the store in blocks.

A link with ``max_visits`` keeps, in its ``visits`` counter, every visit handed out: to a
process's lease or, by a v0.1.0 process, one at a time. A process takes a block of visits with
one atomic conditional ADD on that counter that never takes it past ``max_visits`` (the last
block is what is left), and serves that block from memory: no store request per visit. Blocks
start at 8 visits and double up to the largest (as many as the lease has taken so far), so
the counter runs ahead of the visits served by at most as many again, or 8, per process.

Each lease is an item of ``short_link_leases`` (one per link and process, format
``LEASE_FORMAT``): ``granted``, the visits the process took in all, and ``upto``, how many of
them it may have served. The process raises ``upto`` a step at a time, with a write conditional
on the item's version, before it serves past it. So what a process can have served is always in
the store, and whoever holds the item's version can give back ``granted - upto`` without ever
handing out a visit twice:

- on a clean stop the process gives back what it did not use (``granted - used``) and deletes
  its item;
- an idle lease is given back the same way by its own process at a flush, when its link had
  at most ``NEAR_BLOCKS`` blocks left at the process's last ADD (the other processes may soon
  need those visits), or once unused for ``forget`` seconds (memory follows the links in use);
- only a lease near its limit is renewed (its ``until`` moved on): elsewhere only a process
  that finds the link exhausted takes it back (nothing is lost then, below), and a lease left
  unrenewed costs no write at all. A link a process visits less than once a minute used to
  cost four writes a visit (the idle lease given back, then a new block);
- a process that died leaves its item; once its ``until`` has passed, the next process that
  finds the link exhausted deletes it (conditionally) and then gives back ``granted - upto``. A
  crash loses at most one step of visits (served or not), never hands one out twice;
- a live process whose item was taken back so (its lease expired unrenewed, or it stalled)
  finds it gone at its next write or release: it gives back the announced visits it did not
  serve, since the other process counted them as served, and serves no more of them.

A lease belongs to its link as it was made (``born``, the link's ``created_at``, in memory and
in its item): a link deleted and made again with the same slug is another link. A process that
finds the link it serves made again drops what its lease holds without giving it back (those
visits were the deleted link's), and visits go back to a link only after a read that finds it
still the one they were taken from (a deleted link keeps nothing; an item written before leases
carried ``born`` goes back only to a link made before that item was written). A lowered limit
is followed too: a process whose last ADD saw the counter past the new limit gives back what it
holds before serving again, so it serves only what the new limit leaves.

A v0.1.0 process beside these counts each visit with an unconditional ADD and refuses the
visit when the total passes the limit: its refused visits only ever raise the counter, so the
two together never serve past the limit either (tests/test_visit_leases.py).
"""
from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Callable

from store import ABSENT, VERSION, ConflictError, Item, StoreError, Table, TableSpec, every

LINK_LEASES = TableSpec("short_link_leases", key="id", indexes=("link",), expiring=True)
LEASE_FORMAT = 1
"""The lease items' format: a process leaves alone (never gives back) an item of another."""
NEAR_BLOCKS = 4
"""An idle lease goes back at once when its link had this many whole blocks left, or fewer."""
KEPT = 86400.0
"""A lease item outlives its ``until`` by this long (then the store's TTL deletes it: a link
deleted meanwhile leaves nothing behind, and its visits are lost, never handed out twice)."""


@dataclasses.dataclass
class _Lease:
    granted: int = 0
    """Visits this item's process took from the link's counter (since the item began)."""
    stored: int = 0
    """``granted`` as the item holds it (a block just taken is not in it yet)."""
    upto: int = 0
    used: int = 0
    version: int = ABSENT
    until: float = 0.0
    last_used: float = 0.0
    seen: int = 0
    """The link's counter as the last ADD answered."""
    limit: int = 0
    born: Any = None
    """The ``created_at`` of the link the visits were taken from."""
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


class VisitLeases:
    """One process's leases. ``block``: the visits one ADD takes at most (fewer near the limit),
    ``first`` at first;
    ``step``: how far one write raises ``upto``; ``seconds``: how long a lease lives unrenewed
    (a dead process's visits come back after it)."""

    def __init__(self, links: Table, leases: Table, owner: str, block: int = 200,
                 step: int = 50, seconds: float = 120.0,
                 clock: Callable[[], float] = time.time, first: int = 8,
                 forget: float = 600.0) -> None:
        self._links = links
        self._table = leases
        self.owner = owner
        self._block = block
        self._first = first
        self._step = step
        self._seconds = seconds
        self._forget = forget
        self._clock = clock
        self._held: dict[str, _Lease] = {}
        self._lock = threading.Lock()
        self._closed = False

    def _lease(self, key: str) -> _Lease:
        with self._lock:
            lease = self._held.get(key)
            if lease is None:
                lease = self._held[key] = _Lease()
            return lease

    def has_room(self, key: str, limit: int, born: Any) -> bool:
        """Whether the next visit of ``key`` (``limit``, made at ``born``) is served from memory
        (no store request)."""
        lease = self._held.get(key)
        return lease is not None and lease.born == born and lease.seen <= limit \
            and lease.used + 8 < lease.upto  # room for the pool threads too

    def take(self, key: str, limit: int, born: Any) -> int | None:
        """One visit of link ``key`` limited to ``limit``, as the caller read the link (made at
        ``born``, its ``created_at``): the link's counter as last seen (for the kept top) if it
        is within the limit, None if not."""
        if self._closed:  # stopping: each visit counted on its own, conditionally
            return self._links.increment(key, "visits", 1, existing_only=True, at_most=limit)
        while True:
            lease = self._lease(key)
            with lease.lock:
                if self._held.get(key) is not lease:
                    continue  # dropped as idle meanwhile: take the new one
                self._follow_link(key, lease, limit, born)
                lease.last_used, lease.limit = self._clock(), limit
                if lease.used >= lease.upto and not self._room(key, lease, limit):
                    return None
                lease.used += 1
                return lease.seen

    def _follow_link(self, key: str, lease: _Lease, limit: int, born: Any) -> None:
        """The lease follows its link as the caller read it. A link made again (another
        ``born``): what the lease holds is the deleted link's, dropped, not given back (its
        item keeps its version: the next write overwrites it). A limit lowered below the
        counter as this process's last ADD saw it: what the lease holds may be past it, so it
        is given back, and the next block is taken under the new limit."""
        if lease.born != born:
            lease.granted = lease.stored = lease.upto = lease.used = lease.seen = 0
            lease.born = born
        elif limit < lease.seen and lease.granted > lease.used:
            self._release(key, lease)

    def _room(self, key: str, lease: _Lease, limit: int) -> bool:
        """Room for one more visit: ``upto`` raised a step (with a new block first when the
        lease has none left). False when the limit is reached."""
        for _ in range(2):
            if lease.used >= lease.granted and not self._grant(key, lease, limit):
                return False
            try:
                self._write(key, lease, min(lease.granted, lease.used + self._step))
                return True
            except ConflictError:  # another process took our item back: start a new one
                self._taken_back(key, lease)
        return False

    def _write(self, key: str, lease: _Lease, upto: int) -> None:
        now = self._clock()
        until = now + self._seconds
        stored = self._table.put({
            "id": f"{key}|{self.owner}", "link": key, "owner": self.owner,
            "format": LEASE_FORMAT, "granted": lease.granted, "upto": upto, "until": until,
            "born": lease.born, "expires_at": until + KEPT}, expected_version=lease.version)
        lease.version, lease.upto, lease.until = stored[VERSION], upto, until
        lease.stored = lease.granted

    def _grant(self, key: str, lease: _Lease, limit: int) -> bool:
        """A block of visits added to the lease: one conditional ADD, a second with what is
        left when a whole block no longer fits, and once more after taking back what dead
        processes' leases held. False when none are left."""
        # Slow start: 8, 8, 16, 32... up to the block, so a link visited now and then holds few
        # visits it has not served (its counter stays near its visits), a busy one soon a block.
        size = max(1, min(self._block, limit // 8 or 1, max(self._first, lease.granted)))
        for attempt in range(3):
            total = self._links.increment(key, "visits", size, existing_only=True,
                                          at_most=limit)
            if total is not None:
                lease.granted += size
                lease.seen = total
                return True
            item = self._links.get(key)
            if item is None:
                return False
            left = limit - int(item.get("visits") or 0)
            if left > 0:
                size = min(size, left)
                continue
            if attempt or not self.reclaim(key):
                return False
        return False

    def reclaim(self, key: str) -> int:
        """Give back what the expired leases of ``key`` (their processes died) did not serve:
        each item deleted (conditionally) before its visits are added back. Returns how many."""
        now = self._clock()
        back = 0
        for item in list(every(lambda cursor: self._table.query("link", key, cursor=cursor))):
            if item.get("format") != LEASE_FORMAT or item["owner"] == self.owner \
                    or float(item["until"]) > now:
                continue
            back += self._give_back(key, item, int(item["granted"]) - int(item["upto"]))
        return back

    def _give_back(self, key: str, item: Item, unused: int) -> int:
        try:
            if not self._table.delete(str(item["id"]), expected_version=item[VERSION]):
                return 0
        except ConflictError:
            return 0  # renewed or given back meanwhile
        if "born" in item:
            return self._add_back(key, unused, lambda link: link.get("created_at") == item["born"])
        # Written before leases named their link: given back only to a link made before the
        # item was last written (its ``until`` less a lease's life).
        written = float(item["until"]) - self._seconds
        return self._add_back(key, unused,
                              lambda link: float(link.get("created_at") or 0) <= written)

    def _add_back(self, key: str, unused: int, taken_from: Callable[[Item], bool]) -> int:
        """``unused`` visits given back to link ``key`` if it is the link they were taken from
        (one read): a link deleted since gets nothing, and one made again with its slug none
        of the deleted one's visits. Returns how many went back."""
        if unused <= 0:
            return 0
        link = self._links.get(key)
        if link is None or not taken_from(link):
            return 0
        self._links.increment(key, "visits", -unused, existing_only=True)
        return unused

    def renew(self, idle: float | None = None) -> None:
        """At each flush: renew the leases used in the last ``idle`` seconds (default: half a
        lease's life) that near their end; of the others, give back those near their link's
        limit or unused for ``forget`` seconds, and keep the rest as they are."""
        now = self._clock()
        idle = self._seconds / 2 if idle is None else idle
        for key, lease in list(self._held.items()):
            with lease.lock:
                unused = now - lease.last_used
                if lease.version == ABSENT:
                    if unused >= idle:  # memory follows the links in use
                        with self._lock:
                            self._held.pop(key, None)
                    continue
                near = self._near_limit(lease)
                try:
                    if unused >= self._forget or unused >= idle and near:
                        self._release(key, lease)
                    elif unused < idle and lease.until - now < self._seconds / 2 \
                            and (near or now - lease.until > KEPT / 2):
                        self._write(key, lease, lease.upto)
                except ConflictError:
                    self._taken_back(key, lease)
                except StoreError:
                    pass  # the next flush tries again; the lease expires meanwhile at worst

    def _near_limit(self, lease: _Lease) -> bool:
        """Whether the link had at most ``NEAR_BLOCKS`` whole blocks left at the last ADD."""
        return lease.limit - lease.seen <= NEAR_BLOCKS * self._block

    def _release(self, key: str, lease: _Lease) -> None:
        """Our item deleted and what we did not serve given back; or, when another process
        took the item back first, the part of it that process could not."""
        try:
            deleted = self._table.delete(f"{key}|{self.owner}", expected_version=lease.version)
        except ConflictError:
            deleted = False
        if not deleted:
            self._taken_back(key, lease)
            return
        self._forget_and_add_back(key, lease, lease.granted - lease.used)

    def _taken_back(self, key: str, lease: _Lease) -> None:
        """Another process took our item back as expired (``reclaim``), giving back what it did
        not announce (``granted - upto`` as stored). The rest we did not serve goes back here:
        a block taken since the last write, and the announced visits not served (counted as
        served by the other process; we serve no more of them)."""
        self._forget_and_add_back(
            key, lease, lease.granted - lease.stored + max(0, lease.upto - lease.used))

    def _forget_and_add_back(self, key: str, lease: _Lease, unused: int) -> None:
        """The lease emptied first: an ADD whose answer is lost is then never repeated (its
        visits are lost at worst, never handed out twice)."""
        lease.granted = lease.upto = lease.used = lease.stored = lease.seen = 0
        lease.version = ABSENT
        born = lease.born
        self._add_back(key, unused, lambda link: link.get("created_at") == born)

    def close(self) -> None:
        """A clean stop: every lease given back; later visits are counted one by one."""
        self._closed = True
        for key, lease in list(self._held.items()):
            with lease.lock:
                if lease.version != ABSENT:
                    try:
                        self._release(key, lease)
                    except StoreError:
                        pass  # it expires: the next process takes its visits back

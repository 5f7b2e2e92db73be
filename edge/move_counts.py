"""The moves in flight from and to each shard, as counters on one item of the moves table: the
dashboard's figures (one read) and a draining shard's hint that nothing moves off it any more.

A move and its count are two writes, so a crash between them leaves a count off by one. A
draining shard is recounted from the moves themselves before it goes (edge/moves.py), and
the counts are set back to zero once no move is left at all (:meth:`MoveCounts.zero`)."""
from __future__ import annotations

import logging

from store import ABSENT, ConflictError, Item, Table

log = logging.getLogger(__name__)
COUNTS = "counts"


class MoveCounts:
    def __init__(self, table: Table) -> None:
        self.table = table

    def add(self, source: str, target: str, amount: int) -> None:
        for counter in (f"from_{source}", f"to_{target}"):
            if self.table.increment(COUNTS, counter, amount, existing_only=True) is None:
                try:  # a counter lives on an item: the first move makes it
                    self.table.put({"key": COUNTS}, expected_version=ABSENT)
                except ConflictError:
                    pass
                self.table.increment(COUNTS, counter, amount)

    def in_flight(self) -> dict[str, dict[str, int]]:
        """Moves in flight per shard, from it and to it (one read)."""
        counts = self.table.get(COUNTS) or {}
        found: dict[str, dict[str, int]] = {}
        for field, value in counts.items():
            direction, sep, shard = field.partition("_")
            if sep and direction in ("from", "to") and int(value):
                found.setdefault(shard, {"from": 0, "to": 0})[direction] = int(value)
        return found

    def recount(self, shard: str, moves: list[Item]) -> dict[str, int]:
        """The moves from and to ``shard`` among ``moves`` (every move in flight), and the
        counts made to say so."""
        actual = {"from": sum(1 for item in moves if item["source"] == shard),
                  "to": sum(1 for item in moves if item["target"] == shard)}
        counts = self.table.get(COUNTS) or {}
        for direction, value in actual.items():
            off = value - int(counts.get(f"{direction}_{shard}", 0))
            if off:  # a counter is only added to (atomically); two replicas both adding
                # leave it off again, for the next recount
                self.table.increment(COUNTS, f"{direction}_{shard}", off, existing_only=True)
                log.warning("moves %s shard %s recounted: %d", direction, shard, value)
        return actual

    def zero(self, found: dict[str, dict[str, int]]) -> None:
        """The counts ``found`` (:meth:`in_flight`'s answer) back to zero: the caller found no
        move in flight. A move enqueued meanwhile, or two replicas zeroing at once, leave a
        count off again: the next check after the moves end sets it back."""
        off = {f"{direction}_{shard}": value for shard, counts in found.items()
               for direction, value in counts.items() if value}
        for field, value in off.items():
            self.table.increment(COUNTS, field, -value, existing_only=True)
        if off:
            log.warning("no move in flight: counts %s set back to zero", sorted(off))

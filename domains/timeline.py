"""A domain's timeline: what happened to it, who did it and why, newest first.

Two ways an event gets written, with different durability:

- :meth:`Timeline.event` only builds one. The caller puts it in the outbox of the domain's
  conditional write (a transition, a connect, a removal, a change of options), so the event is
  stored if and only if the change is, whatever crashes after; the drain writes it to the
  events table (:meth:`Timeline.save`).
- :meth:`Timeline.append` writes one on its own, at once: for what changes nothing on the
  domain (a renewal that failed, records created at a registrar), where there is no write to
  tie it to.
"""
from __future__ import annotations

import uuid
from typing import Callable

from domains.outbox import EVENT, OUTBOX, kind_of
from kit.clock import iso
from store import Item, Table, TableSpec

EVENTS = TableSpec("domain_events", key="id", indexes=("claim",), expiring=True)
"""Events belong to one claim (one connection of a hostname), so a later owner never sees them.
Their ids sort newest first; each expires ``event_retention`` seconds after it happened."""
NEWEST_FIRST = 10**20


class Timeline:
    def __init__(self, table: Table, *, clock: Callable[[], float],
                 retention: float = 30 * 86400.0) -> None:
        self.table = table
        self._clock = clock
        self._retention = retention
        self._last_ns = 0

    def event(self, domain: Item, what: str, why: str, actor: str = "worker",
              transition: tuple[str, str] | None = None) -> Item:
        """An event of ``domain``, built to be written with the change it reports (in the
        outbox of that change's conditional write). Its id is fixed here, so writing it again
        after a crash stores the same event once."""
        now = self._clock()
        return {"id": f"{NEWEST_FIRST - self._nanoseconds(now):020d}-{uuid.uuid4().hex[:8]}",
                "hostname": domain["hostname"], "claim": domain["claim"], "what": what,
                "from": transition[0] if transition else None,
                "to": transition[1] if transition else None,
                "actor": actor, "why": why, "at": iso(now),
                "expires_at": now + self._retention}

    def append(self, domain: Item, what: str, why: str, actor: str = "worker") -> None:
        """Write an event of ``domain`` on its own, now: for what changes nothing on the
        domain, so no write of the domain carries it. A crash before it returns loses it."""
        self.save(self.event(domain, what, why, actor))

    def save(self, event: Item) -> None:
        """Write an event built by :meth:`event` (the outbox's consumer of events)."""
        self.table.put(event)  # its id was fixed when it was made: a second put is the same

    def read(self, domain: Item, limit: int = 100) -> list[Item]:
        """This claim's events, newest first, with those still in the item's outbox (a writer
        that died before writing them leaves them there until the worker drains it). Only this
        claim's: a takeover carries the previous holder's undrained entries over to the new
        claim's item (domains/takeover.py), and the new holder must never see them."""
        written = self.table.query("claim", domain["claim"], limit=limit).items
        known = {event["id"] for event in written}
        pending = [event for event in domain.get(OUTBOX) or []
                   if kind_of(event) == EVENT and event.get("claim") == domain["claim"]
                   and event["id"] not in known]
        return sorted(written + pending, key=lambda event: event["id"])[:limit]

    def _nanoseconds(self, now: float) -> int:
        """``now`` in nanoseconds, after any this process stamped before: events made in one
        tick of the clock (or after a clock set back) keep the order they were made in."""
        self._last_ns = max(int(now * 1e9), self._last_ns + 1)
        return self._last_ns

"""The outbox on a domain's item: a status change and its consequences in one write.

DynamoDB-compatible servers without transactions (dynalite) still make a single-item
conditional write atomic, so a transition writes, on the domain's own item, the entries for
everything that must follow it: its timeline event, the webhook for the platform, the route
change for the edge, the certificate to revoke, the short links to disable. A drain then hands
each entry to the consumer registered for its kind and clears them. A process that dies between
the write and the end of the drain leaves the entries on the item, where the worker finds them
through the ``outbox`` range index (never a scan) and drains them again.

Entries are plain data with an ``id`` fixed when they are written, so a second drain repeats
exactly the same effect: consumers must be idempotent (a webhook id enqueued twice is one
webhook; disabling disabled links or publishing the same route changes nothing).

Each entry also carries the ``claim`` that wrote it. Most consumers act on the hostname
whoever holds it (a revoke that names no serial deletes the hostname's certificate, a
disabling its links), so a drain that read the entries and then paused must not apply them
once the hostname changed hands: domains/drain.py applies such an entry only while its claim
still holds the hostname and the entry is still pending there. Only the kinds in
``ANY_HOLDER`` are applied whoever holds it: an event and a webhook say what happened to that
claim, and a route follows the hostname as it is now. The claim check cannot protect a
takeover's revoke (it is the new claim's entry, about the previous holder's certificate, and
may wait behind a failed consumer while the new claim gets its own): so a revoke names the
certificate and upload it means when its claim knows them (``revoke_held``).
"""
from __future__ import annotations

from typing import Callable

from store import Item

OUTBOX = "outbox"
SEQUENCE = "sequence"
"""The key of a webhook entry's data that carries the domain's counter (``with_entries``)."""
EVENT, WEBHOOK, ROUTE, REVOKE, DISABLE_LINKS = (
    "event", "webhook", "route", "revoke", "disable_links")
ANY_HOLDER = frozenset({EVENT, WEBHOOK, ROUTE})
"""The kinds whose effect is right whoever holds the hostname when they are applied; every
other kind (a new one too) is bound to the claim that wrote it."""
CLAIM = "claim"
"""The key of an entry that names its claim: the writer's (``with_entries``), or for a
timeline event the claim whose timeline it belongs to."""
Consumer = Callable[[Item], None]
"""Applies one entry; must be idempotent (it may see the same entry again after a crash)."""


def webhook(event_type: str, **data: object) -> Item:
    """A webhook for the platform; its ``id`` is the delivery id the receiver sees."""
    return {"kind": WEBHOOK, "type": event_type, "data": data}


def route(hostname: str, publication_id: str | None) -> Item:
    """The edge serves ``hostname`` for ``publication_id`` now, or not at all (None)."""
    return {"kind": ROUTE, "hostname": hostname, "publication_id": publication_id}


SERIAL, UPLOAD_ID = "serial", "upload_id"
"""The keys of a revoke entry naming what its claim held: the certificate's serial and the
uploaded certificate's id. Entries without them (the release before wrote none, and a claim
that does not know what it holds writes none) revoke whatever the hostname holds."""
HELD_SERIAL, HELD_UPLOAD = "certificate_serial", "upload_id"
"""The fields of a domain's item naming the certificate and the upload its claim stored."""


def revoke(hostname: str, serial: str | None = None, upload_id: str | None = None) -> Item:
    """The certificate of ``hostname`` is no longer wanted: revoke it and drop its key, and
    forget its upload. ``serial`` and ``upload_id``: only those, so an entry applied after the
    hostname changed hands (a drain that stopped or paused) leaves the next holder's."""
    named = {SERIAL: serial, UPLOAD_ID: upload_id}
    return {"kind": REVOKE, "hostname": hostname,
            **{key: value for key, value in named.items() if value is not None}}


def revoke_held(domain: Item, stored: str | None = None) -> Item:
    """The revoke entry of what ``domain``'s claim holds: the certificate ``stored`` now under
    its hostname ("" for none), read by the caller as it writes the entry, since the item's
    ``certificate_serial`` may lag a renewal (stored by a replica of the release before, or
    whose domain write failed); else the one the item records. And its upload."""
    serial = domain.get(HELD_SERIAL) if stored is None else stored
    return revoke(domain["hostname"], serial, domain.get(HELD_UPLOAD))


def disable_links(hostname: str) -> Item:
    """``hostname`` is no longer connected: short links on it must stop (if it is a short
    domain), so whoever connects it next does not serve them."""
    return {"kind": DISABLE_LINKS, "hostname": hostname}


def kind_of(entry: Item) -> str:
    return str(entry.get("kind") or EVENT)  # entries written before kinds were all events


def revoking(domain: Item) -> bool:
    """Whether ``domain``'s outbox still has a certificate to revoke (a previous holder's)."""
    return any(kind_of(entry) == REVOKE for entry in domain.get(OUTBOX) or [])


def with_entries(domain: Item, now: float, entries: list[Item]) -> Item:
    """``domain`` carrying ``entries`` in its outbox too, each with a stable id: the claim and a
    counter kept on the item (two writers cannot both win the same version), after the time of
    the write (``now``) so webhooks still sort oldest first. Timeline events keep their own
    ids. Each entry names the claim (``CLAIM``) unless it does already. A webhook carries the
    counter as its ``sequence`` (domains/webhooks.py): a receiver orders a hostname's webhooks
    by it, so it must only grow, also across a removal (the item goes) and the next
    connection, whose counter therefore starts from the time in milliseconds rather than from
    0 (a takeover keeps the holder's)."""
    seq = int(domain.get("outbox_seq") or int(now * 1000))
    stamp = f"{int(now * 1e9):020d}-{str(domain['claim'])[:12]}"
    stamped = []
    for entry in entries:
        seq += 1
        if kind_of(entry) == WEBHOOK and "id" not in entry:
            entry = {**entry, "data": {**entry["data"], SEQUENCE: seq}}
        if CLAIM not in entry:
            entry = {**entry, CLAIM: domain["claim"]}
        stamped.append(entry if "id" in entry else {**entry, "id": f"{stamp}-{seq:06d}"})
    return {**domain, OUTBOX: list(domain.get(OUTBOX) or []) + stamped, "outbox_seq": seq,
            "outbox_state": "pending", "outbox_at": now}


class Consumers:
    """Who applies each kind of entry: ``control/wiring.py`` registers them all from one
    table (the domain service its own timeline events), so no part imports another to react
    to a domain's change."""

    def __init__(self) -> None:
        self._by_kind: dict[str, Consumer] = {}

    def register(self, kind: str, consumer: Consumer) -> None:
        self._by_kind[kind] = consumer

    def also(self, kind: str, consumer: Consumer) -> None:
        """Apply ``consumer`` too, after the one registered for ``kind`` (a part that keeps
        its own data about a domain follows the domain's own consumers)."""
        first = self._by_kind.get(kind)

        def both(entry: Item) -> None:
            if first is not None:
                first(entry)
            consumer(entry)

        self._by_kind[kind] = both

    def apply(self, entry: Item) -> None:
        """Apply ``entry``; ``UnknownKind`` if no consumer is registered for its kind."""
        consumer = self._by_kind.get(kind_of(entry))
        if consumer is None:
            raise UnknownKind(kind_of(entry))
        consumer(entry)


class UnknownKind(Exception):
    """No consumer for an entry's kind in this process: a newer release wrote it (during an
    upgrade the fleet runs two releases), so it stays in the outbox, with those after it,
    for a replica that knows it; taking it as done would lose its effect for good."""

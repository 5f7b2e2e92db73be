"""Taking a domain over: the owner of a hostname's DNS moves it to their publication, away
from the publication that holds it, by proving control of the DNS with a TXT record.

Who may: anyone who can create ``_edge-takeover.<host> TXT "<token>"`` where every authoritative
server of the zone serves it (dnsops/dnscheck.py asks them directly, never a cache). Whatever the
holder's status, a verified and live domain too: the owner of the DNS is the owner of the name
(Vercel does the same), and whoever holds a live domain without controlling its DNS can no
longer prove it at the next re-check anyway. The holder learns of it by webhook
(``domain.taken_over``) and in its timeline.

The token is what makes it safe:

- bound to one hostname and one requesting publication (one request per pair: another
  publication's token proves nothing for this one, and the TXT name says the hostname);
- bound to the holder's claim at the time of the request: once the hostname changed hands (a
  takeover won, the holder removed and someone connected it again), it proves nothing;
- single-use (the request is deleted when the move is made, and the claim it names is gone);
- expiring (``ttl`` seconds after it was handed out; 2 days by default).

The move is one conditional write on the domain's item (compare-and-set on the version read
before the DNS check): two publications racing, or a takeover racing the holder's own steps,
cannot both win; the loser gets ``TakeoverRefused`` (409) and nothing of it is written. The
write replaces the item by a fresh claim of the new publication (``pending_dns``, due at once:
its ownership TXT is the token already proven, now under ``_edge-challenge``) and carries in its
outbox what a removal does for the holder: the route off the edge, its certificate revoked and
its key (and any uploaded certificate) dropped, short links on the hostname disabled, its www
companion removed (it pointed at a name that is no longer the holder's), the timeline events
of both claims and the webhook. The new publication gets its own certificate through the
lifecycle, so the holder's never serves the new holder's route.
"""
from __future__ import annotations

import secrets
import time
import uuid
from typing import Callable, Protocol

from dnsops.hostnames import base_of
from dnsops.records import delegation_records, required_records, takeover_name
from domains import outbox, pairs
from domains.errors import DomainError, DomainNotFound
from domains.service import ISSUING, PENDING_DNS, RECORD_LABELS, REMOVING, DomainService
from kit.clock import iso
from kit.hosts import records_too_long
from store import ABSENT, ConflictError, Item, Table, TableSpec

TAKEOVERS = TableSpec("domain_takeovers", key="id", expiring=True)
"""One request per (hostname, requesting publication): its token, the holder's claim it was
made against, and when it expires."""
TAKEN_OVER = "domain.taken_over"
DEFAULT_TTL = 2 * 86400.0
KEPT_AFTER = 7 * 86400.0
"""An expired request stays this long (then the store drops it), so its use says "expired"."""


class TxtChecker(Protocol):
    def txt_everywhere(self, name: str, value: str) -> bool:
        """Whether every authoritative server of ``name`` serves TXT ``value``."""

    def records(self, name: str, rdtype: str) -> list[str]:
        """The values of ``name`` ``rdtype`` on its first authoritative server."""


class TakeoverRefused(DomainError):
    """Why a takeover cannot be made now; ``code`` for programs, the message for people."""

    def __init__(self, hostname: str, code: str, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.hostname = hostname
        self.code = code
        self.status = status


class Takeovers:
    def __init__(self, domains: DomainService, table: Table, checker: TxtChecker, *,
                 ttl: float = DEFAULT_TTL, clock: Callable[[], float] = time.time,
                 serial_of: Callable[[str], str | None] | None = None) -> None:
        """``serial_of``: the certificate stored under a hostname, which the takeover's revoke
        names (else the one the holder's item records: outbox.revoke_held)."""
        self.domains = domains
        self._serial_of = serial_of
        self.table = table
        self._checker = checker
        self._ttl = ttl
        self._clock = clock

    # What the taken domain's page says.

    def holder_view(self, hostname: str, publication_id: str) -> dict[str, object]:
        """What a publisher may know of the hostname's holder: whether it is proven and when
        its claim expires, never who holds it. DomainNotFound if nobody does."""
        holder = self.domains.get(hostname)
        expires = self.domains.claim_expires_at(holder)
        return {"hostname": holder["hostname"], "yours": holder["publication_id"] == publication_id,
                "verified": holder["status"] not in (PENDING_DNS, REMOVING),
                "claim_expires_at": iso(expires) if expires is not None else None,
                "removing": holder["status"] == REMOVING}

    # The request: a token to put in DNS.

    def request(self, hostname: object, publication_id: str) -> Item:
        """The takeover request of ``publication_id`` for ``hostname``: the one it has if
        still good, else a new token. TakeoverRefused if there is nothing to take over."""
        holder = self._holder(hostname, publication_id)
        key = _key(holder["hostname"], publication_id)
        for _ in range(3):
            existing = self.table.get(key)
            if existing is not None and self._good(existing, holder):
                return existing
            now = self._clock()
            fresh = {"id": key, "hostname": holder["hostname"], "publication_id": publication_id,
                     "token": secrets.token_urlsafe(24), "claim": holder["claim"],
                     "created_at": now, "valid_until": now + self._ttl,
                     "expires_at": now + self._ttl + KEPT_AFTER}
            try:
                return self.table.put(fresh, expected_version=ABSENT if existing is None
                                      else existing["version"])
            except ConflictError:
                continue  # asked twice at once: the other answer stands
        raise TakeoverRefused(holder["hostname"], "busy", "Try again in a moment.")

    def pending(self, hostname: str, publication_id: str) -> Item | None:
        """The request still good for ``hostname`` by ``publication_id``, or None."""
        holder = self.domains.find(hostname)
        found = self.table.get(_key(hostname, publication_id))
        if holder is None or found is None or not self._good(found, holder):
            return None
        return found

    @staticmethod
    def record(request: Item) -> dict[str, str]:
        """The TXT record that proves the request."""
        return {"type": "TXT", "name": takeover_name(request["hostname"]),
                "value": request["token"]}

    def _good(self, request: Item, holder: Item) -> bool:
        return request["claim"] == holder["claim"] and request["valid_until"] > self._clock()

    # The move.

    def take_over(self, hostname: object, publication_id: str, actor: str = "api") -> Item:
        """Move ``hostname`` to ``publication_id`` if its DNS proves the request: the domain
        as now stored (its new claim, pending its DNS check), its outbox drained.
        TakeoverRefused (4xx, with a sentence) if not."""
        holder = self._holder(hostname, publication_id)
        self._not_ordering(holder)
        request = self._request_for(holder, publication_id)
        self._prove(request)
        moved = self._moved(holder, request, actor)
        try:
            stored = self.domains.repository.write(holder, moved)
        except ConflictError:
            raise TakeoverRefused(holder["hostname"], "changed", f"{holder['hostname']} changed "
                                  "while we were moving it (its holder acted at the same "
                                  "moment); look again and retry.") from None
        try:
            self.table.delete(request["id"], expected_version=request["version"])
        except ConflictError:
            pass  # asked again meanwhile: that one names a claim that is gone, so it is dead
        return self.domains.outbox.drain(stored)

    def _holder(self, hostname: object, publication_id: str) -> Item:
        try:
            holder = self.domains.get(hostname)
        except DomainNotFound as exc:
            raise TakeoverRefused(exc.hostname, "not_connected", f"{exc.hostname} is not "
                                  "connected to any publication: connect it instead.") from None
        name = holder["hostname"]
        if holder["publication_id"] == publication_id:
            raise TakeoverRefused(name, "yours", f"{name} is already connected to this "
                                  "publication.")
        if holder["status"] == REMOVING:
            raise TakeoverRefused(name, "removing", f"{name} is being removed: connect it "
                                  "in a moment.")
        too_long = records_too_long(base_of(name), RECORD_LABELS)
        if too_long is not None:  # connected before such names were refused: no TXT can prove it
            raise TakeoverRefused(name, "too_long", f"{name} cannot be taken over: it is "
                                  f"{too_long}.", 400)
        return holder

    def _not_ordering(self, holder: Item) -> None:
        """``issuing`` doubles as a lease until ``next_attempt_at`` (domains/decide.py): an
        order in flight would store the holder's certificate after the revocation."""
        if holder["status"] == ISSUING and \
                float(holder.get("next_attempt_at") or 0) > self._clock():
            raise TakeoverRefused(holder["hostname"], "busy", "A certificate is being issued "
                                  f"for {holder['hostname']} right now: try again in a minute.")

    def _request_for(self, holder: Item, publication_id: str) -> Item:
        name = holder["hostname"]
        request = self.table.get(_key(name, publication_id))
        if request is None:
            raise TakeoverRefused(name, "no_request", f"Ask for a takeover record for {name} "
                                  "first; then add it to your DNS.")
        if request["valid_until"] <= self._clock():
            raise TakeoverRefused(name, "expired", f"Your takeover record for {name} expired "
                                  "on " + iso(request["valid_until"]) + "; ask for a new one.",
                                  410)
        if request["claim"] != holder["claim"]:
            raise TakeoverRefused(name, "claim_changed", f"{name} changed hands since you asked "
                                  "for your takeover record; ask for a new one.")
        return request

    def _prove(self, request: Item) -> None:
        """The token must be served by every authoritative server of the zone."""
        record = self.record(request)
        if self._checker.txt_everywhere(record["name"], record["value"]):
            return
        found = self._checker.records(record["name"], "TXT")
        # What the zone serves is anyone's text: a few values, cut short, are enough to see.
        shown = [repr(value if len(value) <= 64 else value[:64] + "...") for value in found[:3]]
        seen = f"we found {', '.join(shown)}" if found else "we found none"
        raise TakeoverRefused(request["hostname"], "txt_mismatch" if found else "txt_missing",
                              f"Create a TXT record {record['name']} with the value "
                              f"{record['value']!r} at your DNS host; {seen}"
                              + ("" if found else " (it may take a few minutes to appear)")
                              + ".", 403)

    def _moved(self, holder: Item, request: Item, actor: str) -> Item:
        """The item of the new claim, carrying (with the holder's own entries still undrained)
        what the holder's side of the move needs."""
        now, name, token = self._clock(), holder["hostname"], request["token"]
        records = required_records(name, token, self.domains.cname_target,
                                   self.domains.edge_addresses) \
            + delegation_records(name, self.domains.dcv_zone)
        fresh = {"hostname": name, "publication_id": request["publication_id"],
                 "status": PENDING_DNS, "claim": uuid.uuid4().hex, "claimed_at": now,
                 "token": token, "created_at": iso(now), "updated_at": iso(now),
                 "dns_records": records, "last_error": None, "validation_errors": [],
                 "dns_seen": {}, "attempts": 0, "next_attempt_at": now,
                 "taken_over_from": {"publication_id": holder["publication_id"],
                                     "claim": holder["claim"], "status": holder["status"],
                                     "at": iso(now)},
                 outbox.OUTBOX: list(holder.get(outbox.OUTBOX) or []),
                 "outbox_seq": holder.get("outbox_seq") or 0, "version": holder["version"]}
        history = self.domains.history
        return outbox.with_entries(fresh, now, [
            history.event(holder, "taken over", f"moved to publication "
                          f"{request['publication_id']}: the owner of its DNS proved it with "
                          f"TXT {takeover_name(name)} (was {holder['status']})", actor),
            history.event(fresh, "taken over", "moved here from another publication: the "
                          f"owner of its DNS proved it with TXT {takeover_name(name)}", actor),
            outbox.route(name, None), outbox.disable_links(name), outbox.revoke_held(
                holder, None if self._serial_of is None else self._serial_of(name) or ""),
            outbox.webhook(TAKEN_OVER, hostname=name, publication_id=holder["publication_id"],
                           status="taken_over", previous_status=holder["status"]),
            *(pairs.removal_effects(holder) if holder.get("pair_role") == "primary" else [])])


def _key(hostname: str, publication_id: str) -> str:
    return f"{hostname} {publication_id}"

"""Carries each domain through its lifecycle; called by the worker loop of `edgectl serve`.

pending_dns -> verified -> issuing -> active; an active domain is re-checked every
``recheck_seconds`` and suspended (route removed, so a dangling record cannot be used to take
it over) once its DNS has pointed away for ``suspend_grace_seconds``; a suspended domain whose
DNS comes back is active again. A pending domain is given up after ``give_up_seconds`` (a
manual check revives it). Every step is a conditional write, so two replicas racing for one
domain cannot both act: the loser's write raises ConflictError and it moves on. ``issuing``
doubles as a lease: if the replica holding it dies, the domain becomes due when it runs out.

What to do at each step is decided by the pure policies of ``domains/decide.py``; this module
looks (DNS, the delegation, the certificate store), asks them, and carries out their steps.
What it needs of the other parts (issuer, edge, events) is ``domains/ports.py``.
What follows a change (its webhook, the route at the edge, a revocation, the short links of a
removed domain) is written with it, as outbox entries on the domain's item (domains/outbox.py),
and applied by the consumers ``control/wiring.py`` registers (some are methods here).
"""
from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from dnsops.dnscheck import DnsCheck, DnsChecker
from domains import decide, outbox, pairs
from domains.decide import Rules, Seen, Step, Timing
from domains.ports import CertificateIssuer, Delegation, EventSink, NoEvents, RoutePublisher
from domains.routing import RouteValue, follow, routable
from domains.service import (ACTIVE, AWAITING_TRAFFIC, ISSUING, PENDING_DNS, ROUTED,
                             SUSPENDED, VERIFIED, DomainService)
from kit import logs
from store import ConflictError, Item, StoreError, Throttled

__all__ = ["CertificateIssuer", "Delegation", "EventSink", "Lifecycle", "RoutePublisher",
           "RouteValue", "Rules", "Timing"]

log = logging.getLogger(__name__)


class Lifecycle:
    def __init__(self, domains: DomainService, checker: DnsChecker, issuer: CertificateIssuer,
                 edge: RoutePublisher, rules: Rules = Rules(), *,
                 delegation: Delegation | None = None, events: EventSink | None = None,
                 worker_id: str = "", clock: Callable[[], float] = time.time) -> None:
        if rules.prevalidates and delegation is None:
            raise ValueError("pre-validation (a DCV zone) needs a way to see the delegation")
        self.domains = domains
        self.checker = checker
        self.issuer = issuer
        self.edge = edge
        self.rules = rules
        self.timing = rules.timing
        self._delegation = delegation
        self._clock = clock
        # A stable id lets a restarted worker take back its own leases at once.
        self.worker_id = worker_id or uuid.uuid4().hex[:12]
        self.events = events or NoEvents()
        self._held: dict[str, float] = {}
        """Hostnames this worker leased -> when the lease runs out (handed back on a stop)."""
        self._own_issuing = True
        """Whether this worker may hold issuances to resume (its first round, or one failed)."""

    # The consumers of the outbox entries the lifecycle writes (control/wiring.py's table).

    def follow_route(self, entry: Item) -> None:
        """The edge follows the domain as it is now, and the domains that redirect to it
        (domains/routing.py ``follow``)."""
        domain = self.domains.find(entry["hostname"])
        publication = domain["publication_id"] if domain else entry.get("publication_id")
        # The domains redirecting here redirect only while this one is routed (an index
        # query, usually empty).
        sources = [listed["hostname"] for listed in self.domains.repository.redirecting_to(
            entry["hostname"], None, fallback=False)]  # a takeover: another's stop redirecting
        follow(entry["hostname"], domain, publication, sources, self.domains.find,
               self.edge.route_changes)

    def send_webhook(self, entry: Item) -> None:
        self.events.emit(entry["type"], dict(entry["data"]), entry["id"])

    def discard_certificate(self, entry: Item) -> None:
        """Only the certificate the entry names, when it names one (domains/outbox.py)."""
        serial = entry.get(outbox.SERIAL)
        if serial is None:  # the release before wrote none: whatever the hostname holds
            self.issuer.discard([entry["hostname"]])
        else:
            self.issuer.discard([entry["hostname"]], str(serial))

    # The worker's round.

    def tick(self) -> None:
        """One round: only what is due, asked of an ordered index, so a round with nothing
        due costs a constant number of store requests whatever the number of domains (and
        only the indexes where work may be: domains/due_hints.py)."""
        # First: a fresh edge needs its (empty) state to open port 80 for HTTP-01.
        try:
            self.edge.refresh()
        except StoreError:
            raise  # the store is down: nothing else in this round can work either
        except Exception:  # the domains must still move forward; the next round retries
            log.exception("publishing the edge state failed")
        self.domains.drain_outboxes()  # what a dead process (or a failed consumer) left
        self.domains.begin_round()
        due = self.domains.due_this_round
        self._each(self.verify, due(PENDING_DNS))
        now = self._clock()
        issuing = due(VERIFIED) + [
            d for d in self._issuing() if decide.resumable(d, now, self.worker_id)]
        serving = bool(issuing) and self.edge.serving()  # asked only when there is an order
        issuing = [d for d in issuing if decide.orderable(d, serving)]
        if issuing:
            self._each(self.issue, issuing, self.timing.issue_concurrency)
        self._each(self.recheck, due(ACTIVE) + due(SUSPENDED))
        if self.rules.prevalidates:
            self._each(self.advance, due(AWAITING_TRAFFIC))

    def now(self) -> float:
        return self._clock()

    def _issuing(self) -> list[Item]:
        """Issuances to resume: every one when this worker may hold some under its id (from
        before a restart, or left by a failure: resumed at once), else those whose lease ran
        out, asked as a due index is."""
        if not self._own_issuing:
            return self.domains.due_this_round(ISSUING)
        self._own_issuing = False
        return self.domains.with_status(ISSUING)

    def _each(self, step: Callable[[Item], Item], domains: list[Item],
              concurrency: int | None = None) -> None:
        """Network-bound steps run concurrently with a bound (10,000 DNS checks must not take
        hours; many certificates must not wait for each other)."""
        bound = max(1, min(concurrency or self.timing.dns_concurrency, len(domains)))
        with ThreadPoolExecutor(max_workers=bound) as pool:
            for future in [pool.submit(self._guard, step, d) for d in domains]:
                future.result()

    def _guard(self, step: Callable[[Item], Item], domain: Item) -> None:
        """Run one step on a domain this worker leased (another replica may be on it)."""
        with logs.bound(hostname=domain["hostname"], publication_id=domain.get("publication_id")):
            leased = self.domains.lease(domain, self.worker_id, self.timing.worker_lease)
            if leased is None:
                return
            self._held[domain["hostname"]] = leased["lease_until"]
            try:
                step(leased)  # its lines (and the certs part's) carry the domain
            except ConflictError:
                log.info("%s changed under us; another worker has it", domain["hostname"])
            except Throttled:
                raise  # the round ends; the next one waits longer
            except Exception as exc:  # this domain's alone, unless the store fails this write too
                log.exception("the step of %s failed; it is deferred", domain["hostname"])
                self.domains.defer(self.domains.get(domain["hostname"]), [decide.failure(exc)])

    # Carrying out a step.

    def _apply(self, domain: Item, step: Step, actor: str = "worker") -> Item:
        """Carry out ``step``: one conditional write with its outbox entries (drained before
        this returns), then what follows it."""
        effects = self._effects(domain, step)
        if step.action in (decide.MOVE, decide.ISSUE):
            done = self.domains.transition(domain, step.status, step.why, actor, effects,
                                           **step.changes)
        elif step.action == decide.RETRY:
            done = self.domains.defer(domain, [dict(e) for e in step.errors], status=step.status,
                                      not_before=step.not_before, actor=actor, effects=effects,
                                      **step.changes)
        elif step.action == decide.RECORD:
            done = self.domains.record(domain, step.what, step.why, actor, effects,
                                       **step.changes)
        else:
            done = domain
        if step.then is not None:
            done = self._apply(done, step.then, actor)
        return self._renew_if_due(done) if step.renew else done

    @staticmethod
    def _effects(domain: Item, step: Step) -> list[Item]:
        """The outbox entries of ``step``: the route as its status wants it, its webhooks."""
        status = step.webhook_status or step.status
        route = [outbox.route(domain["hostname"], domain["publication_id"]
                              if step.status in ROUTED else None)] if step.route else []
        return route + [_webhook(event_type, domain, status, **data)
                        for event_type, data in step.webhooks]

    def _look(self, domain: Item, result: DnsCheck | None) -> Seen:
        """What the policies read: the DNS check, and the delegation when it matters."""
        result = result or self.checker.check(domain["hostname"], domain["token"])
        delegated = decide.asks_delegation(domain, result, self.rules) \
            and self._delegated(domain)
        return Seen(result, delegated)

    def _delegated(self, domain: Item) -> bool:
        return self._delegation is not None and self._delegation.delegated(domain["hostname"])

    def step(self, domain: Item, result: DnsCheck | None = None, actor: str = "worker") -> Item:
        """Look at ``domain``'s DNS and take the step its status's policies decide."""
        seen = self._look(domain, result)
        return self._apply(domain, decide.decide(domain, seen, self._clock(), self.rules), actor)

    verify = recheck = advance = step
    """pending_dns -> verified; an active or suspended domain: does its DNS (and ownership)
    still point at us; an awaiting domain: active once its traffic points at us."""

    def issue(self, domain: Item) -> Item:
        try:
            return self._issue(domain)
        except Exception:  # the store or the CA went away midway: it may be left issuing
            self._own_issuing = True
            raise

    def _issue(self, domain: Item) -> Item:
        if self.issuer.holds(domain["hostname"]) and not outbox.revoking(domain):
            # A run died after the CA issued and before the domain moved on: the certificate
            # is stored, so ordering again would only cost a second one from the CA. (Not the
            # previous holder's, still to be revoked by this claim's outbox.) Which one it is
            # is not known here: a removal names the one stored then.
            log.info("%s has its certificate already; not ordering again", domain["hostname"])
            return self._apply(domain, _holding(decide.issued(
                domain, self._clock(), self.rules), None))
        delegated = bool(domain.get("traffic_elsewhere")) and self.rules.prevalidates \
            and self._delegated(domain)
        step = decide.before_ordering(domain, delegated, self._clock(), self.rules)
        leased = self._apply(domain, step)
        if step.action != decide.ISSUE:
            return leased
        try:
            serial = self.issuer.issue([domain["hostname"]])
        except Throttled:
            raise  # the store's back-pressure, not the domain's failure: the worker slows down
        except Exception as exc:  # any failure: record it and retry from verified later
            log.warning("issuance for %s failed: %s", domain["hostname"], exc)
            return self._apply(leased, decide.issue_failed(str(exc),
                                                           getattr(exc, "retry_after", None)))
        if not self._still_held(leased, serial):
            return leased
        return self._stored(leased, decide.issued(leased, self._clock(), self.rules), serial)

    def _renew_if_due(self, domain: Item) -> Item:
        """Renew a routed domain's certificate in place; the edge swaps it in hot."""
        if not self.issuer.renewal_due(domain["hostname"]):
            return domain
        try:
            serial = self.issuer.issue([domain["hostname"]])
        except Throttled:
            raise
        except Exception as exc:  # keep serving the current certificate; retry after a backoff
            log.warning("renewal for %s failed: %s", domain["hostname"], exc)
            return self._apply(domain, decide.renewal_failed(
                domain, str(exc), self._clock(), getattr(exc, "retry_after", None)))
        if not self._still_held(domain, serial):
            return domain
        return self._stored(domain, decide.renewed(domain), serial)

    def _stored(self, domain: Item, step: Step, serial: str | None,
                actor: str = "worker") -> Item:
        """Take ``step`` after an order stored certificate ``serial``, recording it on the
        item (a removal revokes that one only). If the claim lost the hostname between the
        check after the order and this write, its removal named the certificate before, so
        the one just stored goes now."""
        try:
            return self._apply(domain, _holding(step, serial), actor)
        except ConflictError:
            self._still_held(domain, serial)
            raise

    def _still_held(self, domain: Item, serial: str | None) -> bool:
        """After an order: does its claim still hold the hostname? A removal or a takeover that
        came while the CA answered revoked the claim's certificate, so the one just stored
        (``serial``) goes too (else the hostname's next holder would serve it, and not order
        its own); one its next holder stored since stays."""
        if self.domains.still_held(domain):
            return True
        log.warning("%s changed hands during its order: its certificate is revoked",
                    domain["hostname"])
        if serial is None:  # an issuer that cannot say which: whatever is stored goes
            self.issuer.discard([domain["hostname"]])
        else:
            self.issuer.discard([domain["hostname"]], serial)
        return False

    # What people ask for.

    def check_now(self, domain: str | Item, actor: str = "api") -> tuple[Item, DnsCheck]:
        """Re-check a domain at once, whatever its schedule (the publisher pressed "check").
        ``domain``: a hostname, or the domain a caller was allowed to check, which is checked
        only while its claim holds the hostname (``DomainService.current``)."""
        domain = self.domains.current(domain)
        result = self.checker.check(domain["hostname"], domain["token"])
        if domain["status"] == PENDING_DNS:
            domain = {**domain, "gave_up": False}
        return self.step(domain, result, actor), result

    def renew_now(self, domain: str | Item, actor: str = "admin") -> Item:
        """Renew an active domain's certificate at once (an operator's decision), under the
        domain's lease as a worker's step; raises the issuer's error after recording it in the
        timeline. ``domain``: a hostname, or the domain a caller read (then only while its
        claim holds the hostname)."""
        found = self.domains.current(domain)
        if found["status"] != ACTIVE:
            raise ValueError(f"only an active domain can be renewed (it is {found['status']})")
        owner = f"renew-now-{uuid.uuid4().hex[:8]}"
        with self.domains.repository.leased(found, owner, self.timing.worker_lease) as held:
            if held is None:
                raise ValueError(f"a worker holds this domain (for {self.timing.worker_lease:.0f}"
                                 " s at most): try again soon")
            try:
                serial = self.issuer.issue([held["hostname"]])
            except Exception as exc:
                self.domains.history.append(held, "renewal failed", str(exc), actor)
                raise
            if not self._still_held(held, serial):
                raise ValueError(f"{held['hostname']} changed hands during its renewal: the "
                                 "certificate just issued is revoked")
            return self._stored(held, decide.renewed(held, "renewed on request"), serial, actor)

    def suspend(self, domain: str | Item, actor: str = "admin") -> Item:
        """Take a domain off the edge and keep it off until :meth:`resume` (``domain``: as
        :meth:`renew_now` takes it)."""
        domain = self.domains.current(domain)
        return self._apply(domain, decide.suspended_by_admin(domain), actor)

    def resume(self, domain: str | Item, actor: str = "admin") -> Item:
        """Lift an admin's suspension (the worker re-checks the domain at once; ``domain``: as
        :meth:`renew_now` takes it)."""
        domain = self.domains.current(domain)
        if not domain.get("held"):
            raise ValueError("only a domain suspended by an admin can be resumed")
        return self._apply(domain, decide.resumed_by_admin(domain, self._clock()), actor)

    def remove(self, domain: str | Item, actor: str = "api") -> Item:
        """Remove a domain: in one write, it is marked ``removing`` with its route off the
        edge, its certificate to revoke, its short links to disable and its webhook; once
        those are done, it is deleted (a repeated call finishes a removal left half done).
        ``domain``: a hostname (whoever holds it), or the domain as a caller read it when it
        was allowed to remove it: then ConflictError if it changed since (it may have changed
        hands), so a caller never removes what it was not allowed to."""
        if isinstance(domain, str):
            domain = self.domains.get(domain)
        name = domain["hostname"]
        return self.domains.remove(domain, actor, effects=[
            outbox.route(name, None), outbox.disable_links(name), outbox.revoke_held(
                domain, self.issuer.serial_of(name) or ""),
            _webhook("domain.removed", domain, "removed"), *pairs.removal_effects(domain)])

    def publish_routes(self) -> None:
        """Reconcile the edge with every active domain (reads them all): at start, and when
        an operator asks; routine changes publish one route each."""
        for attempt in range(3):
            try:
                self.edge.publish(self._routes_to_publish)
                return
            except ConflictError:  # another replica published meanwhile: read again
                if attempt == 2:
                    raise

    def _routes_to_publish(self, routed: set[str]) -> dict[str, RouteValue]:
        """Every routed domain, by its status index. An index read may lag its table (a
        DynamoDB GSI is eventually consistent): a domain activated or removed a moment ago can
        be missing from it or still in it. So where the read and the edge disagree, the domain
        is read by its key (consistent, in batches) before its route is added or taken off: a
        restarting replica never drops a live route, nor brings back a removed one. The reads
        follow the disagreement, usually none. ``routed``: what the edge routes, as the
        publisher read it (it takes off only hostnames in it). Only each domain's route inputs
        are held, not its item (at 100,000 domains the items were 270 MB)."""
        found = {d["hostname"]: routable(d) for status in ROUTED
                 for d in self.domains.each_with_status(status)}
        disagree = sorted(routed ^ found.keys())
        for start in range(0, len(disagree), 1000):
            chunk = disagree[start:start + 1000]
            read = self.domains.find_many(chunk)
            for hostname in chunk:
                domain = read.get(hostname)
                if domain is not None and domain["status"] in ROUTED:
                    found[hostname] = routable(domain)
                else:
                    found.pop(hostname, None)
        return {hostname: with_target if target in found and found[target][1] == publication
                else alone for hostname, (target, publication, with_target, alone) in found.items()}

    def release_leases(self) -> int:
        """On a graceful stop, once the worker has stopped: hand back the domains this worker
        still holds, so another replica takes them at once rather than when the leases run
        out. Returns how many were released."""
        now = self._clock()
        held = [hostname for hostname, until in self._held.items() if until > now]
        self._held.clear()
        return sum(self.domains.release(hostname, self.worker_id) for hostname in held)


def _holding(step: Step, serial: str | None) -> Step:
    """``step`` also recording the claim's certificate (None: not known which it is)."""
    return dataclasses.replace(step, changes={**step.changes, outbox.HELD_SERIAL: serial})


def _webhook(event_type: str, domain: Item, status: str, **extra: object) -> Item:
    return outbox.webhook(event_type, hostname=domain["hostname"],
                          publication_id=domain["publication_id"], status=status, **extra)

"""The lifecycle's decisions: pure functions from what was seen of a domain to its next step.

A policy reads a snapshot (the stored domain, what its DNS answered, the time) and says what to
do, as cert-manager's trigger policies do; ``domains/lifecycle.py`` carries the step out (store
writes, the certificate order, the outbox entries). The policies of a status form a chain: the
first one with an answer decides, and the last always answers. Pre-validation
(``domains/prevalidation.py``) is one more policy in the chain of ``pending_dns`` and the whole
chain of ``awaiting_traffic``, in force when a DCV zone is configured. Nothing here reads the
store, the network or the clock, so every rule is a table-driven test with no server
(tests/test_decide.py).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from dnsops.dnscheck import DnsCheck
from dnsops.hostnames import base_of
from dnsops.records import dcv_target
from domains.service import (ACTIVE, AWAITING_TRAFFIC, ISSUING, PENDING_DNS, SUSPENDED,
                             VERIFIED)
from store import Item

MOVE, RETRY, RECORD, ISSUE, NOTHING = "move", "retry", "record", "issue", "nothing"
"""What a step does: move to its status; record a failure and retry later (backoff), staying in
its status or going back to it; add a timeline event without a status change; move to
``issuing`` and order a certificate; nothing at all."""
DNS_AWAY_SINCE = "dns_away_since"
"""When an active domain's DNS was first seen pointing away (its grace period runs from it);
None while it points at us. Not ``failing_since_ts``, which is when the last step errored."""
LEGACY_DNS_AWAY_SINCE = "failing_since"
"""The same, as items written by the previous release name it."""
ROUTING_PROBLEMS = frozenset({"cname_mismatch", "a_mismatch", "stray_aaaa", "no_records",
                              "nxdomain"})
"""What may still be wrong for a pre-validation: only where the traffic goes."""
OWNERSHIP_PROBLEMS = frozenset({"txt_missing", "txt_mismatch"})
Webhook = tuple[str, Mapping[str, object]]
"""A webhook's event type and the data it carries besides the domain and its status."""


@dataclasses.dataclass(frozen=True)
class Timing:
    issuing_lease: float = 300.0
    worker_lease: float = 120.0
    dns_concurrency: int = 16
    issue_concurrency: int = 8
    recheck: float = 3600.0
    suspend_grace: float = 86400.0
    give_up: float = 7 * 86400.0


@dataclasses.dataclass(frozen=True)
class Rules:
    timing: Timing = Timing()
    dcv_zone: str = ""
    """Our zone for delegated DNS-01; empty: no pre-validation."""
    prevalidation_recheck: float = 60.0
    """How often an ``awaiting_traffic`` domain is looked at (the switch should show fast)."""

    @property
    def prevalidates(self) -> bool:
        return bool(self.dcv_zone)


@dataclasses.dataclass(frozen=True)
class Seen:
    """What the executor observed before deciding."""

    dns: DnsCheck
    delegated: bool = False
    """``_acme-challenge`` is delegated to our DCV zone (asked only when :func:`asks_delegation`
    says it matters, as it costs a lookup)."""


@dataclasses.dataclass(frozen=True)
class Step:
    action: str
    """MOVE, RETRY, RECORD, ISSUE or NOTHING."""
    status: str
    """The status the domain is in after the step."""
    why: str
    """The timeline's reason (a retry's reason is its errors)."""
    errors: tuple[Mapping[str, Any], ...] = ()
    webhooks: tuple[Webhook, ...] = ()
    route: bool = False
    """Also tell the edge: routed while ``status`` is, off the edge otherwise."""
    changes: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """The item's other fields the step sets."""
    what: str = ""
    """The timeline's event of a RECORD."""
    not_before: float | None = None
    """A retry is not due before this (the CA's Retry-After)."""
    webhook_status: str = ""
    """The status the webhooks announce, when not ``status``."""
    renew: bool = False
    """Then renew the certificate if it is due (a lookup in the certificate store)."""
    then: Step | None = None
    """A step carried out right after this one."""


Policy = Callable[[Item, Seen, float, Rules], "Step | None"]


def nothing(domain: Item, why: str) -> Step:
    return Step(NOTHING, domain["status"], why)


def only_traffic_elsewhere(dns: DnsCheck) -> bool:
    """Ownership proven and CAA fine: only the traffic record is still elsewhere."""
    codes = {p.code for p in dns.problems}
    return bool(codes) and codes <= ROUTING_PROBLEMS


def asks_delegation(domain: Item, dns: DnsCheck, rules: Rules) -> bool:
    """Whether the decision on ``domain`` needs :attr:`Seen.delegated`."""
    return rules.prevalidates and not dns.ok and only_traffic_elsewhere(dns) \
        and domain["status"] in (PENDING_DNS, AWAITING_TRAFFIC)


def dns_away_since(domain: Item) -> float | None:
    return domain.get(DNS_AWAY_SINCE) or domain.get(LEGACY_DNS_AWAY_SINCE)


def _seen(seen: Seen, **changes: Any) -> dict[str, Any]:
    return {"dns_seen": seen.dns.seen, **changes}


# pending_dns


def dns_proven(domain: Item, seen: Seen, now: float, rules: Rules) -> Step | None:
    if not seen.dns.ok:
        return None
    return Step(MOVE, VERIFIED, "DNS points at the edge, TXT matches, CAA allows our CA",
                webhooks=(("domain.verified", {}),), changes=_seen(
                    seen, last_error=None, validation_errors=[], attempts=0, next_attempt_at=0,
                    traffic_elsewhere=False))


def prevalidated(domain: Item, seen: Seen, now: float, rules: Rules) -> Step | None:
    """Ownership TXT and the DNS-01 delegation in place, only the traffic elsewhere: verified
    (``traffic_elsewhere``), so the certificate is ordered over DNS-01 before the move."""
    if not (rules.prevalidates and only_traffic_elsewhere(seen.dns) and seen.delegated):
        return None
    return Step(MOVE, VERIFIED, "ownership TXT matches and DNS-01 is delegated to us; the "
                "traffic record still points elsewhere (pre-validation)",
                webhooks=(("domain.verified", {"prevalidation": True}),), changes=_seen(
                    seen, last_error=None, validation_errors=seen.dns.errors, attempts=0,
                    next_attempt_at=0, traffic_elsewhere=True))


def dns_not_ready(domain: Item, seen: Seen, now: float, rules: Rules) -> Step:
    """Retry later; past ``give_up`` the domain is no longer due (a manual check revives it)."""
    retry = Step(RETRY, domain["status"], "DNS is not ready", errors=tuple(seen.dns.errors),
                 changes=_seen(seen))
    if now - domain["claimed_at"] <= rules.timing.give_up:
        return retry
    return dataclasses.replace(retry, then=Step(
        MOVE, PENDING_DNS, "gave up waiting for DNS",
        changes={"next_attempt_at": None, "gave_up": True}))


# active and suspended: the recheck


def dns_points_here(domain: Item, seen: Seen, now: float, rules: Rules) -> Step | None:
    """Active again (a suspended domain back on the edge); an active one renews if due."""
    if not seen.dns.ok:
        return None
    back = domain["status"] == SUSPENDED
    return Step(MOVE, ACTIVE, "DNS points at the edge again",
                webhooks=(("domain.active", {}),) if back else (), route=back, renew=not back,
                changes=_seen(seen, last_error=None, validation_errors=[], attempts=0,
                              next_attempt_at=now + rules.timing.recheck,
                              **{DNS_AWAY_SINCE: None, LEGACY_DNS_AWAY_SINCE: None}))


def dns_unknown(domain: Item, seen: Seen, now: float, rules: Rules) -> Step | None:
    """No server answered with authority (a timeout, REFUSED, SERVFAIL): nothing says the DNS
    moved, so the grace period neither starts nor runs out; look again later."""
    if not seen.dns.inconclusive:
        return None
    return Step(RETRY, domain["status"], "DNS gave no authoritative answer",
                errors=tuple(seen.dns.errors), changes=_seen(seen))


def suspended_after_grace(domain: Item, seen: Seen, now: float, rules: Rules) -> Step | None:
    """Off the edge once DNS pointed away for the grace period: a dangling record must not
    let someone else take the name over."""
    since = dns_away_since(domain) or now
    if domain["status"] != ACTIVE or now - since < rules.timing.suspend_grace:
        return None
    errors = seen.dns.errors
    return Step(RETRY, SUSPENDED, "DNS pointed away for the grace period",
                errors=tuple(errors), webhooks=(("domain.suspended", {"errors": errors}),),
                route=True, changes=_seen(seen, **{DNS_AWAY_SINCE: since}))


def dns_away(domain: Item, seen: Seen, now: float, rules: Rules) -> Step:
    """Still served during the grace period, which runs from the first time it was seen."""
    return Step(RETRY, domain["status"], "DNS points away", errors=tuple(seen.dns.errors),
                changes=_seen(seen, **{DNS_AWAY_SINCE: dns_away_since(domain) or now}))


# awaiting_traffic (pre-validated)


def traffic_arrived(domain: Item, seen: Seen, now: float, rules: Rules) -> Step | None:
    if not seen.dns.ok:
        return None
    return Step(MOVE, ACTIVE, "the traffic record points at the edge",
                webhooks=(("domain.active", {}),), route=True, changes=_seen(
                    seen, last_error=None, validation_errors=[], attempts=0,
                    next_attempt_at=now + rules.timing.recheck, traffic_elsewhere=False))


def ownership_lost(domain: Item, seen: Seen, now: float, rules: Rules) -> Step | None:
    """Off the edge, back to proving ownership (not on an inconclusive check: a server that
    did not answer proves nothing)."""
    if seen.dns.inconclusive or not {p.code for p in seen.dns.problems} & OWNERSHIP_PROBLEMS:
        return None
    return Step(RETRY, PENDING_DNS, "ownership is no longer proven",
                errors=tuple(seen.dns.errors), route=True,
                changes=_seen(seen, traffic_elsewhere=False))


def delegation_broken(domain: Item, seen: Seen, now: float, rules: Rules) -> Step | None:
    """CAA, the delegation gone, DNS down: say so and look again later."""
    if only_traffic_elsewhere(seen.dns) and seen.delegated:
        return None
    return Step(RETRY, domain["status"], "pre-validation no longer holds",
                errors=tuple(seen.dns.errors), changes=_seen(seen))


def traffic_still_elsewhere(domain: Item, seen: Seen, now: float, rules: Rules) -> Step:
    return Step(MOVE, AWAITING_TRAFFIC, "traffic still elsewhere", renew=True, changes=_seen(
        seen, last_error=None, validation_errors=seen.dns.errors, attempts=0,
        next_attempt_at=now + rules.prevalidation_recheck))


CHAINS: dict[str, tuple[Policy, ...]] = {
    PENDING_DNS: (dns_proven, prevalidated, dns_not_ready),
    ACTIVE: (dns_points_here, dns_unknown, suspended_after_grace, dns_away),
    SUSPENDED: (dns_points_here, dns_unknown, suspended_after_grace, dns_away),
    AWAITING_TRAFFIC: (traffic_arrived, ownership_lost, delegation_broken,
                       traffic_still_elsewhere),
}
"""The policies of each status whose DNS is looked at, in order."""


def decide(domain: Item, seen: Seen, now: float, rules: Rules = Rules()) -> Step:
    """The step that follows a look at ``domain``'s DNS."""
    if domain.get("held"):
        return nothing(domain, "suspended by an admin")
    if domain["status"] == AWAITING_TRAFFIC and not rules.prevalidates:
        return nothing(domain, "no DCV zone: nothing watches for the traffic to move")
    for policy in CHAINS.get(domain["status"], ()):
        step = policy(domain, seen, now, rules)
        if step is not None:
            return step
    return nothing(domain, f"DNS is not looked at in {domain['status']}")


# issuing


def orderable(domain: Item, edge_serving: bool) -> bool:
    """No order before an edge node serves: the CA would find port 80 closed, and each failed
    validation counts against its limits (5 an hour per name at Let's Encrypt). Pre-validated
    domains are validated over DNS-01 in our zone: they need no edge."""
    return edge_serving or bool(domain.get("traffic_elsewhere"))


def resumable(domain: Item, now: float, worker_id: str) -> bool:
    """An issuance whose lease ran out, or one this worker held before a crash (the certs
    part resumes the order it had in flight)."""
    return (domain.get("next_attempt_at") or 0) <= now or domain.get("lease_owner") == worker_id


def before_ordering(domain: Item, delegated: bool, now: float, rules: Rules) -> Step:
    """Order (``issuing`` doubles as a lease), unless a pre-validated domain lost its
    delegation: only HTTP-01 is left, which fails while the traffic goes elsewhere (and counts
    against the CA's failed-validation limit), so it goes back to proving its DNS instead."""
    if domain.get("traffic_elsewhere") and rules.prevalidates and not delegated:
        target = dcv_target(domain["hostname"], rules.dcv_zone)
        return Step(RETRY, PENDING_DNS, "the DNS-01 delegation is gone", errors=(
            {"code": "delegation_missing", "message": f"The CNAME _acme-challenge."
             f"{base_of(domain['hostname'])} -> {target} is gone, and your traffic record "
             "does not point at us yet."},), changes={"traffic_elsewhere": False})
    return Step(ISSUE, ISSUING, "ordering a certificate",
                changes={"next_attempt_at": now + rules.timing.issuing_lease})


def issued(domain: Item, now: float, rules: Rules) -> Step:
    """Active and routed; a pre-validated domain waits for its traffic, routed already."""
    if domain.get("traffic_elsewhere") and rules.prevalidates:
        return Step(MOVE, AWAITING_TRAFFIC, "certificate issued through the DNS-01 delegation; "
                    "waiting for the traffic record to point at us", webhooks=(
                        ("certificate.issued", {}), ("domain.awaiting_traffic", {})),
                    route=True, changes={"last_error": None, "attempts": 0,
                                         "next_attempt_at": now + rules.prevalidation_recheck})
    return Step(MOVE, ACTIVE, "certificate issued",
                webhooks=(("certificate.issued", {}), ("domain.active", {})), route=True,
                changes={"last_error": None, "validation_errors": [], "attempts": 0,
                         "next_attempt_at": now + rules.timing.recheck})


def failure(error: BaseException) -> dict[str, str]:
    """The error of a step that failed on one domain alone (the store refused its item, a
    bug), in a few words: the domain is deferred in the status the step left it in, and the
    worker's round goes on with the others."""
    text = f"{type(error).__name__}: {error}"
    return {"code": "step_failed", "message": f"internal error, retried later: {text[:200]}"}


def issue_failed(error: str, retry_after: float | None = None) -> Step:
    """Any failure: recorded, and retried from ``verified`` later."""
    return Step(RETRY, VERIFIED, "the order failed", errors=(
        {"code": "issuance_failed", "message": f"certificate: {error}"},), not_before=retry_after)


# renewal


RENEWAL_DUE = "a third of its lifetime was left (or the CA's renewal window opened)"
RENEWAL_FAILURES = "renewal_failures"
"""Renewals failed in a row. Kept apart from ``attempts``, which every recheck that finds the
DNS in place sets back to 0 right before it renews: the renewal's backoff must outlive it."""
RENEWAL_RETRY_FIRST = 600.0
RENEWAL_RETRY_MAX = 6 * 3600.0
"""A failed renewal is tried again after 10 minutes, doubled per failure in a row, at most 6
hours: the current certificate still serves for weeks, and each order counts at the CA."""


def renewed(domain: Item, why: str = RENEWAL_DUE) -> Step:
    """Renewed in place; the edge swaps the certificate in hot."""
    return Step(RECORD, domain["status"], why, what="certificate renewed",
                webhooks=(("certificate.issued", {"renewal": True}),), route=True,
                changes={RENEWAL_FAILURES: 0} if domain.get(RENEWAL_FAILURES) else {})


def renewal_failed(domain: Item, error: str, now: float,
                   retry_after: float | None = None) -> Step:
    """The current certificate is still served; retried after a backoff of its own (see
    :data:`RENEWAL_FAILURES`), and not before the CA's Retry-After, up to the backoff's most:
    the renewal waits in the domain's recheck, which must go on (a domain that moves away
    is still suspended), and one order in 6 hours costs the CA nothing."""
    failures = int(domain.get(RENEWAL_FAILURES) or 0) + 1
    wait = min(RENEWAL_RETRY_MAX, RENEWAL_RETRY_FIRST * 2 ** min(failures - 1, 16))
    return Step(RETRY, domain["status"], "the renewal failed", errors=(
        {"code": "renewal_failed", "message": f"certificate renewal: {error}"},),
        webhooks=(("certificate.renewal_failed", {"error": error}),), webhook_status=ACTIVE,
        changes={RENEWAL_FAILURES: failures},
        not_before=max(now + wait, min(retry_after or 0, now + RENEWAL_RETRY_MAX)))


# an admin's suspension


def suspended_by_admin(domain: Item) -> Step:
    """Off the edge and kept off (``held``): neither the worker nor a re-check resumes it."""
    if domain.get("held"):
        return nothing(domain, "suspended by an admin already")
    return Step(MOVE, SUSPENDED, "suspended by an admin",
                webhooks=(("domain.suspended", {}),), route=True,
                changes={"held": True, "held_from": domain["status"], "next_attempt_at": None})


def resumed_by_admin(domain: Item, now: float) -> Step:
    """Back to where it was if it had a certificate (its DNS re-checked at once), else back to
    waiting for DNS."""
    was = domain.get("held_from")
    status = was if was in (ACTIVE, SUSPENDED, AWAITING_TRAFFIC) else PENDING_DNS
    return Step(MOVE, status, "resumed by an admin",
                webhooks=(("domain.active", {}),) if status == ACTIVE else (), route=True,
                changes={"held": False, "held_from": None, "attempts": 0,
                         "next_attempt_at": now})

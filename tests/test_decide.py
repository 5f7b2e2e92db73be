"""Every transition of a custom domain's lifecycle (DESIGN.md, "Lifecycle of a custom domain"),
decided by the pure policies of domains/decide.py: a snapshot in, a step out, no server. The
end-to-end runs of the same transitions are tests/test_lifecycle.py and test_prevalidation.py."""
from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from dnsops.dnscheck import DnsCheck, Problem
from domains import decide
from domains.decide import (ISSUE, MOVE, NOTHING, RECORD, RETRY, Rules, Seen, Step, Timing)
from store import Item

NOW = 10_000_000.0
TIMING = Timing(issuing_lease=300, recheck=3600, suspend_grace=86400, give_up=7 * 86400)
PLAIN = Rules(TIMING)
"""No DCV zone: no pre-validation."""
DCV = Rules(TIMING, dcv_zone="dcv.platform.test", prevalidation_recheck=60)
SEEN = {"resolver": {"CNAME shop.example.test": ["edge.platform.test"]}}
OK = DnsCheck(True, [], SEEN)


def dns(*codes: str) -> DnsCheck:
    return DnsCheck(False, [Problem(code, f"{code} here") for code in codes], SEEN)


def domain(status: str, **fields: Any) -> Item:
    return {"hostname": "shop.example.test", "publication_id": "pub_1", "status": status,
            "claimed_at": NOW - 60, "attempts": 2, **fields}


def summary(step: Step) -> tuple[Any, ...]:
    """What a step does, without its wording: (action, status, webhooks, route, renew, then)."""
    return (step.action, step.status, tuple(event for event, _ in step.webhooks), step.route,
            step.renew, summary(step.then) if step.then else None)


AWAY = dns("cname_mismatch")
"""Ownership proven (TXT), CAA fine, only the traffic record elsewhere."""
DNS_CASES = [
    # pending_dns -> verified
    ("dns proven", domain("pending_dns"), Seen(OK), PLAIN,
     (MOVE, "verified", ("domain.verified",), False, False, None),
     {"traffic_elsewhere": False, "next_attempt_at": 0, "attempts": 0, "last_error": None}),
    ("pre-validated: delegated, only the traffic elsewhere", domain("pending_dns"),
     Seen(AWAY, delegated=True), DCV, (MOVE, "verified", ("domain.verified",), False, False,
                                       None), {"traffic_elsewhere": True}),
    ("no DCV zone: a delegation proves nothing", domain("pending_dns"),
     Seen(AWAY, delegated=True), PLAIN, (RETRY, "pending_dns", (), False, False, None), {}),
    ("not delegated: waits for DNS", domain("pending_dns"), Seen(AWAY), DCV,
     (RETRY, "pending_dns", (), False, False, None), {"dns_seen": SEEN}),
    ("ownership not proven: no pre-validation", domain("pending_dns"),
     Seen(dns("cname_mismatch", "txt_missing"), delegated=True), DCV,
     (RETRY, "pending_dns", (), False, False, None), {}),
    ("CAA forbids our CA: no pre-validation", domain("pending_dns"),
     Seen(dns("a_mismatch", "caa_forbids"), delegated=True), DCV,
     (RETRY, "pending_dns", (), False, False, None), {}),
    ("given up after give_up", domain("pending_dns", claimed_at=NOW - 7 * 86400 - 1),
     Seen(AWAY), PLAIN, (RETRY, "pending_dns", (), False, False,
                         (MOVE, "pending_dns", (), False, False, None)), {}),
    ("not given up at give_up exactly", domain("pending_dns", claimed_at=NOW - 7 * 86400),
     Seen(AWAY), PLAIN, (RETRY, "pending_dns", (), False, False, None), {}),
    # active and suspended: the recheck
    ("active, DNS still here: renew if due", domain("active"), Seen(OK), PLAIN,
     (MOVE, "active", (), False, True, None),
     {"dns_away_since": None, "failing_since": None, "next_attempt_at": NOW + 3600}),
    ("active, DNS back within the grace", domain("active", dns_away_since=NOW - 50), Seen(OK),
     PLAIN, (MOVE, "active", (), False, True, None), {"dns_away_since": None}),
    ("suspended, DNS back: routed again", domain("suspended", dns_away_since=NOW - 99999),
     Seen(OK), PLAIN, (MOVE, "active", ("domain.active",), True, False, None),
     {"dns_away_since": None}),
    ("active, DNS away: the grace starts", domain("active"), Seen(AWAY), PLAIN,
     (RETRY, "active", (), False, False, None), {"dns_away_since": NOW}),
    ("active, DNS away within the grace", domain("active", dns_away_since=NOW - 86399),
     Seen(AWAY), PLAIN, (RETRY, "active", (), False, False, None),
     {"dns_away_since": NOW - 86399}),
    ("active, DNS away for the grace: suspended",
     domain("active", dns_away_since=NOW - 86400), Seen(AWAY), PLAIN,
     (RETRY, "suspended", ("domain.suspended",), True, False, None),
     {"dns_away_since": NOW - 86400}),
    ("an item of the previous release (failing_since): suspended after its grace",
     domain("active", failing_since=NOW - 86400), Seen(AWAY), PLAIN,
     (RETRY, "suspended", ("domain.suspended",), True, False, None),
     {"dns_away_since": NOW - 86400}),
    ("an item of the previous release within its grace keeps its start",
     domain("active", failing_since=NOW - 10), Seen(AWAY), PLAIN,
     (RETRY, "active", (), False, False, None), {"dns_away_since": NOW - 10}),
    ("suspended, DNS still away: stays suspended",
     domain("suspended", dns_away_since=NOW - 99999), Seen(AWAY), PLAIN,
     (RETRY, "suspended", (), False, False, None), {}),
    ("suspended by an admin: left alone", domain("suspended", held=True), Seen(OK), PLAIN,
     (NOTHING, "suspended", (), False, False, None), {}),
    # awaiting_traffic (pre-validated)
    ("awaiting, the traffic arrived: active", domain("awaiting_traffic", traffic_elsewhere=True),
     Seen(OK), DCV, (MOVE, "active", ("domain.active",), True, False, None),
     {"traffic_elsewhere": False, "next_attempt_at": NOW + 3600}),
    ("awaiting, ownership lost: off the edge, back to pending", domain("awaiting_traffic"),
     Seen(dns("cname_mismatch", "txt_mismatch"), delegated=True), DCV,
     (RETRY, "pending_dns", (), True, False, None), {"traffic_elsewhere": False}),
    ("awaiting, delegation gone: retried", domain("awaiting_traffic"), Seen(AWAY), DCV,
     (RETRY, "awaiting_traffic", (), False, False, None), {}),
    ("awaiting, DNS down: retried", domain("awaiting_traffic"),
     Seen(dns("dns_timeout"), delegated=True), DCV,
     (RETRY, "awaiting_traffic", (), False, False, None), {}),
    ("awaiting, traffic still elsewhere: looked at soon, renew if due",
     domain("awaiting_traffic"), Seen(AWAY, delegated=True), DCV,
     (MOVE, "awaiting_traffic", (), False, True, None),
     {"next_attempt_at": NOW + 60, "last_error": None, "attempts": 0}),
    ("awaiting without a DCV zone: nothing watches it", domain("awaiting_traffic"), Seen(OK),
     PLAIN, (NOTHING, "awaiting_traffic", (), False, False, None), {}),
    ("verified: its DNS is not what moves it", domain("verified"), Seen(OK), DCV,
     (NOTHING, "verified", (), False, False, None), {}),
]


@pytest.mark.parametrize("name,item,seen,rules,expected,changes", DNS_CASES,
                         ids=[case[0] for case in DNS_CASES])
def test_decide_after_a_look_at_dns(name: str, item: Item, seen: Seen, rules: Rules,
                                    expected: tuple[Any, ...], changes: dict[str, Any]) -> None:
    step = decide.decide(item, seen, NOW, rules)
    assert summary(step) == expected
    assert {key: step.changes.get(key, "unset") for key in changes} == changes


def test_a_retry_carries_the_dns_errors_and_what_was_seen() -> None:
    step = decide.decide(domain("active", dns_away_since=NOW - 86400), Seen(AWAY), NOW, PLAIN)
    assert step.errors == ({"code": "cname_mismatch", "message": "cname_mismatch here"},)
    assert step.webhooks == (("domain.suspended", {"errors": list(step.errors)}),)
    assert step.changes["dns_seen"] == SEEN


@pytest.mark.parametrize("status,traffic_elsewhere,delegated,rules,expected", [
    ("pending_dns", False, False, DCV, False),  # DNS fine: no lookup
    ("pending_dns", True, True, DCV, True),
    ("awaiting_traffic", True, True, DCV, True),
    ("pending_dns", True, True, PLAIN, False),  # no DCV zone
    ("active", True, True, DCV, False),
    ("pending_dns", False, True, DCV, False),  # ownership not proven
])
def test_the_delegation_is_asked_only_when_it_decides(
        status: str, traffic_elsewhere: bool, delegated: bool, rules: Rules,
        expected: bool) -> None:
    check = AWAY if traffic_elsewhere else OK
    if delegated and not traffic_elsewhere:
        check = dns("txt_missing")
    assert decide.asks_delegation(domain(status), check, rules) is expected


ISSUE_CASES = [
    ("verified: order", domain("verified"), False, PLAIN,
     (ISSUE, "issuing", (), False, False, None), {"next_attempt_at": NOW + 300}),
    ("lease ran out: order again", domain("issuing"), False, PLAIN,
     (ISSUE, "issuing", (), False, False, None), {}),
    ("pre-validated, still delegated: order over DNS-01",
     domain("verified", traffic_elsewhere=True), True, DCV,
     (ISSUE, "issuing", (), False, False, None), {}),
    ("pre-validated, its lease ran out: order again",
     domain("issuing", traffic_elsewhere=True), True, DCV,
     (ISSUE, "issuing", (), False, False, None), {}),
    ("pre-validated, delegation gone: back to proving DNS",
     domain("verified", traffic_elsewhere=True), False, DCV,
     (RETRY, "pending_dns", (), False, False, None), {"traffic_elsewhere": False}),
    ("DCV zone gone since: order as any domain", domain("verified", traffic_elsewhere=True),
     False, PLAIN, (ISSUE, "issuing", (), False, False, None), {}),
]


@pytest.mark.parametrize("name,item,delegated,rules,expected,changes", ISSUE_CASES,
                         ids=[case[0] for case in ISSUE_CASES])
def test_before_ordering(name: str, item: Item, delegated: bool, rules: Rules,
                         expected: tuple[Any, ...], changes: dict[str, Any]) -> None:
    step = decide.before_ordering(item, delegated, NOW, rules)
    assert summary(step) == expected
    assert {key: step.changes.get(key, "unset") for key in changes} == changes


def test_a_lost_delegation_says_which_cname_to_put_back() -> None:
    step = decide.before_ordering(domain("verified", traffic_elsewhere=True), False, NOW, DCV)
    assert [e["code"] for e in step.errors] == ["delegation_missing"]
    assert "_acme-challenge.shop.example.test -> " in step.errors[0]["message"]
    assert "dcv.platform.test" in step.errors[0]["message"]


@pytest.mark.parametrize("item,rules,expected,next_attempt", [
    (domain("issuing"), PLAIN, (MOVE, "active", ("certificate.issued", "domain.active"),
                                True, False, None), NOW + 3600),
    (domain("issuing", traffic_elsewhere=True), DCV,
     (MOVE, "awaiting_traffic", ("certificate.issued", "domain.awaiting_traffic"), True, False,
      None), NOW + 60),
    (domain("issuing", traffic_elsewhere=True), PLAIN,
     (MOVE, "active", ("certificate.issued", "domain.active"), True, False, None), NOW + 3600),
])
def test_issued(item: Item, rules: Rules, expected: tuple[Any, ...],
                next_attempt: float) -> None:
    step = decide.issued(item, NOW, rules)
    assert summary(step) == expected
    assert step.changes["next_attempt_at"] == next_attempt and step.changes["attempts"] == 0


def test_a_failed_order_is_retried_from_verified_not_before_the_cas_retry_after() -> None:
    step = decide.issue_failed("rate limited", retry_after=NOW + 3600)
    assert summary(step) == (RETRY, "verified", (), False, False, None)
    assert step.not_before == NOW + 3600
    assert step.errors == ({"code": "issuance_failed", "message": "certificate: rate limited"},)


@pytest.mark.parametrize("item,serving,expected", [
    (domain("verified"), True, True),
    (domain("verified"), False, False),  # port 80 closed: the CA's validation would fail
    (domain("verified", traffic_elsewhere=True), False, True),  # DNS-01 needs no edge
])
def test_orders_wait_for_an_edge_that_serves(item: Item, serving: bool, expected: bool) -> None:
    assert decide.orderable(item, serving) is expected


@pytest.mark.parametrize("item,expected", [
    (domain("issuing", next_attempt_at=NOW - 1, lease_owner="other"), True),  # lease ran out
    (domain("issuing", next_attempt_at=NOW + 1, lease_owner="other"), False),
    (domain("issuing", next_attempt_at=NOW + 1, lease_owner="me"), True),  # mine, before a crash
])
def test_issuances_resumed(item: Item, expected: bool) -> None:
    assert decide.resumable(item, NOW, "me") is expected


@pytest.mark.parametrize("status", ["active", "awaiting_traffic"])
def test_renewal(status: str) -> None:
    renewed = decide.renewed(domain(status))
    assert summary(renewed) == (RECORD, status, ("certificate.issued",), True, False, None)
    assert renewed.webhooks[0][1] == {"renewal": True} and renewed.what == "certificate renewed"
    failed = decide.renewal_failed(domain(status), "CA down", NOW)
    assert summary(failed) == (RETRY, status, ("certificate.renewal_failed",), False, False,
                               None)
    assert failed.errors[0]["code"] == "renewal_failed"
    assert failed.webhook_status == "active"


def test_a_failed_renewal_backs_off_by_its_own_count_and_waits_out_retry_after() -> None:
    """The recheck before a renewal sets ``attempts`` back to 0, so a renewal's backoff counts
    its own failures in a row (reset once renewed), from minutes, and the CA's Retry-After wins
    when it is later, up to the backoff's most (the renewal waits in the DNS recheck)."""
    first = decide.renewal_failed(domain("active", attempts=0), "CA down", NOW)
    assert first.changes == {"renewal_failures": 1}
    assert first.not_before == NOW + decide.RENEWAL_RETRY_FIRST
    third = decide.renewal_failed(domain("active", attempts=0, renewal_failures=2), "x", NOW)
    assert third.changes == {"renewal_failures": 3}
    assert third.not_before == NOW + 4 * decide.RENEWAL_RETRY_FIRST
    many = decide.renewal_failed(domain("active", renewal_failures=400), "x", NOW)
    assert many.not_before == NOW + decide.RENEWAL_RETRY_MAX
    limited = decide.renewal_failed(domain("active"), "429", NOW, retry_after=NOW + 3600)
    assert limited.not_before == NOW + 3600
    banned = decide.renewal_failed(domain("active"), "429", NOW, retry_after=NOW + 30 * 86400)
    assert banned.not_before == NOW + decide.RENEWAL_RETRY_MAX, "its DNS recheck goes on"
    assert decide.renewed(domain("active", renewal_failures=3)).changes == \
        {"renewal_failures": 0}
    recheck = decide.decide(domain("active", renewal_failures=3), Seen(OK), NOW, PLAIN)
    assert "renewal_failures" not in recheck.changes, "a recheck keeps the count"


@pytest.mark.parametrize("status", ["pending_dns", "verified", "active", "awaiting_traffic",
                                    "suspended"])
def test_an_admin_suspends_any_domain_and_it_stays_off(status: str) -> None:
    step = decide.suspended_by_admin(domain(status))
    assert summary(step) == (MOVE, "suspended", ("domain.suspended",), True, False, None)
    assert step.changes == {"held": True, "held_from": status, "next_attempt_at": None}
    held = domain("suspended", held=True, held_from=status)
    assert summary(decide.suspended_by_admin(held))[0] == NOTHING
    assert summary(decide.decide(held, Seen(OK), NOW, DCV))[0] == NOTHING


@pytest.mark.parametrize("was,status,webhooks", [
    ("active", "active", ("domain.active",)),
    ("suspended", "suspended", ()),
    ("awaiting_traffic", "awaiting_traffic", ()),
    ("pending_dns", "pending_dns", ()),
    ("verified", "pending_dns", ()),  # no certificate yet: DNS proven again
    ("issuing", "pending_dns", ()),
])
def test_an_admin_resumes(was: str, status: str, webhooks: tuple[str, ...]) -> None:
    step = decide.resumed_by_admin(domain("suspended", held=True, held_from=was), NOW)
    assert summary(step) == (MOVE, status, webhooks, True, False, None)
    assert step.changes["next_attempt_at"] == NOW and step.changes["held"] is False


def test_steps_are_plain_frozen_data() -> None:
    step = decide.decide(domain("pending_dns"), Seen(OK), NOW, PLAIN)
    with pytest.raises(dataclasses.FrozenInstanceError):
        step.status = "active"  # type: ignore[misc]
    assert step == decide.decide(domain("pending_dns"), Seen(OK), NOW, PLAIN)

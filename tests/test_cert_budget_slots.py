"""Slots of our rate budget that orders take and give back: none for a profile the CA does not
offer, back to the window they were taken in, and an ARI renewal the CA says was already
replaced ordered again as a plain order (which takes one). Real Pebble, behind the ARI proxy
where the CA must answer what Pebble does not."""
from __future__ import annotations

import base64
import io
import json
from typing import Any, Iterator

import pytest
from cryptography.fernet import Fernet
from werkzeug.wrappers import Request, Response

from admin_app import create_app
from certs.issuer import IssuanceError
from certs.limits import BUDGETS, HOUR, Limits, RateBudget
from certs.orders import ORDERS, OrderJournal
from devtools.pebble import PebbleStack
from kit.vault import KeyVault
from store import Backend, Table
from tests.conftest import FakeClock, ServicesWith, on_pebble, serving
from tests.faulty_ca import FaultyCa
from tests.test_ari_faults import behind

WEEK = 7 * 24 * HOUR


class ReplacingCa(FaultyCa):
    """The CA, with two more faults: it answers a new order naming the certificate it
    replaces with RFC 9773's 409 alreadyReplaced (``already_replaced``), and it calls
    ``on_failed_answer`` before failing a challenge's answer."""

    already_replaced = False
    refused_replacing = 0
    on_failed_answer: Any = None

    def app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        body = request.get_data()
        environ["wsgi.input"] = io.BytesIO(body)  # read again by the proxying below
        payload = json.loads(body)["payload"] if body else ""
        if request.path == "/order-plz" and self.already_replaced and \
                "replaces" in json.loads(_b64(payload)):
            self.refused_replacing += 1
            problem = {"type": "urn:ietf:params:acme:error:alreadyReplaced",
                       "detail": "the certificate was already replaced"}
            return Response(json.dumps(problem), status=409,
                            content_type="application/problem+json")(environ, start_response)
        if request.path.startswith("/chalZ/") and self.fail_challenge_answers and payload \
                and self.on_failed_answer is not None:
            self.on_failed_answer()
        return super().app(environ, start_response)


def _b64(payload: str) -> bytes:
    return base64.urlsafe_b64decode(payload + "==")


@pytest.fixture
def ca(pebble: PebbleStack) -> Iterator[ReplacingCa]:
    proxy = ReplacingCa(pebble)
    yield proxy
    proxy.stop()


def counted(budgets: Table, kind: str, subject: str) -> dict[str, int]:
    """Slots counted per window key (``kind|subject|window``), windows holding none left out."""
    return {item["key"]: int(item["n"]) for item in budgets.scan(limit=200).items
            if item["key"].startswith(f"{kind}|{subject}|") and int(item["n"])}


def test_a_profile_the_ca_does_not_offer_takes_no_budget_slot(
        services_with: ServicesWith, pebble: PebbleStack) -> None:
    """The profile was checked after the budget's order slot was taken: every refusal kept one,
    so a misconfigured profile used up the account's orders for three hours."""
    services = services_with(**on_pebble(pebble), acme_orders_per_3h=1, acme_issuers=[{
        "directory_url": pebble.directory_url, "ca_bundle": str(pebble.listener_ca),
        "profile": "shortlived"}])
    for _ in range(2):
        with pytest.raises(IssuanceError, match="offers no profile 'shortlived'"):
            services.issuer.issue(["profile.example.test"])
    assert counted(services.backend.table(BUDGETS), "orders", pebble.directory_url) == {}
    assert counted(services.backend.table(BUDGETS), "certs", "example.test") == {}


def test_a_slot_given_back_after_its_window_rolled_over_goes_to_that_window(
        services_with: ServicesWith, pebble: PebbleStack, ca: ReplacingCa) -> None:
    """An order failing in the next 7-day window gave its certificate slot back to that window
    (to nobody, there), so the slot stayed taken where it was taken and the next certificate
    of the domain was refused; it goes back where it was taken."""
    clock = FakeClock((int(FakeClock().now // WEEK) + 1) * WEEK - 30)  # a window's last 30 s
    services = services_with(clock=clock, acme_certs_per_domain_7d=1, **behind(ca, pebble))
    budgets = services.backend.table(BUDGETS)
    ca.fail_challenge_answers = True
    ca.on_failed_answer = lambda: clock.advance(60)  # the order fails in the next window
    with pytest.raises(IssuanceError):
        services.issuer.issue(["late.example.test"])
    assert ca.challenge_answers_failed == 1
    assert counted(budgets, "certs", "example.test") == {}
    ca.fail_challenge_answers = False
    with serving(create_app(services), pebble.http_port):
        services.issuer.issue(["next.example.test"])
    assert counted(budgets, "certs", "example.test") == {
        f"certs|example.test|{int(clock() // WEEK)}": 1}


def test_slots_go_back_to_the_window_they_were_taken_in_or_nowhere(backend: Backend) -> None:
    now = [1_000_000 * WEEK - 10.0]
    budget = RateBudget(backend.table(BUDGETS), "acct", Limits(certs_per_domain_7d=2),
                        clock=lambda: now[0])
    budgets = backend.table(BUDGETS)
    first = budget.reserve(["a.example.com"])
    now[0] += 20  # the next window
    second = budget.reserve(["b.example.com"])
    budget.not_issued(["a.example.com"], taken_at=first)
    assert counted(budgets, "certs", "example.com") == {"certs|example.com|1000000": 1}
    budget.reserve(["c.example.com"])  # the slot a freed counts again
    now[0] += 2 * WEEK  # both windows are gone: nothing is given back to them, or to now's
    third = budget.reserve(["d.example.com"])
    budget.not_issued(["b.example.com"], taken_at=second)
    assert counted(budgets, "certs", "example.com")[f"certs|example.com|{int(now[0] // WEEK)}"] \
        == 1
    budget.not_issued(["d.example.com"], taken_at=third)
    assert f"certs|example.com|{int(now[0] // WEEK)}" not in counted(
        budgets, "certs", "example.com")


def test_an_ari_renewal_the_ca_says_was_already_replaced_is_ordered_again_plainly(
        services_with: ServicesWith, pebble: PebbleStack, ca: ReplacingCa) -> None:
    """A CA answering 409 alreadyReplaced to an order naming the certificate it replaces (it
    let another order replace that one) failed the renewal at every attempt. It orders again
    without ``replaces``; that order is no exempt renewal, so it takes a budget slot."""
    services = services_with(acme_certs_per_domain_7d=5, **behind(ca, pebble))
    budgets = services.backend.table(BUDGETS)
    with serving(create_app(services), pebble.http_port):
        services.issuer.issue(["renewed.example.test"])
        first = services.certificates.raw("renewed.example.test")["serial"]  # type: ignore
        ca.already_replaced = True
        services.issuer.issue(["renewed.example.test"])
    assert ca.refused_replacing == 1
    assert "replaces" not in ca.new_orders[-1]
    assert services.certificates.raw("renewed.example.test")["serial"] != first  # type: ignore
    assert sum(counted(budgets, "certs", "example.test").values()) == 2


def test_the_order_journal_says_when_slots_were_taken_across_releases(backend: Backend) -> None:
    """The release before reads ``reserved`` (a bool) and knows no ``reserved_at``: it still
    gives back a record of ours once; one it wrote is given back to now's windows, as it did."""
    now = [1_000_000 * WEEK + 5.0]
    journal = OrderJournal(backend.table(ORDERS), KeyVault([Fernet.generate_key().decode()]),
                           "https://ca.test/dir", clock=lambda: now[0])
    journal.begin(["ours.example.com"], b"key", b"csr", reserved_at=now[0] - 60)
    assert journal.find(["ours.example.com"])["reserved"] is True  # type: ignore[index]
    assert journal.released(["ours.example.com"]) == now[0] - 60
    assert journal.released(["ours.example.com"]) is None, "given back once"
    previous = {"key": "https://ca.test/dir|old.example.com", "key_enc": "", "csr_pem": "csr",
                "order_url": None, "reserved": True, "expires_at": now[0] + WEEK}
    backend.table(ORDERS).put(previous)
    assert journal.released(["old.example.com"]) == now[0]
    journal.begin(["free.example.com"], b"key", b"csr", reserved_at=None)
    assert journal.released(["free.example.com"]) is None

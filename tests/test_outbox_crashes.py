"""A process dies at every step of a domain's connect, activation and removal (after its write,
between each outbox entry, before the outbox is cleared, before the item is deleted); a new
process drains what it left. No timeline event, webhook or link disabling is lost, none is
applied twice with a different effect, and the webhooks reach a real receiver with stable ids.
The kill -9 version of this, against the real service, is tests/test_crash_safety.py."""
from __future__ import annotations

import collections
import dataclasses
import time
import uuid
from typing import Any, Callable

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certs.store import CertificateStore
from control.wiring import DomainEvents, Services, outbox_consumers, register_consumers
from dnsops.dnscheck import DnsCheck
from domains.lifecycle import Lifecycle
from kit.settings import Settings
from kit.x509 import self_signed
from store import Item, all_items
from tests.conftest import FakeClock
from tests.webhook_receiver import Receiver

KEY = ec.generate_private_key(ec.SECP256R1())
KEY_PEM = KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
SHORT = [f"crash{n}.link" for n in range(40)]
STEPS = {"connected": 1, "pending_dns -> verified": 1, "verified -> issuing": 1,
         "issuing -> active": 1, "removed": 1}
WEBHOOKS = {"domain.verified": 1, "certificate.issued": 1, "domain.active": 1,
            "domain.removed": 1}


class Killed(BaseException):
    """The process died here: nothing after this point runs and no handler catches it."""


class Checker:
    def check(self, hostname: str, token: str) -> DnsCheck:
        return DnsCheck(True, [], {})


class Issuer:
    """A self-signed certificate in the real certificate store (Pebble is the kill -9 test's)."""

    def __init__(self, certificates: CertificateStore) -> None:
        self._certificates = certificates

    def issue(self, hostnames: list[str]) -> None:
        self._certificates.save(hostnames, self_signed(hostnames[0], KEY)[0], KEY_PEM)

    def discard(self, hostnames: list[str], serial: str | None = None) -> None:
        stored = self._certificates.raw(hostnames[0])
        if stored is not None and serial in (None, stored["serial"]):
            self._certificates.delete(hostnames[0])

    def serial_of(self, hostname: str) -> str | None:
        return self._certificates.serial_of(hostname)

    def renewal_due(self, hostname: str) -> bool:
        return False

    def holds(self, hostname: str) -> bool:
        return self._certificates.raw(hostname) is not None


@pytest.fixture(params=["sqlite", pytest.param("dynalite", marks=pytest.mark.slow)])
def settings_with_hooks(request: pytest.FixtureRequest, settings: Settings,
                        receiver: Receiver) -> Settings:
    changed = dataclasses.replace(settings, webhook_url=receiver.url,
                                  webhook_secret="whsec-test-0123456789", short_domains=SHORT)
    if request.param == "dynalite":
        changed = dataclasses.replace(
            changed, storage_backend="dynamodb",
            dynamodb_endpoint_url=request.getfixturevalue("dynalite"),
            dynamodb_table_prefix=f"o{uuid.uuid4().hex[:8]}_")
    return changed


class Process:
    """One control process on the shared store; ``die_at`` kills it at its n-th drain step."""

    def __init__(self, settings: Settings, clock: FakeClock, die_at: int = 0) -> None:
        self.services = Services.from_settings(settings, clock=clock)
        services = self.services
        events = DomainEvents(services.webhooks, services.links, services.publisher)
        self.lifecycle = Lifecycle(services.domains, Checker(),  # type: ignore[arg-type]
                                   Issuer(services.certificates), services.publisher,
                                   events=events, clock=clock)
        assert services.custom_certificates is not None
        register_consumers(services.domains.consumers, outbox_consumers(
            services.domains, self.lifecycle, events, services.custom_certificates))
        self.steps = 0
        self._die_at = die_at
        for name in ("_apply", "_settle", "_forget"):
            setattr(services.domains.outbox, name,
                    self._mortal(getattr(services.domains.outbox, name)))

    def _mortal(self, step: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            self.steps += 1
            if self.steps == self._die_at:
                raise Killed(f"killed before drain step {self.steps}")
            return step(*args, **kwargs)
        return run

    def advance(self, hostname: str) -> bool:
        """One step of the publisher's and the worker's, as they would come; False when the
        domain is gone."""
        domains, lifecycle = self.services.domains, self.lifecycle
        domain = domains.find(hostname)
        if domain is None:
            return False
        if domain["status"] == "pending_dns":
            lifecycle.verify(domain)
        elif domain["status"] in ("verified", "issuing"):
            lifecycle.issue(domain)
        else:  # active (its link made first), or removing: the publisher's removal (again)
            if domain["status"] == "active" and not self.services.links.table.get(
                    f"{hostname}/promo"):
                self.services.links.create(hostname, "https://example.org/", "pub_1",
                                           slug="promo")
            lifecycle.remove(hostname)
        return True


def restart(settings: Settings, clock: FakeClock) -> Process:
    """A new process, once the dead one's outboxes are older than the grace (the worker drains
    only those: a live writer may still be on a younger one)."""
    clock.advance(settings.outbox_grace_seconds + 1)
    return Process(settings, clock)


def run(settings: Settings, clock: FakeClock, hostname: str, die_at: int) -> tuple[int, str]:
    """Connect, activate and remove ``hostname``, the process dying at drain step ``die_at``
    and a new one (its worker drains leftovers first) carrying on: (steps seen, claim)."""
    process = Process(settings, clock, die_at)
    claim = ""
    try:
        claim = process.services.domains.connect(hostname, "pub_1")[0]["claim"]
        while process.advance(hostname):
            pass
        return process.steps, claim
    except Killed:
        process.services.close()
    restarted = restart(settings, clock)
    try:
        restarted.services.domains.drain_outboxes()  # what every worker round does first
        if not claim:  # the publisher's connect got no answer: it asks again
            claim = restarted.services.domains.connect(hostname, "pub_1")[0]["claim"]
        while restarted.advance(hostname):
            pass
        return die_at, claim
    finally:
        restarted.services.close()


def test_a_process_killed_at_any_step_loses_nothing_and_repeats_nothing(
        settings_with_hooks: Settings, receiver: Receiver, clock: FakeClock) -> None:
    settings = settings_with_hooks
    total, claim = run(settings, clock, SHORT[0], die_at=0)
    claims = {SHORT[0]: claim}
    assert total >= 15, total
    for step in range(1, total + 1):
        claims[SHORT[step]] = run(settings, clock, SHORT[step], die_at=step)[1]
    services = Services.from_settings(settings, clock=clock)
    try:
        end = time.monotonic() + 30
        while services.webhooks.deliver_due() or services.webhooks.table.query(
                "state", "pending").items:
            assert time.monotonic() < end, "webhooks not delivered"
        for hostname, claim in claims.items():
            assert_done_once(services, hostname, claim)
        assert_webhooks_once(receiver, list(claims))
    finally:
        services.close()


def assert_done_once(services: Services, hostname: str, claim: str) -> None:
    assert services.domains.find(hostname) is None, f"{hostname} not deleted"
    events = services.domains.events.query("claim", claim, limit=100).items
    assert collections.Counter(e["what"] for e in events) == STEPS, (hostname, events)
    assert services.links.get(hostname, "promo")["disabled"] is True, hostname
    assert services.certificates.get(hostname) is None, f"{hostname} keeps its certificate"
    state = services.edge_state.load() or {"routes": []}
    assert hostname not in {r["hostname"] for r in state["routes"]}, f"{hostname} still routed"


def assert_webhooks_once(receiver: Receiver, hostnames: list[str]) -> None:
    """Each webhook is received (a repeat only with the same id and body), none made twice."""
    by_id: dict[str, Item] = {}
    for request in receiver.received():
        body = {k: v for k, v in request["body"].items() if k != "created_at"}
        assert by_id.setdefault(request["id"], body) == body, "one id, two effects"
    for hostname in hostnames:
        kinds = collections.Counter(body["type"] for body in by_id.values()
                                    if body["data"]["hostname"] == hostname)
        assert kinds == WEBHOOKS, (hostname, kinds)


def test_a_failing_consumer_leaves_its_entries_for_the_worker(
        settings: Settings, receiver: Receiver, monkeypatch: pytest.MonkeyPatch,
        clock: FakeClock) -> None:
    settings = dataclasses.replace(settings, webhook_url=receiver.url,
                                   webhook_secret="whsec-test-0123456789")
    process = Process(settings, clock)
    services = process.services
    try:
        domain, _ = services.domains.connect("fail.example.test", "pub_1")
        verified = process.lifecycle.verify(domain)

        def down(changes: object) -> None:
            raise ConnectionError("the edge state is out of reach")

        with monkeypatch.context() as patch:
            patch.setattr(services.publisher, "route_changes", down)
            process.lifecycle.issue(verified)
        left = services.domains.get("fail.example.test")
        assert left["status"] == "active" and left["outbox_state"] == "pending"
        assert [e["kind"] for e in left["outbox"]] == ["route", "webhook", "webhook"]
        assert services.domains.drain_outboxes() == 0, "not before the grace"
        clock.advance(settings.outbox_grace_seconds + 1)  # the dead writer is long gone
        assert services.domains.drain_outboxes() == 1  # the worker's next round
        assert services.domains.get("fail.example.test")["outbox"] == []
        routes = {r["hostname"]: r["publication_id"]
                  for r in (services.edge_state.load() or {"routes": []})["routes"]}
        assert routes == {"fail.example.test": "pub_1"}
        queued = services.webhooks.table.query("state", "pending").items
        assert sorted(e["type"] for e in queued) == [
            "certificate.issued", "domain.active", "domain.verified"]
        assert services.domains.drain_outboxes() == 0, "nothing left: one index query"
    finally:
        services.close()


def left_removing(settings: Settings, clock: FakeClock, hostname: str) -> None:
    """``hostname`` active for pub_1, then removed by a process killed after its first write:
    the removal's outbox left for another to drain."""
    owner = Process(settings, clock)
    activate(owner, hostname, "pub_1")
    owner.services.close()
    dying = Process(settings, clock, die_at=1)
    try:
        dying.lifecycle.remove(hostname)
    except Killed:
        dying.services.close()


def test_a_removal_left_behind_is_not_drained_into_the_domain_connected_again(
        settings_with_hooks: Settings, clock: FakeClock) -> None:
    """Two removals a dead process left undrained; the worker lists both, and while it drains
    the one it lists first, another replica finishes the other and its hostname is connected
    again by a new owner, activated, with a link. What the worker listed of it is stale:
    draining that copy would revoke the new owner's certificate and disable their link."""
    settings, hostnames = settings_with_hooks, SHORT[-2:]
    for hostname in hostnames:
        left_removing(settings, clock, hostname)
    worker, other = restart(settings, clock), Process(settings, clock)
    drain, again = worker.services.domains.outbox.drain, []

    def meanwhile(domain: Item) -> Item:
        if not again:  # the first drain: the other replica is quicker with the other one
            again.append(next(h for h in hostnames if h != domain["hostname"]))
            domains = other.services.domains
            domains.outbox.drain(domains.get(again[0]))  # its removal finished: deleted
            activate(other, again[0], "pub_2")
        return drain(domain)

    worker.services.domains.outbox.drain = meanwhile  # type: ignore[method-assign]
    try:
        drained = worker.services.domains.drain_outboxes()
        domain = other.services.domains.get(again[0])
        assert domain["publication_id"] == "pub_2" and domain["status"] == "active"
        assert other.services.certificates.get(again[0]) is not None, "its certificate stays"
        assert other.services.links.get(again[0], "pub_2")["disabled"] is False, "its link too"
        assert not {h for h in hostnames if h not in again} & {
            d["hostname"] for d in all_items(worker.services.domains.table)}, "removed"
        assert drained == 1, "only the one still left"
    finally:
        worker.services.close()
        other.services.close()


def activate(process: Process, hostname: str, publication: str) -> None:
    """Connect, verify and issue ``hostname`` for ``publication``, with a link on it."""
    domain, _ = process.services.domains.connect(hostname, publication)
    process.lifecycle.issue(process.lifecycle.verify(domain))
    process.services.links.create(hostname, "https://example.org/", publication, slug=publication)

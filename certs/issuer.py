"""ACME issuance (HTTP-01 through the edge, DNS-01 through a registrar when a solver is given)
with our own short polling and a patient badNonce retry."""
from __future__ import annotations

import datetime
import hashlib
import logging
import time
from typing import Any, Callable, Protocol

import josepy as jose
from acme import challenges, client, errors, messages
from cryptography import x509

from certs.account import AcmeAccount
from certs.ari import cert_id
from certs.challenges import ChallengeStore
from certs.errors import CertsError
from certs.keys import generate_key, key_from_pem, key_to_pem, make_csr
from certs.limits import BudgetExceeded, RateBudget
from certs.network import (ALREADY_REPLACED, RATE_LIMITED_WAIT, RateLimited, ask_limited,
                           no_order_created, offers, renewal_window)
from certs.orders import OrderJournal, fetch_order, finished_serial, new_order_replacing
from certs.store import CertificateStore, ReplacedMeanwhile
from kit.vault import KeyVault
from store import Item, Table

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.1
CESSATION_OF_OPERATION = 5
ORDER_TIMEOUT = 90.0
REVOKE_SECONDS = 10.0
"""How long a revocation waits for the CA (its other requests wait 45 s): a removal waits for
it in the API's request, and it is a courtesy (the key is destroyed either way)."""
ARI_ASK_AGAIN = datetime.timedelta(hours=6)
"""How long the CA's renewal info is kept when it gives no Retry-After (RFC 9773's default),
or when its answer made no sense."""
RENEWAL_SPREAD = 1 / 12
"""Without a CA window, a certificate renews at its own point in this part of its lifetime
before the two-thirds mark (never after it): 7.5 days of a 90-day certificate."""


def spread(serial: str) -> float:
    """A point in [0, 1) fixed by a certificate's serial: the same on every replica, ever."""
    return int.from_bytes(hashlib.sha256(serial.encode()).digest()[:8], "big") / 2 ** 64


class DnsChallengeSolver(Protocol):
    """Publishes DNS-01 TXT records (through a registrar, in practice)."""

    def covers(self, hostname: str) -> bool:
        """Whether we can create records for ``hostname``'s zone."""

    def present(self, name: str, value: str) -> None:
        """Create TXT ``name`` = ``value`` and return once the zone's servers all serve it."""

    def cleanup(self, name: str, value: str) -> None:
        """Remove that TXT value again (never raises)."""


class IssuanceError(CertsError):
    """The CA did not give us a certificate; ``hostnames`` and a reason a human can read."""

    def __init__(self, hostnames: list[str], reason: str,
                 retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.hostnames = hostnames
        self.reason = reason
        self.retry_after = retry_after
        """Epoch seconds before which trying again is pointless (a rate limit), if known."""


class AcmeIssuer:
    def __init__(self, *, directory_url: str, accounts: Table, orders: Table,
                 challenges_store: ChallengeStore,
                 certificates: CertificateStore, vault: KeyVault, ca_bundle: str = "",
                 email: str = "", key_type: str = "ec256",
                 eab: tuple[str, str] | None = None, dns01: DnsChallengeSolver | None = None,
                 budget: RateBudget | None = None, profile: str = "",
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        self.directory_url = directory_url
        self._account = AcmeAccount(directory_url, accounts, vault, ca_bundle=ca_bundle,
                                    email=email, eab=eab)
        self._challenges = challenges_store
        self._certificates = certificates
        self._key_type = key_type
        self._orders = OrderJournal(orders, vault, directory_url, clock=clock)
        self._dns01 = dns01
        self._budget = budget
        self.profile = profile
        self._sleep = sleep
        self._clock = clock

    def issue(self, hostnames: list[str]) -> str:
        """Obtain and store a certificate for ``hostnames``; returns its serial (what a
        discard of this one certificate names); IssuanceError with a reason if not."""
        try:
            if self._budget is not None:
                self._budget.check(hostnames)
            return self._issue(hostnames)
        except IssuanceError:
            raise
        except BudgetExceeded as exc:
            raise IssuanceError(hostnames, f"rate budget: {exc}", exc.retry_after) from None
        except RateLimited as exc:
            raise IssuanceError(hostnames, f"the CA rate-limits us: {exc}",
                                exc.retry_after) from None
        except messages.Error as exc:
            if exc.code == "accountDoesNotExist":
                self._account.forget()
            retry_after = self._clock() + RATE_LIMITED_WAIT if exc.code == "rateLimited" else None
            raise IssuanceError(hostnames, f"ACME: {exc}", retry_after) from None
        except errors.Error as exc:
            raise IssuanceError(hostnames, f"ACME: {exc}") from None
        except OSError as exc:
            raise IssuanceError(hostnames, f"cannot reach the CA: {exc}") from None

    def renewal_due(self, hostname: str, now: datetime.datetime | None = None) -> bool:
        """Time to renew: at the certificate's point in the CA's ARI window when it offers
        renewalInfo, else at its point in the ``RENEWAL_SPREAD`` of the lifetime before two
        thirds (certificates issued together must not all come back to the CA together).

        The CA is asked at most once per its Retry-After (six hours by default), not on every
        recheck: its answer is kept on the certificate's item, so 100,000 domains rechecked
        hourly cost the CA about 5 requests a second, not 28. The private key is not read."""
        item = self._certificates.raw(hostname)
        if item is None:
            return False
        now = now or datetime.datetime.fromtimestamp(self._clock(), datetime.timezone.utc)
        if now.timestamp() < float(item.get("ari_ask_again_at") or 0):
            renew_at = item.get("ari_renew_at")
        else:
            renew_at = self._ask_renewal_time(item, now)
        if renew_at is not None:
            return now.timestamp() >= float(renew_at)
        not_before = datetime.datetime.fromisoformat(item["not_before"])
        lifetime = datetime.datetime.fromisoformat(item["not_after"]) - not_before
        early = lifetime * RENEWAL_SPREAD * spread(item["serial"])
        return now >= not_before + lifetime * 2 / 3 - early

    def _ask_renewal_time(self, item: Item, now: datetime.datetime) -> float | None:
        """The CA's renewal time (RFC 9773's random point in its window: this certificate's
        own, so every replica and restart agrees), remembered with when to ask again; None when
        the CA has no renewal info."""
        at, wait = now.timestamp(), ARI_ASK_AGAIN.total_seconds()
        leaf = x509.load_pem_x509_certificate(item["fullchain_pem"].encode())
        if leaf.not_valid_after_utc.timestamp() <= at:
            return None  # RFC 9773: never asked about once expired (due by its lifetime)
        try:
            window = renewal_window(self._account.client(), leaf, at, wait)
        except (jose.DeserializationError, TypeError, ValueError, OverflowError, KeyError,
                AttributeError) as exc:
            # An answer RFC 9773 does not describe ({}, a window without dates) would fail the
            # same way at every recheck.
            log.warning("the CA's renewal info for %s makes no sense (%s: %s); using the "
                        "lifetime, asking again in %s", item["hostname"], type(exc).__name__,
                        exc, ARI_ASK_AGAIN)
            self._certificates.remember_renewal(item, None, at + wait)
            return None
        except RateLimited as exc:  # what we knew stands until the CA answers (a day at most)
            again = ask_limited(exc.retry_after, at)
            self._certificates.remember_renewal(item, item.get("ari_renew_at"), again)
            return item.get("ari_renew_at")
        except (errors.Error, messages.Error, OSError) as exc:
            log.info("no renewal info for %s (%s); using the lifetime", item["hostname"], exc)
            return None  # asked again at the next recheck
        if window is None:
            self._certificates.remember_renewal(item, None, at + wait)
            return None
        renew_at = window.start + (window.end - window.start) * spread(item["serial"])
        self._certificates.remember_renewal(item, renew_at, window.ask_again_at)
        return renew_at

    def reencrypt(self) -> int:
        """Re-encrypt the stored ACME account keys under the newest encryption key."""
        return self._account.reencrypt() + self._orders.reencrypt()

    @property
    def bad_nonce_retries(self) -> int:
        return self._account.bad_nonce_retries

    def discard(self, hostnames: list[str], serial: str | None = None) -> None:
        """The domain is gone: revoke its certificate (cessationOfOperation), delete the key.
        With ``serial``, only that certificate: one stored since under the name is another
        claim's (the hostname's next holder's), and stays."""
        stored = self._certificates.raw(hostnames[0])  # the key stays sealed: it is deleted
        if stored is None or (serial is not None and stored["serial"] != serial):
            return
        try:
            leaf = x509.load_pem_x509_certificate(stored["fullchain_pem"].encode())
            acme = self._account.client()
            acme.net.post(acme.directory["revokeCert"],
                          messages.Revocation(certificate=leaf, reason=CESSATION_OF_OPERATION),
                          new_nonce_url=acme.directory["newNonce"], timeout=REVOKE_SECONDS)
            log.info("certificate %s for %s revoked", stored["serial"], hostnames[0])
        except (errors.Error, messages.Error, OSError) as exc:
            # The key is destroyed below either way, so the certificate can never be used.
            log.warning("could not revoke the certificate of %s: %s", hostnames[0], exc)
        # Without a serial (a removal), whatever is stored goes, a renewal racing it too.
        self._certificates.delete(hostnames[0], stored if serial is not None else None)

    def _issue(self, hostnames: list[str]) -> str:
        acme = self._account.client()
        started_from = self._certificates.serial_of(hostnames[0])
        order, key = self._resume(acme, hostnames)
        if order is None:
            order, key = self._order(acme, hostnames)
        try:
            order = self._complete(acme, order, hostnames)
        except Exception:
            self._give_back(hostnames)
            raise
        try:
            saved = self._certificates.save(hostnames, order.fullchain_pem, key_to_pem(key),
                                            ca=self.directory_url, replaces=started_from)
        except ReplacedMeanwhile:
            log.warning("the certificate issued for %s is not stored: the hostname changed "
                        "hands during the order (the next holder's stays)", ", ".join(hostnames))
            raise
        self._orders.done(hostnames)
        log.info("certificate issued for %s", ", ".join(hostnames))
        return str(saved["serial"])

    def _order(self, acme: client.ClientV2,
               hostnames: list[str]) -> tuple[messages.OrderResource, Any]:
        """A new order with a new key; an ARI renewal the CA refuses as already replaced is
        ordered again as a plain one."""
        key = generate_key(self._key_type)
        csr = make_csr(key, hostnames)
        profile = self._profile(acme, hostnames)  # before the budget: a refusal takes no slot
        replaces = self._replaces(acme, hostnames)
        if replaces is not None:
            try:
                return self._place(acme, hostnames, key, csr, profile, replaces), key
            except messages.Error as exc:
                if not str(exc.typ).endswith(ALREADY_REPLACED):
                    raise
                # Another order replaced that certificate (a run that died, a client outside
                # us): the CA exempts no second one, so this one counts in the budget.
                log.info("the CA says the certificate of %s was already replaced; ordering "
                         "without naming it", ", ".join(hostnames))
        return self._place(acme, hostnames, key, csr, profile, None), key

    def _place(self, acme: client.ClientV2, hostnames: list[str], key: Any, csr: bytes,
               profile: str | None, replaces: str | None) -> messages.OrderResource:
        """Send the order, journaled before the CA hears of it.

        An ARI renewal (it names the certificate it replaces) is exempt from the CA's rate
        limits, so it takes nothing from our budget: a renewal wave cannot starve new domains,
        and 100,000 domains' renewals are not throttled to 2,400 a day."""
        budget = self._budget if replaces is None else None
        # Exact across replicas, before the CA counts. The journal says whether (and when) a
        # slot was taken, so a failure (of this run or of the run that resumes the order)
        # gives back only what was taken, to the window it was taken from.
        taken_at = budget.reserve(hostnames) if budget is not None else None
        self._orders.begin(hostnames, key_to_pem(key), csr, reserved_at=taken_at)
        try:
            if replaces:
                resumed = new_order_replacing(acme, hostnames, csr, replaces, profile)
                if resumed is None:
                    raise IssuanceError(hostnames, "the CA refused the renewal order")
                order = resumed
            else:
                order = acme.new_order(csr, profile=profile)
        except Exception as exc:
            if budget is not None and (taken := self._orders.released(hostnames)) is not None:
                budget.not_issued(hostnames, ordered=not no_order_created(exc), taken_at=taken)
            raise
        self._orders.ordered(hostnames, order.uri)
        return order

    def _give_back(self, hostnames: list[str]) -> None:
        """The order failed: give back the certificate slots it took, if it took any (an ARI
        renewal took none), once (a resumed order failing again gives back nothing more)."""
        if self._budget is not None and (taken := self._orders.released(hostnames)) is not None:
            self._budget.not_issued(hostnames, taken_at=taken)

    def _complete(self, acme: client.ClientV2, order: messages.OrderResource,
                  hostnames: list[str]) -> messages.OrderResource:
        """Answer the order's challenges, wait for them and finalize it."""
        cleanups: list[Callable[[], None]] = []
        try:
            for authz in order.authorizations:
                if authz.body.status != messages.STATUS_VALID:
                    self._answer(acme, authz, cleanups)
            deadline = time.monotonic() + ORDER_TIMEOUT
            for authz in order.authorizations:
                self._wait_valid(acme, authz, deadline)
            order = self._finalize(acme, order, hostnames, deadline)
        finally:
            for cleanup in cleanups:
                try:  # each one: a record left behind must not keep the others
                    cleanup()
                except Exception:
                    log.warning("a challenge of %s was not cleaned up", ", ".join(hostnames),
                                exc_info=True)
        return order

    def _replaces(self, acme: client.ClientV2, hostnames: list[str]) -> str | None:
        """The ARI certID of the certificate this order renews, when the CA speaks ARI."""
        stored = self._certificates.raw(hostnames[0])
        if stored is None or stored.get("ca", "") != self.directory_url or \
                not offers(acme.directory, "renewalInfo"):
            return None
        return cert_id(x509.load_pem_x509_certificate(stored["fullchain_pem"].encode()))

    def _resume(self, acme: client.ClientV2,
                hostnames: list[str]) -> tuple[messages.OrderResource | None, Any]:
        """The order a crashed run left in flight, with its key; (None, None) if there is none."""
        record = self._orders.find(hostnames)
        if record is None or not record.get("order_url"):
            return None, None
        order = fetch_order(acme, record)
        stored = self._certificates.raw(hostnames[0])
        # A run that died between storing the certificate and closing the journal left no
        # order to resume: a renewal would store the old certificate again.
        if order is None or (stored is not None and
                             finished_serial(acme, order) == stored.get("serial")):
            return None, None
        log.info("resuming the order for %s left by an interrupted run", ", ".join(hostnames))
        return order, key_from_pem(self._orders.key_pem(record))

    def _profile(self, acme: client.ClientV2, hostnames: list[str]) -> str | None:
        """The configured certificate profile, if the CA offers it (refused otherwise)."""
        if not self.profile:
            return None
        meta = acme.directory.meta if offers(acme.directory, "meta") else None
        offered = getattr(meta, "profiles", None) or {}
        if self.profile not in offered:
            raise IssuanceError(hostnames, f"the CA offers no profile {self.profile!r} "
                                f"(it offers: {', '.join(offered) or 'none'})")
        return self.profile

    def _answer(self, acme: client.ClientV2, authz: messages.AuthorizationResource,
                cleanups: list[Callable[[], None]]) -> None:
        """Answer one authorization; how to clean up after it goes in ``cleanups`` before
        anything is published, so a failure midway (the CA refuses the answer, the record
        never propagates) leaves no TXT record or token behind.

        DNS-01 through the registrar when one covers the name (needed for wildcards, and it
        works before any traffic reaches us), else HTTP-01 from the challenge table.
        """
        identifier = authz.body.identifier.value
        offered = {type(c.chall): c for c in authz.body.challenges}
        dns01 = offered.get(challenges.DNS01)
        solver = self._dns01
        if dns01 is not None and solver is not None and solver.covers(identifier):
            response, validation = dns01.response_and_validation(acme.net.key)
            name = dns01.chall.validation_domain_name(identifier)
            cleanups.append(lambda: solver.cleanup(name, validation))
            solver.present(name, validation)
            if dns01.status == messages.STATUS_PENDING:  # a resumed order may have answered
                acme.answer_challenge(dns01, response)
            return
        http01 = offered.get(challenges.HTTP01)
        if http01 is None:
            raise IssuanceError([identifier], "no challenge we can answer (http-01 needs a "
                                "non-wildcard name; dns-01 needs a registrar for its zone)")
        response, validation = http01.response_and_validation(acme.net.key)
        token = str(http01.chall.encode("token"))
        cleanups.append(lambda: self._challenges.remove(token))
        self._challenges.add(token, validation)
        if http01.status == messages.STATUS_PENDING:  # a resumed order may have answered
            acme.answer_challenge(http01, response)

    def _wait_valid(self, acme: client.ClientV2, authz: messages.AuthorizationResource,
                    deadline: float) -> None:
        while time.monotonic() < deadline:
            authz, _ = acme.poll(authz)
            status = authz.body.status
            if status == messages.STATUS_VALID:
                return
            if status not in (messages.STATUS_PENDING, messages.STATUS_PROCESSING):
                errors_seen = [str(c.error) for c in authz.body.challenges if c.error]
                if self._budget is not None:
                    self._budget.failed_validation([authz.body.identifier.value])
                detail = "; ".join(errors_seen) or "no detail"
                raise IssuanceError([authz.body.identifier.value],
                                    f"validation {getattr(status, 'name', status)}: {detail}")
            self._sleep(POLL_INTERVAL)
        raise IssuanceError([authz.body.identifier.value], "validation timed out")

    def _finalize(self, acme: client.ClientV2, order: messages.OrderResource,
                  hostnames: list[str], deadline: float) -> messages.OrderResource:
        if order.body.status in (messages.STATUS_PENDING, messages.STATUS_READY):
            order = acme.begin_finalization(order)
        while time.monotonic() < deadline:
            body = order.body
            if body.status == messages.STATUS_VALID and body.certificate:
                chain = acme.net.post(body.certificate, None,
                                      new_nonce_url=acme.directory["newNonce"])
                return order.update(fullchain_pem=chain.text)
            if body.status == messages.STATUS_INVALID:
                raise IssuanceError(hostnames, f"order invalid: {body.error}")
            self._sleep(POLL_INTERVAL)
            response = acme.net.post(order.uri, None, new_nonce_url=acme.directory["newNonce"])
            order = order.update(body=messages.Order.from_json(response.json()))
        raise IssuanceError(hostnames, "finalization timed out")

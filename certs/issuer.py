"""ACME issuance (HTTP-01 through the edge, DNS-01 through a registrar when a solver is given)
with our own short polling and a patient badNonce retry."""
from __future__ import annotations

import datetime
import logging
import time
from typing import Any, Callable, Protocol

import josepy as jose
from acme import challenges, client, errors, messages
from cryptography import x509

from certs.account import AcmeAccount
from certs.ari import NewOrderReplacing, cert_id
from certs.challenges import ChallengeStore
from certs.errors import CertsError
from certs.keys import generate_key, key_from_pem, key_to_pem, make_csr
from certs.limits import BudgetExceeded, RateBudget
from certs.network import RATE_LIMITED_WAIT, RateLimited, no_order_created
from certs.orders import OrderJournal, fetch_order
from certs.store import CertificateStore
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
        """Time to renew: inside the CA's ARI window when it offers renewalInfo, else once a
        third of the lifetime is left.

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
        not_after = datetime.datetime.fromisoformat(item["not_after"])
        return now >= not_before + (not_after - not_before) * 2 / 3

    def _ask_renewal_time(self, item: Item, now: datetime.datetime) -> float | None:
        """The CA's suggested renewal time (a random point in its window), remembered with
        when to ask again; None when the CA has no renewal info."""
        suggested, ask_again = None, now + ARI_ASK_AGAIN
        try:
            acme = self._account.client()
            if not _offers(acme.directory, "renewalInfo"):
                self._certificates.remember_renewal(item, None, ask_again.timestamp())
                return None
            suggested, ask_again = acme.renewal_time(item["fullchain_pem"].encode())
            renew_at = suggested.astimezone(datetime.timezone.utc).timestamp() \
                if suggested else None
            # The library's "ask again" time is naive local time; astimezone() reads it so.
            ask_again_at = ask_again.astimezone().timestamp()
        except (jose.DeserializationError, TypeError, ValueError, OverflowError, KeyError,
                AttributeError) as exc:
            # An answer RFC 9773 does not describe ({}, a window without dates, a Retry-After
            # past the calendar) would fail the same way at every recheck.
            log.warning("the CA's renewal info for %s makes no sense (%s: %s); using the "
                        "lifetime, asking again in %s", item["hostname"], type(exc).__name__,
                        exc, ARI_ASK_AGAIN)
            self._certificates.remember_renewal(item, None, (now + ARI_ASK_AGAIN).timestamp())
            return None
        except (errors.Error, messages.Error, OSError) as exc:
            log.info("no renewal info for %s (%s); using the lifetime", item["hostname"], exc)
            return None  # asked again at the next recheck
        self._certificates.remember_renewal(item, renew_at, ask_again_at)
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
        order, key = self._resume(acme, hostnames)
        if order is None:
            order, key = self._order(acme, hostnames)
        try:
            order = self._complete(acme, order, hostnames)
        except Exception:
            self._give_back(hostnames)
            raise
        saved = self._certificates.save(hostnames, order.fullchain_pem, key_to_pem(key),
                                        ca=self.directory_url)
        self._orders.done(hostnames)
        log.info("certificate issued for %s", ", ".join(hostnames))
        return str(saved["serial"])

    def _order(self, acme: client.ClientV2,
               hostnames: list[str]) -> tuple[messages.OrderResource, Any]:
        """A new order with a new key, journaled before the CA hears of it."""
        key = generate_key(self._key_type)
        csr = make_csr(key, hostnames)
        replaces = self._replaces(acme, hostnames)
        # An ARI renewal (it names the certificate it replaces) is exempt from the CA's
        # rate limits, so it takes nothing from ours: a renewal wave cannot starve new
        # domains, and 100,000 domains' renewals are not throttled to 2,400 a day.
        budget = self._budget if replaces is None else None
        if budget is not None:
            budget.reserve(hostnames)  # exact across replicas, before the CA counts
        # The journal says whether a slot was taken, so a failure (of this run or of the run
        # that resumes the order) gives back only what was taken.
        self._orders.begin(hostnames, key_to_pem(key), csr, reserved=budget is not None)
        try:
            if replaces:
                order = self._new_order_replacing(acme, hostnames, csr, replaces)
            else:
                order = acme.new_order(csr, profile=self._profile(acme, hostnames))
        except Exception as exc:
            if budget is not None and self._orders.released(hostnames):
                budget.not_issued(hostnames, ordered=not no_order_created(exc))
            raise
        self._orders.ordered(hostnames, order.uri)
        return order, key

    def _give_back(self, hostnames: list[str]) -> None:
        """The order failed: give back the certificate slots it took, if it took any (an ARI
        renewal took none), once (a resumed order failing again gives back nothing more)."""
        if self._budget is not None and self._orders.released(hostnames):
            self._budget.not_issued(hostnames)

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
                not _offers(acme.directory, "renewalInfo"):
            return None
        return cert_id(x509.load_pem_x509_certificate(stored["fullchain_pem"].encode()))

    def _new_order_replacing(self, acme: client.ClientV2, hostnames: list[str], csr: bytes,
                             replaces: str) -> messages.OrderResource:
        identifiers = [messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=name)
                       for name in hostnames]
        profile = self._profile(acme, hostnames)
        order = NewOrderReplacing(identifiers=identifiers, replaces=replaces,
                                  **({"profile": profile} if profile else {}))
        response = acme.net.post(acme.directory["newOrder"], order,
                                 new_nonce_url=acme.directory["newNonce"])
        resumed = fetch_order(acme, {"order_url": response.headers["Location"],
                                     "csr_pem": csr.decode()})
        if resumed is None:
            raise IssuanceError(hostnames, "the CA refused the renewal order")
        return resumed

    def _resume(self, acme: client.ClientV2,
                hostnames: list[str]) -> tuple[messages.OrderResource | None, Any]:
        """The order a crashed run left in flight, with its key; (None, None) if there is none."""
        record = self._orders.find(hostnames)
        if record is None or not record.get("order_url"):
            return None, None
        order = fetch_order(acme, record)
        if order is None or self._stored_already(acme, order, hostnames):
            return None, None
        log.info("resuming the order for %s left by an interrupted run", ", ".join(hostnames))
        return order, key_from_pem(self._orders.key_pem(record))

    def _stored_already(self, acme: client.ClientV2, order: messages.OrderResource,
                        hostnames: list[str]) -> bool:
        """Whether ``order`` is finished and its certificate is the one stored: a run died
        between storing it and closing the journal, so it is no order to resume (a renewal
        would store the old certificate again)."""
        stored = self._certificates.raw(hostnames[0])
        if stored is None or order.body.status != messages.STATUS_VALID \
                or not order.body.certificate:
            return False
        chain = acme.net.post(order.body.certificate, None,
                              new_nonce_url=acme.directory["newNonce"])
        leaf = x509.load_pem_x509_certificate(chain.text.encode())
        return format(leaf.serial_number, "x") == stored.get("serial")

    def _profile(self, acme: client.ClientV2, hostnames: list[str]) -> str | None:
        """The configured certificate profile, if the CA offers it (refused otherwise)."""
        if not self.profile:
            return None
        meta = acme.directory.meta if _offers(acme.directory, "meta") else None
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


def _offers(directory: messages.Directory, resource: str) -> bool:
    try:
        directory[resource]
    except KeyError:
        return False
    return True

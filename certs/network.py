"""The ACME client's network, hardened: badNonce retried beyond the library's single retry,
a 429's Retry-After kept (the library drops it), and Retry-After read as UTC wherever the
host's clock is set (the library reads an HTTP date as local time)."""
from __future__ import annotations

import calendar
import dataclasses
import email.utils
import time
from typing import Any

import requests
import urllib3
from acme import client, errors, messages
from cryptography import x509

from certs.ari import cert_id
from certs.errors import CertsError

BAD_NONCE_ATTEMPTS = 5  # each attempt is the library's post, which itself retries once
RATE_LIMITED_WAIT = 3600.0  # when a 429 carries no Retry-After: LE's shortest window
ALREADY_REPLACED = ":alreadyReplaced"
"""RFC 9773's problem type (after ``urn:ietf:params:acme:error``) for a new order naming a
certificate that another order already replaced."""
ARI_ASK_LIMITS = (60.0, 86400.0)
"""RFC 9773 (4.3.3): a renewalInfo Retry-After under a minute counts as a minute, one over a
day as a day (a CA's typo must not silence it for years, nor make us ask every second)."""


class RateLimited(CertsError):
    """The CA answered 429; ``retry_after`` is epoch seconds from its Retry-After header."""

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


def retry_after(header: str | None, now: float, default: float) -> float:
    """Epoch seconds from a Retry-After header (delay seconds or an HTTP date), or ``now +
    default`` when there is none or it cannot be read."""
    value = (header or "").strip()
    if value.isdigit():
        return now + int(value)
    parsed = email.utils.parsedate_tz(value) if value else None
    if parsed is None:
        return now + default
    # An HTTP date is GMT (RFC 9110, 5.6.7); its asctime form and "-0000" name no zone, which
    # parsedate_tz gives as 0. parsedate_to_datetime and mktime_tz read those as local time.
    return float(calendar.timegm(parsed[:6] + (0, 0, 0)) - (parsed[9] or 0))


def _problem_type(response: Any) -> str:
    try:
        return str(response.json().get("type", ""))
    except (ValueError, AttributeError):
        return ""


class PatientNetwork(client.ClientNetwork):
    """Retries badNonce more than the library's single retry (Pebble rejects 5% on purpose)."""

    retries = 0
    """How often a badNonce got past the library's own retry and we retried again."""

    @classmethod
    def _check_response(cls, response: Any, content_type: str | None = None) -> Any:
        # The library turns a 429 into an error without its Retry-After: keep it.
        if response.status_code == 429:
            try:
                detail = str(response.json().get("detail", "rate limited"))
            except ValueError:
                detail = "rate limited"
            raise RateLimited(detail, retry_after(response.headers.get("Retry-After"),
                                                  time.time(), RATE_LIMITED_WAIT))
        # The library makes every 409 a ConflictError and drops its problem: RFC 9773's
        # alreadyReplaced must reach the issuer, which then orders without ``replaces``.
        if response.status_code == 409 and _problem_type(response).endswith(ALREADY_REPLACED):
            raise messages.Error.from_json(response.json())
        return super()._check_response(response, content_type=content_type)

    def post(self, *args: Any, **kwargs: Any) -> Any:
        for attempt in range(BAD_NONCE_ATTEMPTS):
            try:
                return super().post(*args, **kwargs)
            except messages.Error as error:
                if error.code != "badNonce" or attempt == BAD_NONCE_ATTEMPTS - 1:
                    raise
            except errors.BadNonce:
                if attempt == BAD_NONCE_ATTEMPTS - 1:
                    raise
            self.retries += 1
        raise AssertionError("unreachable")


def no_order_created(exc: BaseException) -> bool:
    """Whether a failed newOrder surely created no order at the CA: it answered with an error,
    or could not be reached at all. Then the order slot of the budget is given back (the CA
    counts the orders it created): else a CA outage would use up the budget for hours."""
    if isinstance(exc, (messages.Error, RateLimited)):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError):
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        return isinstance(reason, urllib3.exceptions.NewConnectionError)
    return False


@dataclasses.dataclass(frozen=True)
class RenewalWindow:
    """The CA's suggested window for renewing a certificate, and when to ask it again (epoch
    seconds)."""
    start: float
    end: float
    ask_again_at: float


def renewal_window(acme: client.ClientV2, cert: x509.Certificate, now: float,
                   default_wait: float) -> RenewalWindow | None:
    """What the CA's renewalInfo says of ``cert`` (None: it offers no renewalInfo).

    Not the library's ``renewal_time``: it picks a new random point at every call (replicas
    and restarts disagree) and reads an HTTP-date Retry-After as local time. An answer RFC
    9773 does not describe raises ValueError, TypeError, AttributeError or josepy's
    DeserializationError."""
    if not offers(acme.directory, "renewalInfo"):
        return None
    response = acme.net.get(f"{acme.directory['renewalInfo']}/{cert_id(cert)}",
                            content_type="application/json")
    window = messages.RenewalInfo.from_json(response.json()).suggested_window
    start, end = window.start.timestamp(), window.end.timestamp()
    if end < start:
        raise ValueError("the suggested window ends before it starts")
    ask_again = retry_after(response.headers.get("Retry-After"), now, default_wait)
    return RenewalWindow(start, end, ask_limited(ask_again, now))


def ask_limited(when: float, now: float) -> float:
    """When to ask for renewalInfo again, ``when`` held within ``ARI_ASK_LIMITS`` of now."""
    low, high = ARI_ASK_LIMITS
    return min(max(when, now + low), now + high)


def offers(directory: messages.Directory, resource: str) -> bool:
    """Whether the CA's directory names ``resource`` (renewalInfo, meta...)."""
    try:
        directory[resource]
    except KeyError:
        return False
    return True

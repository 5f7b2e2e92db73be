"""The ACME client's network, hardened: badNonce retried beyond the library's single retry,
and a 429's Retry-After kept (the library drops it)."""
from __future__ import annotations

import email.utils
import time
from typing import Any

import requests
import urllib3
from acme import client, errors, messages

from certs.errors import CertsError

BAD_NONCE_ATTEMPTS = 5  # each attempt is the library's post, which itself retries once
RATE_LIMITED_WAIT = 3600.0  # when a 429 carries no Retry-After: LE's shortest window


class RateLimited(CertsError):
    """The CA answered 429; ``retry_after`` is epoch seconds from its Retry-After header."""

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


def _retry_after(header: str | None, default: float) -> float:
    now = time.time()
    if not header:
        return now + default
    if header.strip().isdigit():
        return now + int(header.strip())
    try:
        return email.utils.parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError):
        return now + default


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
            raise RateLimited(detail, _retry_after(response.headers.get("Retry-After"),
                                                   RATE_LIMITED_WAIT))
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

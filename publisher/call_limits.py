"""How often a publication may make us ask DNS for it: a DNS check now, a DNS report, a takeover
request or its verification each make the control service query authoritative servers (and a
check that passes may start an ACME order), as fast as a caller asks. So each publication has a
budget of such calls a minute; past it, the API answers 429 with Retry-After and a sentence.

The count is the login limiter's store pattern (admin/accounts.py: an expiring item a key and
window, its count checked in the same conditional step that adds to it), made cheaper: an atomic
counter with a ceiling on an item of the publication's current window, so an allowed call costs
one store request whatever the number of callers racing, and a refused one two. The window's
item expires with it (the server's TTL, or the retention sweep)."""
from __future__ import annotations

import math
import time
from typing import Callable

from flask import Flask, Response
from flask.blueprints import BlueprintSetupState

from control.wiring import Services
from domains.errors import DomainError
from kit.web import api_error, find, provide, provided
from store import ABSENT, ConflictError, Table, TableSpec

PUBLISHER_CALLS = TableSpec("publisher_calls", key="key", expiring=True)
"""One item per (publication, window): how many calls that asked DNS it made in the window."""
CALLS = "calls"
DNS_CALLS_PER_MINUTE = 30
"""The default (``publisher_dns_calls_per_minute``): far more than a person pressing "check" or
following a takeover makes; a program looping on the API waits."""


class TooManyCalls(DomainError):
    status = 429
    code = "too_many_requests"

    def __init__(self, publication_id: str, limit: int, window: float,
                 retry_after: float) -> None:
        super().__init__(f"publication {publication_id} made {limit} DNS checks and takeover "
                         f"calls within {window:g} seconds, the most we allow; try again in "
                         f"{math.ceil(retry_after)} seconds")
        self.publication_id = publication_id
        self.retry_after = retry_after


class CallLimiter:
    """At most ``limit`` calls per ``window`` seconds for each name (a publication id), counted
    in fixed windows of the clock."""

    def __init__(self, table: Table, limit: int = DNS_CALLS_PER_MINUTE, window: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.table = table
        self.limit = limit
        self.window = window
        self._clock = clock

    def take(self, name: str) -> float:
        """Count one call of ``name``: 0 when it may go on, else the seconds until it may (and
        nothing is counted). One store request when its window's item exists and has room."""
        now = self._clock()
        start = now - now % self.window
        key, ends = f"{name} {start:.0f}", start + self.window
        for _ in range(2):
            if self.table.increment(key, CALLS, 1, existing_only=True,
                                    at_most=self.limit) is not None:
                return 0.0
            if self.table.get(key) is not None:  # at the limit
                return max(ends - now, 1e-3)
            try:  # the window's first call: its item, then its count as above. It is kept a
                # window longer than it counts: a store that judges expiry by its own clock, a
                # little ahead of ours, must not drop the count before the window ends.
                self.table.put({"key": key, "expires_at": ends + self.window},
                               expected_version=ABSENT)
            except ConflictError:
                pass  # another call opened it at the same moment
        # Only a store whose items vanish at once (a clock far behind the store's) gets here:
        # let the call go rather than refuse every call.
        return 0.0

    def check(self, publication_id: str) -> None:
        """TooManyCalls (429) when ``publication_id`` has no call left in this window."""
        wait = self.take(publication_id)
        if wait > 0:
            raise TooManyCalls(publication_id, self.limit, self.window, wait)


def install(state: BlueprintSetupState) -> None:
    """A blueprint's ``record_once``: give the app its limiter, on the app's store and clock,
    once whichever blueprint that counts calls is registered first."""
    app = state.app
    assert isinstance(app, Flask)
    try:
        provided(app, CallLimiter)
        return
    except LookupError:
        pass
    services = provided(app, Services)
    table = services.backend.table(PUBLISHER_CALLS)
    sweeper = services.sweeper
    if sweeper is not None and PUBLISHER_CALLS.name not in {t.spec.name for t in sweeper.tables}:
        sweeper.add(table)  # once, however many apps are made on these services
    provide(app, CallLimiter(table, services.settings.publisher_dns_calls_per_minute,
                             clock=services.clock))


def count_call(publication_id: str) -> None:
    """In a request: count a call that asks DNS for ``publication_id`` (TooManyCalls past its
    budget). An app made without the publisher API's limiter counts nothing."""
    limiter = find(CallLimiter)
    if limiter is not None:
        limiter.check(publication_id)


def too_many(exc: TooManyCalls) -> tuple[Response, int, dict[str, str]]:
    response, status = api_error(str(exc), exc.status, exc.code)
    return response, status, {"Retry-After": str(math.ceil(exc.retry_after))}

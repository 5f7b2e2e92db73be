"""Time as the product tells it: seconds since the epoch from one injectable clock, and the
ISO form the API and pages show."""
from __future__ import annotations

import datetime

LAST_TIME = 253402300799.0
"""9999-12-31T23:59:59Z: the last second ISO 8601's four-digit year can write."""


def iso(ts: float) -> str:
    """``ts`` in ISO 8601 (UTC, to the second); a later time than :data:`LAST_TIME` (a client
    may store any number) is written as that one."""
    return datetime.datetime.fromtimestamp(min(ts, LAST_TIME), datetime.timezone.utc
                                           ).isoformat(timespec="seconds")

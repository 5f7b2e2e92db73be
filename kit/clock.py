"""Time as the product tells it: seconds since the epoch from one injectable clock, and the
ISO form the API and pages show."""
from __future__ import annotations

import datetime


def iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(timespec="seconds")

"""Retry delays: exponential, capped, and jittered so that many failures at one moment (a CA
outage, a webhook receiver restarting) do not all come back at the same second."""
from __future__ import annotations

import random


def jittered_backoff(attempts: int, base: float, cap: float) -> float:
    """Seconds to wait after the ``attempts``-th failure (1 for the first): ``base`` doubled per
    attempt, at most ``cap``, then scaled by a random factor between 0.5 and 1."""
    return min(cap, base * 2 ** (attempts - 1)) * random.uniform(0.5, 1.0)

"""Retry delays: exponential, capped, and jittered so that many failures at one moment (a CA
outage, a webhook receiver restarting) do not all come back at the same second."""
from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def jittered_backoff(attempts: int, base: float, cap: float) -> float:
    """Seconds to wait after the ``attempts``-th failure (1 for the first): ``base`` doubled per
    attempt, at most ``cap``, then scaled by a random factor between 0.5 and 1."""
    return min(cap, base * 2 ** (attempts - 1)) * random.uniform(0.5, 1.0)


def until_it_answers(start: Callable[[], T], stop: threading.Event,
                     away: type[Exception] | tuple[type[Exception], ...],
                     logger: logging.Logger = log) -> T | None:
    """``start()``, again after a jittered wait (1 s doubling, at most 30 s) while it raises
    ``away`` (the store does not answer); saying so once, and once more when it answers. A
    process started during an outage waits for it rather than exiting. None if stopped first.
    ``start`` closes what it opened before it raises."""
    failures = 0
    while not stop.is_set():
        try:
            started = start()
        except away as exc:
            failures += 1
            if failures == 1:
                logger.error("the store does not answer (%s); waiting for it", exc)
            stop.wait(jittered_backoff(failures, 1.0, 30.0))
            continue
        if failures:
            logger.warning("the store answers; starting")
        return started
    return None


def sync_rounds(sync: Callable[[], bool], stop: threading.Event, interval: float, watch: float,
                what: str, cap: float) -> None:
    """An agent's loop: ``sync`` until ``stop``; after a failure wait longer each time
    (jittered, at most ``cap``) and say so once, not every round.

    Watching (``watch`` > 0), a round that applied a change, or whose long poll waited, goes
    straight back to the long poll: a pause would hold the next change (a certificate upload,
    say) up to ``interval``. The long poll paces the rounds (it answers when the state moves,
    or after ``watch``); a round that came back early for another reason (a server that does
    not wait) still pauses."""
    failures = 0
    while not stop.is_set():
        applied, started = False, time.monotonic()
        try:
            applied = sync()
            if failures:
                log.warning("%s sync works again after %d failed rounds", what, failures)
            failures = 0
        except Exception as exc:  # keep serving the last good state whatever happens
            failures += 1
            if failures == 1:
                log.warning("%s sync failed (retrying with backoff): %s", what, exc)
        if stop.is_set():
            break
        if failures:
            stop.wait(jittered_backoff(failures, interval, cap))
        elif not (watch and (applied or time.monotonic() - started >= watch / 2)):
            stop.wait(interval)

"""The links' change counter and its ring of slots: how a link change reaches the caches of
the redirect processes (shortlinks/resolver.py) without them reading every link."""
from __future__ import annotations

from store import ABSENT, BATCH_GET, ConflictError, Table, TableSpec

LINK_CHANGES = TableSpec("short_link_changes", key="name")
"""The item ``generation``, whose counter ``n`` moves on every change to any link, and a ring of
the last ``CHANGE_RING`` changes, ``change/<n % CHANGE_RING>`` = ``{"n": n, "link": key}``:
resolvers in other processes check the counter about once a second and drop the links the
slots name, or all they cached when a slot does not hold the change they expect. A change of
up to ``MANY_LINKS`` links at once (a short domain's, removed) names them in ``links``, its
``link`` being ``ANY_LINK``, which the release before reads as "drop everything"."""
GENERATION = "generation"
CHANGE_RING = 1024
ANY_LINK = "*"
"""A slot's ``link`` for a change of many links at once (a domain's links disabled)."""
MANY_LINKS = 100
"""The most links one slot names (``links``): past it a change drops every cached link."""


def change_slot(n: int) -> str:
    """The ``short_link_changes`` item that names the link change ``n`` of the counter."""
    return f"change/{n % CHANGE_RING}"


def after_restore(changes: Table, before: int) -> None:
    """Move the change counter past the one a restore put back, and past ``before`` (the
    counter the store had), by more than a resolver follows: the restored counter may repeat
    values the resolvers saw, and its slots would name other changes. They drop everything."""
    record_change(changes, ANY_LINK, max(before - generation(changes), 0) + BATCH_GET + 1)


def open_counter(changes: Table) -> None:
    """Make the change counter's item if there is none yet (another process may make it too)."""
    if changes.get(GENERATION) is None:
        try:
            changes.put({"name": GENERATION}, expected_version=ABSENT)
        except ConflictError:
            pass  # another process made it first


def record_change(changes: Table, key: str | list[str], by: int = 1) -> None:
    """Move the change counter on ``by``, then name the link ``key`` (``ANY_LINK``: many; a
    list: those links, up to ``MANY_LINKS``) in the slot of the counter's new value. A crash
    between the two leaves a slot naming an older change, which makes resolvers drop
    everything, as a change of the release before does (it moves the counter only)."""
    n = int(changes.increment(GENERATION, "n", by) or 0)
    slot = {"link": key} if isinstance(key, str) else {"link": ANY_LINK, "links": key} \
        if len(key) <= MANY_LINKS else {"link": ANY_LINK}
    changes.put({"name": change_slot(n), "n": n, **slot})


def generation(changes: Table) -> int:
    """The links' change counter."""
    return int((changes.get(GENERATION) or {}).get("n") or 0)

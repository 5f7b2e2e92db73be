"""What the edge does for a domain besides routing it to its publication: redirect it to
another of the publication's domains, send it to an origin pool, pass metadata headers.

A domain's item keeps them as ``redirect_to``/``redirect_status_code``, ``origin_pool`` and
``metadata``; its route carries them to the edge as extras (``kit/route_extras.py``)."""
from __future__ import annotations

from typing import Any, Callable

from domains.repository import ROUTED
from kit import route_extras
from store import Item

RouteValue = str | tuple[str, str]
"""A route as the domains part publishes it: the publication id, or (publication id, extras)
when the domain has extras."""
EXTRA_FIELDS = ("redirect_to", "redirect_status_code", "origin_pool", "metadata")
ROUTE_WRITES = 3
"""How many times ``follow`` writes routes that changed again under it before it gives up."""
Routes = dict[str, RouteValue | None]


def route_value(domain: Item, target_routed: bool = True) -> RouteValue:
    """The route of an active ``domain``: its redirect only while the edge routes the target
    (else the domain is served, not sent to a host that leads nowhere). The control service
    decides this, not the node: with shards, the target may be held by another shard."""
    redirect_to = domain.get("redirect_to") if target_routed else None
    extras = route_extras.encode(redirect_to, domain.get("redirect_status_code"),
                                 domain.get("origin_pool"), domain.get("metadata"))
    return (str(domain["publication_id"]), extras) if extras else str(domain["publication_id"])


def routable(domain: Item) -> tuple[str | None, str, RouteValue, RouteValue]:
    """What a reconciliation keeps of a domain to route it: its redirect target, its
    publication, its route while the target is routed (and the same publication's), and
    while it is not."""
    alone = route_value(domain, target_routed=False)
    target = domain.get("redirect_to")
    return target, str(domain["publication_id"]), (route_value(domain) if target else alone), \
        alone


def extras_view(domain: Item) -> dict[str, Any]:
    """The extras as the API shows them (none of them secret)."""
    return {"redirect_to": domain.get("redirect_to"),
            "redirect_status_code": domain.get("redirect_status_code")
            if domain.get("redirect_to") else None,
            "origin_pool": domain.get("origin_pool"),
            "metadata": domain.get("metadata") or {}}


def follow(hostname: str, domain: Item | None, publication: str | None, sources: list[str],
           find: Callable[[str], Item | None], write: Callable[[Routes], object]) -> None:
    """Write the route of ``hostname`` as the domain (``domain``, as read) is now: routed while
    active, off the edge otherwise, whatever the change that asked saw, so a change handled
    late cannot put back a stale route. So are the ``sources`` that redirect to it (their
    redirect only while it is routed).

    The domains are read again after the write, and the routes written again until they
    hold: a change handled beside this one (a pair's two domains going active at once) may
    have changed a domain between the reads and the write, and written its routes first. Then
    this write was stale, and the reads after it see the change (an outbox's race, seen in
    CI). A source written before that no longer redirects here is written as it now is."""
    written: Routes = {}
    for round_ in range(ROUTE_WRITES):
        active = domain is not None and domain["status"] in ROUTED
        changes: Routes = {hostname: _route_of(domain, find) if domain and active else None}
        for name in sources:
            source = find(name)  # the index may lag: by key
            if source is not None and source["status"] in ROUTED \
                    and source.get("redirect_to") == hostname:  # not to another's (a takeover)
                changes[name] = route_value(source, target_routed=active and source[
                    "publication_id"] == publication)
            elif name in written:  # written in a round before, then it changed: as it is now
                changes[name] = _route_of(source, find) \
                    if source is not None and source["status"] in ROUTED else None
        if changes == written:
            return
        write(changes)
        written = changes
        if round_ < ROUTE_WRITES - 1:
            domain = find(hostname)
    raise RuntimeError(f"the route of {hostname} kept changing; the worker drains it later")


def _route_of(domain: Item, find: Callable[[str], Item | None]) -> RouteValue:
    if not domain.get("redirect_to"):
        return route_value(domain)
    target = find(domain["redirect_to"])
    return route_value(domain, target is not None and target["status"] in ROUTED
                       and target["publication_id"] == domain["publication_id"])

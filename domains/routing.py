"""What the edge does for a domain besides routing it to its publication: redirect it to
another of the publication's domains, send it to an origin pool, pass metadata headers.

A domain's item keeps them as ``redirect_to``/``redirect_status_code``, ``origin_pool`` and
``metadata``; its route carries them to the edge as extras (``kit/route_extras.py``)."""
from __future__ import annotations

from typing import Any

from kit import route_extras
from store import Item

RouteValue = str | tuple[str, str]
"""A route as the domains part publishes it: the publication id, or (publication id, extras)
when the domain has extras."""
EXTRA_FIELDS = ("redirect_to", "redirect_status_code", "origin_pool", "metadata")


def route_value(domain: Item, target_routed: bool = True) -> RouteValue:
    """The route of an active ``domain``: its redirect only while the edge routes the target
    (else the domain is served, not sent to a host that leads nowhere). The control service
    decides this, not the node: with shards, the target may be held by another shard."""
    redirect_to = domain.get("redirect_to") if target_routed else None
    extras = route_extras.encode(redirect_to, domain.get("redirect_status_code"),
                                 domain.get("origin_pool"), domain.get("metadata"))
    return (str(domain["publication_id"]), extras) if extras else str(domain["publication_id"])


def routable(domain: Item) -> tuple[str | None, RouteValue, RouteValue]:
    """What a reconciliation keeps of a domain to route it: its redirect target, its route
    while the target is routed, and while it is not."""
    alone = route_value(domain, target_routed=False)
    target = domain.get("redirect_to")
    return target, (route_value(domain) if target else alone), alone


def extras_view(domain: Item) -> dict[str, Any]:
    """The extras as the API shows them (none of them secret)."""
    return {"redirect_to": domain.get("redirect_to"),
            "redirect_status_code": domain.get("redirect_status_code")
            if domain.get("redirect_to") else None,
            "origin_pool": domain.get("origin_pool"),
            "metadata": domain.get("metadata") or {}}

"""What the lifecycle (domains/lifecycle.py) needs of the other parts, as it sees them: the
certificate issuer, the edge, the platform's events and the DCV delegation. ``control/wiring.py``
hands it the real ones, so the lifecycle imports none of them (certs it may not import at all)."""
from __future__ import annotations

from typing import Callable, Protocol

from domains.routing import RouteValue

__all__ = ["CertificateIssuer", "Delegation", "EventSink", "NoEvents", "RoutePublisher"]


class CertificateIssuer(Protocol):
    def issue(self, hostnames: list[str]) -> str | None:
        """Obtain and store a certificate covering ``hostnames``; raise with a reason if not.
        Returns the serial of the certificate stored (None when the issuer cannot say)."""

    def discard(self, hostnames: list[str], serial: str | None = None) -> None:
        """Revoke and forget the certificate of ``hostnames`` (the domain is gone). With
        ``serial``, only that certificate: one stored since under the name is not this
        claim's (it may be the hostname's next holder's), and stays."""

    def renewal_due(self, hostname: str) -> bool:
        """Whether the certificate of ``hostname`` should be renewed now."""

    def holds(self, hostname: str) -> bool:
        """Whether a certificate of ``hostname`` is stored and not due for renewal."""

    def serial_of(self, hostname: str) -> str | None:
        """The serial of the certificate stored for ``hostname`` (None: none is)."""


class RoutePublisher(Protocol):
    def publish(self, routes_of: Callable[[set[str]], dict[str, RouteValue]]) -> None:
        """Make the edge serve exactly the routes ``routes_of`` reads (hostname -> publication
        id, or (publication id, extras); ``domains/routing.py``), given the hostnames the edge
        routes, read once, to check against: a full reconciliation, at start or on request.
        A route changed while they are read is left as changed; one missing from that read of
        the edge is not taken off (a lagging read proves nothing)."""

    def route_changes(self, changes: dict[str, RouteValue | None]) -> None:
        """These routes changed (hostname -> route, or None: off the edge)."""

    def routed(self) -> set[str]:
        """The hostnames the edge state routes now (a reconciliation reads them all)."""

    def refresh(self) -> None:
        """Publish what is not a route if it changed (cheap: one read when nothing did)."""

    def serving(self) -> bool:
        """Whether any edge node serves yet (the CA's HTTP-01 requests go through it)."""


class EventSink(Protocol):
    def emit(self, event_type: str, data: dict[str, object], event_id: str | None = None) -> str:
        """Record an event for the platform (a webhook); must not block on the network.
        An ``event_id`` already recorded must not be recorded twice (a drain repeated after a
        crash gives the same id)."""


class Delegation(Protocol):
    def delegated(self, hostname: str) -> bool:
        """Whether ACME's DNS-01 for ``hostname`` is delegated to our DCV zone
        (domains/prevalidation.py)."""


class NoEvents:
    """Where events go when nobody listens (a lifecycle built without a sink)."""

    def emit(self, event_type: str, data: dict[str, object], event_id: str | None = None) -> str:
        return ""

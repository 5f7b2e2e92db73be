"""www/apex pairs: connecting an apex offers its ``www.`` companion, and the reverse.

``with_www`` says what the companion does: ``redirect`` (the default: it answers with a 308 to
the name the publisher connected), ``serve`` (it serves the same publication) or ``none`` (no
companion). One publisher action, two domains: the one connected carries, in the same
conditional write that creates it, an outbox entry (domains/outbox.py) that creates the
companion, so a crash right after the first write still ends with both. Each then goes through
the lifecycle on its own records (a certificate per name, as each may point at us at another
moment); removing either one removes the other, through an outbox entry on the one removed.

Both items name each other (``pair``), with their ``pair_role`` (``primary``: the name the
publisher connected; ``companion``) and the ``with_www`` mode. ``control/wiring.py`` registers
:func:`create_companion` and :func:`remove_partner` as the consumers of the two entry kinds.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Literal

from domains.errors import PUBLISHER_ERRORS, DomainError, DomainNotFound, HostnameTaken
from dnsops.hostnames import is_apex
from domains.redirects import InvalidOption
from domains.service import REMOVING, DomainService
from kit.route_extras import DEFAULT_REDIRECT_CODE
from store import Item

log = logging.getLogger(__name__)
WithWww = Literal["redirect", "serve", "none"]
DEFAULT_WITH_WWW: WithWww = "redirect"
CREATE_COMPANION, REMOVE_PARTNER = "create_companion", "remove_partner"
"""Outbox entry kinds: create the companion of a new domain; remove a removed one's partner."""


def companion_of(hostname: str) -> str | None:
    """``www.example.com`` for ``example.com`` and the reverse; None for other names."""
    if hostname.startswith("*."):
        return None
    if is_apex(hostname):
        return "www." + hostname
    if hostname.startswith("www.") and is_apex(hostname[4:]):
        return hostname[4:]
    return None


def connect(domains: DomainService, hostname: str, publication_id: str,
            with_www: WithWww | None, extra: dict[str, Any],
            actor: str = "api") -> tuple[Item, bool]:
    """Connect ``hostname`` and, in the same write, the creation of its companion. An explicit
    ``with_www`` is refused when there is no companion to make or someone else holds it; the
    default leaves such a name alone."""
    mode = with_www or DEFAULT_WITH_WWW
    partner = companion_of(hostname) if mode != "none" else None
    if with_www in ("redirect", "serve") and partner is None:
        raise InvalidOption("with_www", f"{hostname} has no www companion: only an apex "
                            "(example.com) and its www. name pair up")
    if partner is not None and mode == "redirect" and extra.get("redirect_to"):
        raise InvalidOption("with_www", f"{hostname} redirects itself: its companion would "
                            "redirect twice; use with_www \"none\" or \"serve\"",
                            "redirect_chain")
    existing = domains.find(partner) if partner else None
    if existing is not None:
        if existing["publication_id"] != publication_id and with_www is not None:
            raise HostnameTaken(str(partner))
        partner = None  # connected already (by this publication on its own, or by another)
    if partner is None:
        return domains.connect(hostname, publication_id, actor, extra=extra)
    return domains.connect(
        hostname, publication_id, actor,
        extra={**extra, "pair": partner, "pair_role": "primary", "with_www": mode},
        effects=[{"kind": CREATE_COMPANION, "hostname": partner, "primary": hostname,
                  "publication_id": publication_id, "with_www": mode, "actor": actor}])


def create_companion(domains: DomainService, entry: Item) -> None:
    """The consumer of CREATE_COMPANION; idempotent (a connect of the same owner is)."""
    primary = domains.find(entry["primary"])
    if primary is None or primary["status"] == REMOVING or primary.get("pair") != entry[
            "hostname"]:
        return  # the primary went away before the companion was made: nothing to pair
    redirect = {"redirect_to": entry["primary"], "redirect_status_code": DEFAULT_REDIRECT_CODE} \
        if entry["with_www"] == "redirect" else {}
    try:
        domains.connect(entry["hostname"], entry["publication_id"], entry["actor"], extra={
            "pair": entry["primary"], "pair_role": "companion", "with_www": entry["with_www"],
            **redirect})
    except PUBLISHER_ERRORS as exc:  # taken meanwhile, or too many pending: the primary stays alone
        log.warning("companion %s of %s not connected: %s", entry["hostname"],
                    entry["primary"], exc)
        domains.history.append(primary, "companion not connected",
                               f"{entry['hostname']}: {exc}", entry["actor"])


def removal_effects(domain: Item) -> list[Item]:
    """The outbox entry that removes ``domain``'s partner with it."""
    partner = domain.get("pair")
    return [{"kind": REMOVE_PARTNER, "hostname": partner, "partner_of": domain["hostname"]}] \
        if partner else []


def remove_partner(domains: DomainService, remove: Callable[[str, str], object],
                   entry: Item) -> None:
    """The consumer of REMOVE_PARTNER: ``remove(hostname, actor)`` removes a domain with
    everything that follows (the lifecycle's removal)."""
    partner = domains.find(entry["hostname"])
    if partner is None or partner["status"] == REMOVING \
            or partner.get("pair") != entry["partner_of"]:
        return  # gone already, or not (any more) this one's partner
    try:
        remove(partner["hostname"], "pair")
    except DomainNotFound:
        return


def partner_of(domains: DomainService, domain: Item) -> Item | None:
    """The other domain of ``domain``'s pair, if both still name each other."""
    name = domain.get("pair")
    partner = domains.find(name) if name else None
    if partner is None or partner.get("pair") != domain["hostname"] \
            or partner["publication_id"] != domain["publication_id"] \
            or partner["status"] == REMOVING:
        return None
    return partner


def pair_view(domains: DomainService, domain: Item) -> dict[str, Any] | None:
    """The pair as the API and the settings page show it, from ``domain``'s side."""
    partner = partner_of(domains, domain)
    if partner is None:
        return None
    return {"hostname": partner["hostname"], "with_www": domain.get("with_www"),
            "role": partner.get("pair_role"), "status": partner["status"],
            "redirect_to": partner.get("redirect_to"),
            "dns_records": partner["dns_records"]}

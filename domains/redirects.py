"""Checks and changes of a domain's extras (``domains/routing.py``): a redirect to another of
the publication's active domains, an origin pool, metadata.

A redirect is one hop between two domains of one publication: the target must be active (so
it has a certificate and serves), must not redirect itself (no chains, no loops), and a domain
others redirect to cannot become a redirect. Every target is one of our own routed domains, so
a redirect domain can never send visitors to an address a publisher typed (no open redirect).
"""
from __future__ import annotations

from typing import Any, Collection

from domains import outbox
from domains.errors import DomainError
from domains.service import ACTIVE, DomainService
from kit import route_extras
from store import Item


class InvalidOption(DomainError):
    """An extra the publisher asked for that we refuse; ``field`` names it."""

    def __init__(self, field: str, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.field = field
        self.code = code


class DomainOptions:
    """Validates extras and changes them on existing domains, with their route, in one write."""

    def __init__(self, domains: DomainService, pools: Collection[str] = (),
                 meta_keys: Collection[str] = ()) -> None:
        self.domains = domains
        self.pools = frozenset(pools)
        self.meta_keys = frozenset(meta_keys)

    def checked(self, hostname: str, publication_id: str, fields: dict[str, Any],
                partner: str | None = None) -> dict[str, Any]:
        """The item fields for ``fields`` (any of redirect_to, redirect_status_code,
        origin_pool, metadata; None clears one to its default: no redirect, 308, no pool, no
        metadata) once checked; ``partner``: the domain created
        with it in one action (a www/apex pair), which may be the target before it is active."""
        checked: dict[str, Any] = {}
        if "redirect_to" in fields:
            target = fields["redirect_to"]
            checked["redirect_to"] = None if target is None else \
                self._target(hostname, publication_id, target, partner)
        if "redirect_status_code" in fields:
            code = fields["redirect_status_code"]
            if code is None:  # cleared: back to the default
                code = route_extras.DEFAULT_REDIRECT_CODE
            if code not in route_extras.REDIRECT_CODES:
                raise InvalidOption("redirect_status_code", "redirect_status_code must be 301, "
                                    "302, 307 or 308")
            checked["redirect_status_code"] = code
        if "origin_pool" in fields:
            pool = fields["origin_pool"]
            if pool is not None and pool not in self.pools:
                known = ", ".join(sorted(self.pools)) or "none are configured"
                raise InvalidOption("origin_pool", f"origin pool {pool!r} is not one of ours "
                                    f"({known})", "unknown_pool")
            checked["origin_pool"] = pool
        if "metadata" in fields:
            metadata = fields["metadata"] or {}
            problem = route_extras.meta_problem(metadata)
            if problem is not None:
                raise InvalidOption(problem.field, str(problem))
            self._known_keys(metadata)
            checked["metadata"] = dict(sorted(metadata.items())) or None
        if checked.get("redirect_to") and "redirect_status_code" not in checked:
            checked["redirect_status_code"] = route_extras.DEFAULT_REDIRECT_CODE
        return checked

    def _known_keys(self, metadata: dict[str, str]) -> None:
        """Only the operator's key names (``metadata_keys``): each one in use is a line of
        the edge's haproxy.cfg, so a publisher choosing new names could reload every node."""
        for key in sorted(metadata):
            if key not in self.meta_keys:
                known = ", ".join(sorted(self.meta_keys)) or "none are configured"
                raise InvalidOption(f"metadata.{key}", f"metadata key {key!r} is not one the "
                                    f"operator allows ({known})", "unknown_key")

    def _target(self, hostname: str, publication_id: str, target: str,
                partner: str | None) -> str:
        name = self.domains.normalize(target)
        if name == hostname:
            raise InvalidOption("redirect_to", f"{hostname} cannot redirect to itself",
                                "redirect_loop")
        if name.startswith("*."):
            raise InvalidOption("redirect_to", "a redirect target is one domain, not a wildcard")
        found = self.domains.find(name)
        if found is None or found["publication_id"] != publication_id:
            raise InvalidOption("redirect_to", f"{name} is not a domain of publication "
                                f"{publication_id}", "redirect_target")
        if found.get("redirect_to") == hostname:
            raise InvalidOption("redirect_to", f"{name} redirects to {hostname}: that would be "
                                "a loop", "redirect_loop")
        if found.get("redirect_to"):
            raise InvalidOption("redirect_to", f"{name} redirects to {found['redirect_to']} "
                                "itself; redirect to that domain directly (one hop at most)",
                                "redirect_chain")
        if found["status"] != ACTIVE and name != partner:
            raise InvalidOption("redirect_to", f"{name} is not active yet (it is "
                                f"{found['status']}); redirect to a domain that serves",
                                "redirect_target")
        source = self.redirected_to(hostname, publication_id)
        if source:
            raise InvalidOption("redirect_to", f"{source[0]} redirects to {hostname}: it cannot "
                                "redirect in turn (one hop at most)", "redirect_chain")
        return name

    def redirected_to(self, hostname: str, publication_id: str) -> list[str]:
        """The publication's domains that redirect to ``hostname``."""
        return [str(d["hostname"]) for d in
                self.domains.repository.redirecting_to(hostname, publication_id)]

    def left_dangling(self, domain: Item) -> list[str]:
        """The domains that would redirect to nothing if ``domain`` were removed (its www/apex
        partner is removed with it, so it does not count)."""
        return [name for name in self.redirected_to(domain["hostname"], domain["publication_id"])
                if name != domain.get("pair")]

    def change(self, domain: Item, fields: dict[str, Any], actor: str = "api") -> Item:
        """Change these extras of ``domain``: the fields, the timeline event and the route
        (the edge follows the domain as it is then) in one conditional write."""
        checked = self.checked(domain["hostname"], domain["publication_id"], fields)
        if not checked.get("redirect_to", domain.get("redirect_to")):
            checked["redirect_status_code"] = None
        changed = {key: value for key, value in checked.items() if domain.get(key) != value}
        if not changed:
            return domain
        why = ", ".join(f"{key}={value}" for key, value in sorted(changed.items()))
        effects = [self.domains.history.event(domain, "options changed", why, actor)]
        if domain["status"] == ACTIVE:  # the edge first: the change waits for nothing else
            effects.insert(0, outbox.route(domain["hostname"], domain["publication_id"]))
        return self.domains.transition(domain, domain["status"], why, actor, effects, **changed)

"""The edge publisher: routes from the domains part and certificates from the certs part, made
into the edge's desired state (routes, map entries, the edge config) in the sharded edge state."""
from __future__ import annotations

import logging
import time
from typing import Callable

from certs.store import CertificateStore, StoredCertificate
from certs.uploads import UploadStore
from domains.lifecycle import RouteValue
from edge.render import map_safe
from edge.sharded_state import ShardedState
from edge.sso import SigningKeys
from edge.state import EdgeConfig, Redirect, pools_of
from edge.state_store import RouteChange
from kit.settings import Settings
from shortlinks.links import LinkService, is_plain, link_id
from shortlinks.resolver import Resolver
from shortlinks.targets import DEVICES, locations
from store import Item

log = logging.getLogger(__name__)
PLATFORM_PUBLICATION = "_platform"
"""What the apps see in X-Publication-Id on the platform's own domain (no publication has it)."""
EXPIRED_LINKS_EVERY = 10.0
"""How often expired links are asked for once an ask found none (each ask is one index query,
on DynamoDB seventeen)."""


class EdgePublisher:
    """Routes from the domains part + certificates from the certs part -> the edge's desired state."""

    def __init__(self, state: ShardedState, certificates: CertificateStore,
                 app_servers: list[str], control_servers: list[str],
                 links: LinkService | None = None, sso_keys: SigningKeys | None = None,
                 platform_hosts: tuple[str, ...] = (), short_domains: tuple[str, ...] = (),
                 shortlink_servers: tuple[str, ...] = (),
                 origin_pools: dict[str, list[str]] | None = None,
                 clock: Callable[[], float] = time.time,
                 uploads: UploadStore | None = None) -> None:
        self._state, self._uploads, self._clock = state, uploads, clock
        self._certificates, self._links = certificates, links
        self._app_servers, self._control_servers = tuple(app_servers), tuple(control_servers)
        self._short_domains = tuple(sorted(short_domains))
        self._shortlink_servers = tuple(shortlink_servers) if short_domains else ()
        self._sso_keys, self._pools = sso_keys, pools_of(origin_pools)
        self.platform_hosts = platform_hosts
        """The platform's own domains: routed to the app fleet once their certificate exists."""
        self._expiry_next_ask = 0.0

    def redirect(self, link: Item | None) -> Redirect | None:
        """The map entry the edge answers ``link`` with, or None: the Python path serves it
        (a visit limit or a rule, disabled, expired, or a target the map cannot hold)."""
        if link is None or not is_plain(link) or not self._links \
                or not self._links.is_short_domain(link["domain"]):
            return None
        valid_until = link.get("valid_until")
        if valid_until is not None and valid_until <= self._clock():
            return None
        # HAProxy stops at the whole second before the limit; Python answers the rest of it.
        found = locations(link)  # the targets with their UTM parameters
        redirect = Redirect(link["domain"], link["slug"], int(link["code"]), found[""],
                            int(valid_until or 0), tuple(found.get(device, found[""]) for device
                                                         in DEVICES) if len(found) > 1 else ())
        return redirect if map_safe(redirect) else None

    def link_changed(self, domain: str, slug: str) -> None:
        """A link was made, edited or removed: its map entry on every edge node follows now."""
        self._state.change({}, redirects={f"{domain}/{slug}": self._entry(f"{domain}/{slug}")})

    def _entry(self, key: str) -> Redirect | None:
        """The map entry of the link under map key ``key``, read by key."""
        assert self._links is not None
        return self.redirect(self._links.table.get(link_id(*key.split("/", 1))))

    def expire_links(self) -> int:
        """Take expired links off the map, by their due time (one index query when none is
        due; each due one read by key, as the index may lag a link given a later expiry).
        An ask that found none is not repeated for ``EXPIRED_LINKS_EVERY`` seconds: HAProxy
        stops answering a link at its expiry itself, so its entry only takes room meanwhile."""
        now = self._clock()
        if now < self._expiry_next_ask:
            return 0
        due = self._state.due_redirects(now)
        if due:
            self._state.change({}, redirects={key: self._entry(key) if self._links else None
                                              for key in due})
        self._expiry_next_ask = now if due else now + EXPIRED_LINKS_EVERY  # more may be due
        return len(due)

    def config(self) -> EdgeConfig:
        sso_keys = self._sso_keys.public_pems() if self._sso_keys else ()
        return EdgeConfig(self._app_servers, self._control_servers, sso_keys,
                          self._short_domains, self._shortlink_servers, self._pools)

    def refresh(self) -> None:
        """Publish what is not a route (servers, SSO keys) if it changed, and take expired links
        off the map: two reads when nothing did. A fresh store gets its first (empty) state
        here, which opens the edge's port 80 for HTTP-01."""
        self._state.change({}, self.config())
        self.expire_links()

    def serving(self) -> bool:
        """Whether any edge node serves a state (so port 80 answers the CA's HTTP-01): one
        read of the few node items, asked only when a certificate is to be ordered."""
        return any(node.get("applied_version") for node in self._state.list_nodes())

    def certificate(self, hostname: str) -> StoredCertificate | None:
        """What the edge serves for ``hostname``: the publisher's own certificate while it is
        served (certs/uploads.py), else ours from the CA."""
        uploaded = self._uploads.serving(hostname) if self._uploads is not None else None
        return uploaded or self._certificates.get(hostname)

    def route_changes(self, changes: dict[str, RouteValue | None]) -> None:
        """These routes changed (hostname -> publication id or (publication id, extras), or
        None: off the edge); one commit, reading only these routes and their certificates."""
        resolved: dict[str, RouteChange] = {}
        for hostname, value in changes.items():
            cert = self.certificate(hostname) if value else None
            if value and cert is None:
                log.error("%s has no certificate; not routed", hostname)
            if not value or cert is None:
                resolved[hostname] = None
                continue
            publication_id, extras = (value, "") if isinstance(value, str) else value
            resolved[hostname] = (publication_id, cert.combined_pem, extras)
        self._state.change(resolved, self.config())

    def routed(self) -> set[str]:
        return self._state.routed()

    def publish(self, routes_of: Callable[[set[str]], dict[str, RouteValue]]) -> None:
        """Make the edge serve the routes ``routes_of`` reads (told what the edge routes) and
        the platform's hosts; a reconciliation, which reads every certificate. What changed
        after the edge's revisions read first stays; only what is confirmed off goes."""
        since = self._state.marks()
        seen = self._state.routed()
        routes = {**routes_of(seen), **{host: PLATFORM_PUBLICATION for host in self.platform_hosts}}

        def pem_of(hostname: str) -> str | None:
            cert = self.certificate(hostname)
            if cert is None and hostname not in self.platform_hosts:  # else not issued yet
                log.error("active domain %s has no certificate; not routed", hostname)
            return cert.combined_pem if cert is not None else None

        if self._state.reconcile(routes, pem_of, self.config(), since, seen):
            log.info("edge state reconciled with %d routes", len(routes))
        if self._links is not None:
            redirects = {r.key: r for r in map(self.redirect, self._links.each()) if r}
            if self._state.reconcile_redirects(redirects, since, self._unlinked):
                log.info("edge redirects reconciled with %d plain links", len(redirects))

    def _unlinked(self, keys: set[str]) -> set[str]:
        """Of these map keys, those whose link (read by key: a scan may lag) the map skips."""
        return {key for key in keys if self._entry(key) is None}




def publisher_of(settings: Settings, edge_state: ShardedState, certificates: CertificateStore,
               links: LinkService, sso_keys: SigningKeys | None, uploads: UploadStore,
               clock: Callable[[], float]) -> EdgePublisher:
    platform_host = settings.sso_platform_host
    shortlink_servers = settings.shortlink_servers or [
        f"{settings.listen_host}:{settings.shortlinks_port}"]
    return EdgePublisher(edge_state, certificates, settings.app_servers,
                         settings.edge_control_servers, links, sso_keys=sso_keys,
                         platform_hosts=(platform_host,) if platform_host else (),
                         short_domains=tuple(d.lower() for d in settings.short_domains),
                         shortlink_servers=tuple(shortlink_servers),
                         origin_pools=settings.origin_pools, clock=clock, uploads=uploads)


def link_followers(resolver: Resolver, publisher: EdgePublisher) -> Callable[[str, str], None]:
    def link_changed(domain: str, slug: str) -> None:
        """A made, edited or removed link: this process's cache and every edge's map now."""
        resolver.invalidate(domain, slug)
        publisher.link_changed(domain, slug)
    return link_changed

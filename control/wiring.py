"""Builds the control service's objects from settings: tables, services, the edge publisher
(control/publisher.py)."""
from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Callable

from certs.chain import IssuerChain
from certs.challenges import CHALLENGES, ChallengeStore
from certs.account import ACCOUNTS
from certs.issuer import AcmeIssuer, DnsChallengeSolver
from certs.limits import BUDGETS, Limits, RateBudget
from certs.orders import ORDERS
from certs.stats import ISSUANCE_STATS, IssuanceStats
from certs.store import CERTIFICATES, CertificateStore
from certs.uploads import UPLOADS, UploadStore
from control.migrations import META
from control.publisher import EdgePublisher, link_followers, publisher_of
from control.worker import OrderLease, PlatformCertificates
from dnsops.automation import RecordAutomation
from domains import byo, outbox, pairs
from domains.byo import CustomCertificates
from domains.counts import DOMAIN_COUNTS
from dnsops.dns01 import RegistrarDnsSolver
from dnsops.dnscheck import DnsChecker
from domains.lifecycle import Lifecycle, Rules, Timing
from domains.prevalidation import DelegatedDcv, Solvers
from domains.outbox import Consumer, Consumers
from domains.service import DOMAINS, EVENTS, DomainService
from domains.takeover import TAKEOVERS, Takeovers
from domains.webhooks import WEBHOOKS, WebhookSender
from edge.moves import EDGE_MOVES, Mover
from edge.shard_registry import EDGE_SHARDS, ShardRegistry
from edge.shards import DEFAULT_SHARD
from edge.sso import SSO_CODES, SSO_KEYS, SigningKeys, SingleSignOn
from edge.sharded_state import ShardedState
from edge.state_store import EdgeStateStore
from kit.platform import Platform
from kit.settings import Settings
from kit.tokens import API_TOKENS, PublicationTokens
from kit.vault import KeyVault
from shortlinks.links import LINK_CHANGES, LINKS, LinkService, link_id
from shortlinks.resolver import Resolver
from shortlinks.stats import LINK_DAYS, VisitStats
from store import Backend, Item, open_backend
from store.sweep import ExpirySweeper

log = logging.getLogger(__name__)


class DomainEvents:
    """What the domains part announces, as its outbox is drained (domains/outbox.py): webhooks
    for the platform, and the short links of a removed short domain disabled, so whoever
    connects it next does not serve them. Both are idempotent, as a drain may be repeated."""

    def __init__(self, webhooks: WebhookSender, links: LinkService,
                 publisher: EdgePublisher) -> None:
        self._webhooks = webhooks
        self._links = links
        self._publisher = publisher

    def emit(self, event_type: str, data: dict[str, object], event_id: str | None = None) -> str:
        return self._webhooks.emit(event_type, data, event_id)

    def disable_links(self, entry: Item) -> None:
        hostname = str(entry["hostname"])
        if self._links.is_short_domain(hostname):
            self._links.disable_domain(hostname)  # each link leaves the map as it is disabled


def outbox_consumers(domains: DomainService, lifecycle: Lifecycle, events: DomainEvents,
                     custom: CustomCertificates) -> dict[str, tuple[Consumer, ...]]:
    """Every kind of outbox entry (domains/outbox.py) and who applies it, in this order: no
    constructor registers one, so nothing depends on the order objects are built in. (The
    timeline's own events are the domain service's: it writes them itself.)"""
    return {
        outbox.ROUTE: (lifecycle.follow_route,),
        outbox.WEBHOOK: (lifecycle.send_webhook,),
        outbox.REVOKE: (lifecycle.discard_certificate, custom.forget),
        outbox.DISABLE_LINKS: (events.disable_links,),
        pairs.CREATE_COMPANION: (functools.partial(pairs.create_companion, domains),),
        pairs.REMOVE_PARTNER: (functools.partial(pairs.remove_partner, domains,
                                                 lifecycle.remove),),
        byo.STORE_UPLOAD: (custom.store_upload,),
        byo.RETIRE_UPLOAD: (custom.retire_upload,),
        byo.DELETE_UPLOAD: (custom.delete_upload,),
    }


def webhook_sender(settings: Settings, backend: Backend,
                   clock: Callable[[], float]) -> WebhookSender:
    """The platform's webhooks, their counts kept (``/metrics``)."""
    return WebhookSender(backend.table(WEBHOOKS), settings.webhook_url, settings.webhook_secret,
                         timeout=settings.webhook_timeout_seconds,
                         retry_window=settings.webhook_retry_hours * 3600,
                         counted=True,
                         retention=settings.webhook_retention_seconds, clock=clock)


def register_consumers(consumers: Consumers, table: dict[str, tuple[Consumer, ...]]) -> None:
    for kind, (first, *then) in table.items():
        consumers.register(kind, first)
        for consumer in then:
            consumers.also(kind, consumer)


@dataclasses.dataclass
class Services:
    settings: Settings
    backend: Backend
    domains: DomainService
    challenges: ChallengeStore
    certificates: CertificateStore
    issuer: IssuerChain
    edge_state: EdgeStateStore
    """The default shard's edge state (the whole edge's while no shard is configured)."""
    edge_shards: ShardedState
    """Every shard's edge state and the router's map (edge/sharded_state.py)."""
    lifecycle: Lifecycle
    webhooks: WebhookSender
    links: LinkService
    resolver: Resolver
    publisher: EdgePublisher
    tokens: PublicationTokens
    platform: Platform
    sso: SingleSignOn | None = None
    sweeper: ExpirySweeper | None = None
    """Deletes what the retention settings let go (a worker step)."""
    custom_certificates: CustomCertificates | None = None
    """Publishers' own certificates (upload, removal, and the fallback: a worker step)."""
    takeovers: Takeovers | None = None
    """Moving a domain to the owner of its DNS (domains/takeover.py)."""
    clock: Callable[[], float] = time.time
    """What every part built here reads the time from (tests pass a settable one)."""
    shards: ShardRegistry | None = None
    """The edge shards and pinned hostnames (edge/shard_registry.py)."""
    moves: Mover | None = None
    """Moves hostnames between shards as the shard set changes (a worker step)."""

    @classmethod
    def from_settings(cls, settings: Settings,
                      clock: Callable[[], float] = time.time) -> "Services":
        backend = open_backend(settings)
        vault = KeyVault(settings.encryption_keys)
        platform_host = settings.sso_platform_host
        automation = RecordAutomation.from_settings(settings.registrars)
        checker = DnsChecker.from_settings(settings)
        dcv = DelegatedDcv(automation, checker, settings.dcv_zone) if settings.dcv_zone else None
        domains = _domains(settings, backend, automation, clock)
        challenges = ChallengeStore(backend.table(CHALLENGES), clock=clock)
        certificates = CertificateStore(backend.table(CERTIFICATES), vault)
        uploads = UploadStore(backend.table(UPLOADS), vault, settings.byo_fallback_days,
                              clock=clock)
        issuer = _issuer(settings, backend, vault, challenges, certificates,
                         _dns01_solver(settings, automation, checker, dcv), clock)
        shards = ShardRegistry(backend.table(EDGE_SHARDS), lambda: edge_shards.size(DEFAULT_SHARD))
        edge_shards = ShardedState.from_backend(
            backend, vault, shards.load, settings.visit_report_retention_seconds, clock)
        edge_state = edge_shards.default
        links = LinkService(backend.table(LINKS), settings.short_domains,
                            changes=backend.table(LINK_CHANGES), domain_owner=domains.owner,
                            stats=VisitStats(backend.table(LINK_DAYS), clock=clock), clock=clock)
        resolver = Resolver(links.table, changes=links.changes, stats=links.stats, clock=clock)
        sso_keys = SigningKeys(backend.table(SSO_KEYS), vault, settings.sso_key_activation_seconds,
                               clock=clock) if platform_host else None
        publisher = publisher_of(settings, edge_shards, certificates, links, sso_keys, uploads,
                               clock)
        timing = Timing(recheck=settings.recheck_seconds,
                        suspend_grace=settings.suspend_grace_seconds,
                        give_up=settings.give_up_seconds,
                        dns_concurrency=max(1, settings.dns_concurrency),
                        issue_concurrency=max(1, settings.issue_concurrency))
        webhooks = webhook_sender(settings, backend, clock)
        events = DomainEvents(webhooks, links, publisher)
        rules = Rules(timing, dcv_zone=settings.dcv_zone,
                      prevalidation_recheck=settings.prevalidation_recheck_seconds)
        lifecycle = Lifecycle(domains, checker, issuer, publisher, rules, delegation=dcv,
                              events=events, worker_id=settings.worker_id, clock=clock)
        custom = CustomCertificates(domains, uploads, lifecycle.worker_id, timing.worker_lease,
                                    clock=clock, private_roots=settings.byo_private_roots)
        register_consumers(domains.consumers,
                           outbox_consumers(domains, lifecycle, events, custom))
        links.subscribe(link_followers(resolver, publisher))
        sso = _sso(settings, backend, sso_keys, domains, clock)
        sweeper = ExpirySweeper([domains.events, webhooks.table, edge_state.reports,
                                 challenges.table, *(backend.table(spec) for spec in (
                                     ORDERS, SSO_CODES, LINK_DAYS, TAKEOVERS))],
                                settings.sweep_batch, clock=clock)
        takeovers = Takeovers(domains, backend.table(TAKEOVERS), checker, clock=clock,
                              serial_of=certificates.serial_of)
        moves = Mover(edge_shards, shards, backend.table(EDGE_MOVES),
                      settings.shard_move_grace_seconds, settings.worker_interval,
                      timing.worker_lease, owner=lifecycle.worker_id, clock=clock,
                      links_of=lambda host: [link_id(link["domain"], link["slug"])
                                             for link in links.links_on(host)])
        return cls(settings, backend, domains, challenges, certificates, issuer, edge_state,
                   edge_shards, lifecycle, webhooks, links, resolver, publisher,
                   PublicationTokens(backend.table(API_TOKENS), clock=clock),
                   Platform.from_settings(settings), sso, sweeper, custom, takeovers, clock,
                   shards=shards, moves=moves)

    def reencrypt_keys(self) -> int:
        """``edgectl keys rotate``: every stored secret, re-encrypted under the newest key."""
        uploads = self.custom_certificates.uploads if self.custom_certificates else None
        return (self.certificates.reencrypt() + self.issuer.reencrypt()
                + (uploads.reencrypt() if uploads is not None else 0)
                + self.edge_shards.reencrypt() + (self.sso.keys.reencrypt() if self.sso else 0))

    def close(self) -> None:
        self.edge_shards.close()
        self.backend.close()


def platform_certificates(services: Services) -> PlatformCertificates:
    """The worker's step for the platform's own domains: ordered once an edge node serves, by
    one replica at a time (a lease in ``store_meta``, held by this replica's worker id)."""
    return PlatformCertificates(
        services.publisher.platform_hosts, services.issuer, services.certificates,
        services.publisher, services.settings.retry_base_seconds,
        edge_up=services.publisher.serving,
        lease=OrderLease(services.backend.table(META), services.lifecycle.worker_id))


def _domains(settings: Settings, backend: Backend, automation: RecordAutomation,
             clock: Callable[[], float]) -> DomainService:
    platform_host = settings.sso_platform_host
    return DomainService(
        backend.table(DOMAINS), backend.table(EVENTS),
        cname_target=settings.edge_cname_target, edge_addresses=settings.edge_addresses,
        platform_domains=settings.platform_domains + ([platform_host] if platform_host else [])
        + ([settings.dcv_zone] if settings.dcv_zone else []),  # nobody connects our zone
        retry_base=settings.retry_base_seconds, retry_max=settings.retry_max_seconds,
        claim_ttl=settings.claim_ttl_seconds, automation=automation,
        max_pending=settings.max_pending_domains,
        allow_wildcards=settings.allow_wildcards, counts=backend.table(DOMAIN_COUNTS),
        event_retention=settings.event_retention_seconds, dcv_zone=settings.dcv_zone,
        outbox_grace=settings.outbox_grace_seconds, clock=clock)


def _dns01_solver(settings: Settings, automation: RecordAutomation, checker: DnsChecker,
                  dcv: DelegatedDcv | None) -> DnsChallengeSolver | None:
    """DNS-01 through the publishers' registrars we drive, and through our delegated zone."""
    registrar_solver = RegistrarDnsSolver(automation, checker) if settings.registrars else None
    return Solvers(registrar_solver, dcv) if dcv is not None else registrar_solver


def _issuer(settings: Settings, backend: Backend, vault: KeyVault, challenges: ChallengeStore,
            certificates: CertificateStore, solver: DnsChallengeSolver | None,
            clock: Callable[[], float]) -> IssuerChain:
    """Every configured CA, in order, each with its own account and rate budget."""
    cas = settings.acme_issuers or [{"directory_url": settings.acme_directory_url,
                                     "ca_bundle": settings.acme_ca_bundle}]
    limits = Limits(orders_per_account_3h=settings.acme_orders_per_3h,
                    certs_per_domain_7d=settings.acme_certs_per_domain_7d,
                    failures_per_name_1h=settings.acme_failures_per_name_1h)
    accounts, orders, budgets = (backend.table(spec) for spec in (ACCOUNTS, ORDERS, BUDGETS))
    return IssuerChain([AcmeIssuer(
        directory_url=ca["directory_url"], accounts=accounts, orders=orders,
        challenges_store=challenges,
        certificates=certificates, vault=vault, ca_bundle=ca.get("ca_bundle", ""),
        email=settings.acme_email, key_type=settings.certificate_key_type,
        eab=(ca["eab_kid"], ca["eab_hmac_key"]) if ca.get("eab_kid") else None,
        dns01=solver, profile=ca.get("profile", ""), clock=clock,
        budget=RateBudget(budgets, ca["directory_url"], limits, clock=clock))
        for ca in cas], certificates, IssuanceStats(backend.table(ISSUANCE_STATS), clock=clock))


def _sso(settings: Settings, backend: Backend, sso_keys: SigningKeys | None,
         domains: DomainService, clock: Callable[[], float]) -> SingleSignOn | None:
    if sso_keys is None:
        return None
    return SingleSignOn(sso_keys, backend.table(SSO_CODES), domains.sign_in_publication,
                        platform_url=settings.sso_platform_url,
                        https_port=settings.edge_https_port,
                        session_seconds=settings.sso_session_seconds, clock=clock)

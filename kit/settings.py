"""Settings, read once at start-up from an optional TOML file and environment variables.

Every setting has a TOML key (``api_token``) and an environment variable (``EDGE_API_TOKEN``);
the environment wins. A missing or malformed setting raises :class:`SettingsError` naming it,
so a process refuses to start rather than run half-configured.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from kit import parsers as parse
from kit.errors import EdgeRouterError
from kit.hosts import plain_http_off_host
from kit.logs import FORMATS as LOG_FORMATS
from kit.redact import SECRET, redacted_repr

log = logging.getLogger(__name__)
ENV_PREFIX = "EDGE_"


class SettingsError(EdgeRouterError):
    """A setting is missing or malformed; ``name`` is the environment variable to fix."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"setting {ENV_PREFIX}{name.upper()} ({name}): {problem}")
        self.name = name
        self.problem = problem


@dataclasses.dataclass(frozen=True)
class Settings:
    """All configuration of the control service, the edge agent and the demo."""

    __repr__ = redacted_repr  # secrets (metadata=SECRET) show as '***'

    api_token: str = dataclasses.field(default="", metadata=SECRET)
    edge_token: str = dataclasses.field(default="", metadata=SECRET)
    encryption_keys: list[str] = dataclasses.field(default_factory=list, metadata=SECRET)
    data_dir: str = "edge-data"
    storage_backend: str = "sqlite"
    sqlite_path: str = ""
    dynamodb_endpoint_url: str = ""
    dynamodb_region: str = "us-east-1"
    dynamodb_table_prefix: str = "edge_"
    listen_host: str = "127.0.0.1"
    listen_port: int = 8000
    log_format: str = "auto"
    """``json`` (one object a line), ``text``, or ``auto``: text when stderr is a terminal,
    else JSON."""
    log_level: str = "INFO"
    serve_threads: int = 16
    """Request threads of `edgectl serve` (long polls of agents each hold one)."""
    drain_seconds: float = 5.0
    """After SIGTERM, /healthz answers 503 this long while requests are still served, so load
    balancers stop sending before the listener closes."""
    shutdown_seconds: float = 20.0
    """Then, at most this long for the requests in flight to finish."""
    control_tls_cert: str = ""
    control_tls_key: str = ""
    """PEM files: `edgectl serve` speaks HTTPS (the agents' channel carries private keys)."""
    control_ca_bundle: str = ""
    """What agents and the edge's HAProxy trust for the control service's certificate (a
    private CA's file); empty: the system's CAs."""
    control_client_ca: str = ""
    """`edgectl serve`: the edge API also requires a client certificate this CA signed (mTLS,
    besides the edge token)."""
    control_client_cert: str = ""
    control_client_key: str = ""
    """`edgectl agent`: its client certificate and key, for ``control_client_ca``."""
    allow_insecure_control: bool = False
    """Let agents use an http:// control URL (and SSO an http:// introspection URL) to another
    host. Off: only loopback may be plain HTTP."""
    control_url: str = ""
    """The agents' way to the control service: one URL or a comma-separated list of every
    replica (the agent moves to the next when one does not answer)."""
    control_servers: list[str] = dataclasses.field(default_factory=list)
    """Every control replica as host:port, as the edge reaches them (ACME challenges, SSO):
    the same list on every replica, so the published state does not depend on which replica
    wrote it. None: this replica's listen_host:listen_port."""
    platform_domains: list[str] = dataclasses.field(default_factory=list)
    edge_cname_target: str = "edge.platform.test"
    edge_addresses: list[str] = dataclasses.field(default_factory=lambda: ["127.0.0.1"])
    dns_servers: list[str] = dataclasses.field(default_factory=list)
    dns_port: int = 53
    dns_timeout: float = 2.0
    dns_concurrency: int = 16
    issue_concurrency: int = 8
    acme_directory_url: str = "https://127.0.0.1:14000/dir"
    acme_ca_bundle: str = ""
    acme_email: str = ""
    acme_issuers: list[dict[str, str]] = dataclasses.field(default_factory=list,
                                                           metadata=SECRET)  # EAB keys
    """Ordered CAs to try; when empty, the one of acme_directory_url / acme_ca_bundle."""
    certificate_key_type: str = "ec256"
    acme_orders_per_3h: int = 300
    acme_certs_per_domain_7d: int = 50
    acme_failures_per_name_1h: int = 5
    caa_identities: list[str] = dataclasses.field(default_factory=lambda: ["letsencrypt.org"])
    app_servers: list[str] = dataclasses.field(default_factory=lambda: ["127.0.0.1:9001"])
    origin_pools: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    """Named server lists a domain may send its requests to instead of ``app_servers``."""
    haproxy_bin: str = "haproxy"
    edge_dir: str = ""
    edge_bind: str = "127.0.0.1"
    edge_http_port: int = 8080
    edge_https_port: int = 8443
    edge_stats_port: int = 8404
    edge_redirect_capacity: int = 1_000_000
    """Short links the edge's visit table holds (sized for every plain link in the map)."""
    edge_metrics_port: int = 0
    """Where `edgectl agent` exports requests and errors per publication (/metrics on
    edge_bind; 0: not exported)."""
    worker_interval: float = 2.0
    edge_watch_seconds: float = 5.0
    """How long an agent's request waits for the next state (a long poll; 0: plain polls)."""
    worker_id: str = ""
    retry_base_seconds: float = 5.0
    retry_max_seconds: float = 3600.0
    claim_ttl_seconds: float = 7 * 86400.0
    max_pending_domains: int = 25
    """Claims not yet verified per publication (each blocks its hostname); 0: no limit."""
    allow_wildcards: bool = False
    dcv_zone: str = ""
    """A zone we drive through ``registrars`` where publishers delegate DNS-01 (pre-validation,
    wildcards without their registrar); empty: not offered."""
    prevalidation_recheck_seconds: float = 60.0
    """How often a pre-validated domain's traffic record is checked until it points at us."""
    short_domains: list[str] = dataclasses.field(default_factory=list)
    shortlinks_port: int = 8100
    shortlink_servers: list[str] = dataclasses.field(default_factory=list)
    """Where the edge sends short domains (``edgectl shortlinks``); none: this host's
    ``shortlinks_port``."""
    """How many of the most-visited short links HAProxy answers by itself (0: none)."""
    recheck_seconds: float = 3600.0
    byo_fallback_days: float = 7.0
    """An uploaded certificate this close to its expiry gives way to the ACME one."""
    webhook_url: str = dataclasses.field(default="", metadata=SECRET)  # may hold a token
    registrars: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict,
                                                              metadata=SECRET)  # API keys
    webhook_secret: str = dataclasses.field(default="", metadata=SECRET)
    suspend_grace_seconds: float = 86400.0
    give_up_seconds: float = 7 * 86400.0
    # retention: expired items go by DynamoDB TTL, or by the worker's sweep (sweep_batch a round)
    event_retention_seconds: float = 30 * 86400.0
    """How long a domain's timeline events are kept."""
    webhook_retention_seconds: float = 30 * 86400.0
    """How long a delivered webhook stays in the outbox after its delivery."""
    visit_report_retention_seconds: float = 7 * 86400.0
    """How long the id of a counted visit report is remembered (a resend within it counts once)."""
    sweep_batch: int = 500
    """Expired items deleted per table per worker round where the store has no TTL."""
    # single sign-on (edge/sso.py, kit/platform.py); an empty sso_platform_url turns it off
    sso_platform_url: str = ""
    """The platform domain's base URL, e.g. https://platform.example; it serves /_edge/sso/authorize."""
    sso_platform_login_url: str = ""
    """Where a visitor signs in on the platform; ``return_to`` is appended."""
    sso_introspection_url: str = ""
    """Platform endpoint that answers the user of the request's cookies (or 401)."""
    sso_platform_cookie: str = ""
    sso_platform_cookie_key: str = dataclasses.field(default="", metadata=SECRET)
    """Or: the platform's session cookie, an HS256 token verified with this key."""
    sso_session_seconds: float = 3600.0
    """Short, so a platform sign-out or ban reaches custom domains soon; renewed silently."""
    sso_key_activation_seconds: float = 60.0
    """A new signing key signs only after this long, once every edge has its public key."""
    # admin dashboard
    admin_cookie_secure: bool = True
    """Send the session cookie over HTTPS only; turn off only for plain-HTTP test servers."""
    admin_session_seconds: float = 8 * 3600.0
    admin_max_failures: int = 5
    """Failed logins per username, and per client address, before a lockout."""
    admin_lockout_seconds: float = 900.0

    @property
    def sso_platform_host(self) -> str:
        return (urlsplit(self.sso_platform_url).hostname or "") if self.sso_platform_url else ""

    @property
    def control_address(self) -> str:
        """The first control URL (for messages); agents use :attr:`control_urls`."""
        return self.control_urls[0]

    @property
    def control_urls(self) -> list[str]:
        urls = [url.strip() for url in self.control_url.split(",") if url.strip()]
        scheme = "https" if self.control_tls_cert else "http"
        return urls or [f"{scheme}://{self.listen_host}:{self.listen_port}"]

    @property
    def edge_control_servers(self) -> list[str]:
        return self.control_servers or [f"{self.listen_host}:{self.listen_port}"]

    def path(self, name: str) -> Path:
        return Path(self.data_dir) / name


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "api_token": parse.text,
    "edge_token": parse.text,
    "encryption_keys": parse.fernet_keys,
    "data_dir": parse.text,
    "storage_backend": parse.choice("sqlite", "dynamodb"),
    "sqlite_path": parse.text,
    "dynamodb_endpoint_url": parse.text,
    "dynamodb_region": parse.text,
    "dynamodb_table_prefix": parse.text,
    "listen_host": parse.text,
    "listen_port": parse.port,
    "log_format": parse.choice(*LOG_FORMATS),
    "log_level": parse.log_level,
    "serve_threads": parse.positive_int,
    "drain_seconds": parse.number,
    "shutdown_seconds": parse.positive,
    "control_tls_cert": parse.text,
    "control_tls_key": parse.text,
    "control_ca_bundle": parse.text,
    "control_client_ca": parse.text,
    "control_client_cert": parse.text,
    "control_client_key": parse.text,
    "allow_insecure_control": parse.boolean,
    "control_url": parse.text,
    "control_servers": parse.servers,
    "platform_domains": parse.names,
    "edge_cname_target": parse.text,
    "edge_addresses": parse.addresses,
    "dns_servers": parse.addresses,
    "dns_port": parse.port,
    "dns_timeout": parse.number,
    "dns_concurrency": parse.integer,
    "issue_concurrency": parse.integer,
    "acme_directory_url": parse.text,
    "acme_ca_bundle": parse.text,
    "acme_email": parse.text,
    "acme_issuers": parse.issuers,
    "caa_identities": parse.names,
    "certificate_key_type": parse.choice("ec256", "rsa2048", "rsa3072"),
    "acme_orders_per_3h": parse.integer,
    "acme_certs_per_domain_7d": parse.integer,
    "acme_failures_per_name_1h": parse.integer,
    "app_servers": parse.servers,
    "origin_pools": parse.origin_pools,
    "haproxy_bin": parse.text,
    "edge_dir": parse.text,
    "edge_bind": parse.text,
    "edge_http_port": parse.port,
    "edge_https_port": parse.port,
    "edge_stats_port": parse.integer,
    "edge_metrics_port": parse.integer,
    "edge_redirect_capacity": parse.between(1000, 100_000_000),
    "worker_interval": parse.number,
    "edge_watch_seconds": parse.number,
    "worker_id": parse.text,
    "retry_base_seconds": parse.number,
    "retry_max_seconds": parse.number,
    "claim_ttl_seconds": parse.number,
    "max_pending_domains": parse.integer,
    "allow_wildcards": parse.boolean,
    "dcv_zone": parse.zone,
    "prevalidation_recheck_seconds": parse.positive,
    "short_domains": parse.names,
    "shortlinks_port": parse.port,
    "shortlink_servers": parse.servers,
    "recheck_seconds": parse.number,
    "byo_fallback_days": parse.positive,
    "webhook_url": parse.text,
    "registrars": parse.registrars,
    "webhook_secret": parse.text,
    "suspend_grace_seconds": parse.number,
    "give_up_seconds": parse.number,
    "event_retention_seconds": parse.positive,
    "webhook_retention_seconds": parse.positive,
    "visit_report_retention_seconds": parse.positive,
    "sweep_batch": parse.positive_int,
    "sso_platform_url": parse.https_url,
    "sso_platform_login_url": parse.https_url,
    "sso_introspection_url": parse.text,
    "sso_platform_cookie": parse.text,
    "sso_platform_cookie_key": parse.text,
    "sso_session_seconds": parse.number,
    "sso_key_activation_seconds": parse.number,
    # admin dashboard
    "admin_cookie_secure": parse.boolean,
    "admin_session_seconds": parse.positive,
    "admin_max_failures": parse.positive_int,
    "admin_lockout_seconds": parse.positive,
}


CONTROL_SERVICE = ("api_token", "edge_token", "encryption_keys")
EDGE_AGENT = ("edge_token",)


RETIRED = {"hot_links": "every plain short link is now answered by the edge"}
"""Settings an earlier version had: ignored with a warning, so an upgrade does not stop."""


def load_settings(env: Mapping[str, str] | None = None, config_file: str | None = None,
                  required: tuple[str, ...] = CONTROL_SERVICE, **overrides: Any) -> Settings:
    """Build :class:`Settings` from a TOML file (``EDGE_CONFIG``), the environment and overrides.

    ``required`` names the settings the calling process cannot run without.
    """
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    config_file = config_file or env.get(f"{ENV_PREFIX}CONFIG")
    if config_file:
        try:
            raw.update(tomllib.loads(Path(config_file).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError("config", f"cannot read {config_file}: {exc}") from None
    for name in _PARSERS:
        if f"{ENV_PREFIX}{name.upper()}" in env:
            raw[name] = env[f"{ENV_PREFIX}{name.upper()}"]
    raw.update(overrides)
    for name, why in RETIRED.items():
        if raw.pop(name, None) is not None or f"{ENV_PREFIX}{name.upper()}" in env:
            log.warning("setting %s is no longer used (%s); remove it", name, why)
    unknown = sorted(set(raw) - set(_PARSERS))
    if unknown:
        raise SettingsError(unknown[0], "unknown setting")
    values: dict[str, Any] = {}
    for name, parse in _PARSERS.items():
        if name not in raw:
            continue
        try:
            values[name] = parse(raw[name])
        except (ValueError, TypeError) as exc:
            raise SettingsError(name, str(exc)) from None
    for name in required:
        if name not in values:
            raise SettingsError(name, "is required")
    for name in ("api_token", "edge_token"):
        if name in values and len(values[name].strip()) < 16:
            raise SettingsError(name, "must be at least 16 characters")
    if values.get("webhook_url") and len(values.get("webhook_secret", "")) < 16:
        raise SettingsError("webhook_secret", "must be at least 16 characters with webhook_url")
    if values.get("api_token") and values.get("api_token") == values.get("edge_token"):
        raise SettingsError("edge_token", "must differ from api_token (agents get private keys)")
    if values.get("sso_platform_url"):
        _check_sso(values)
    if values.get("dcv_zone") and not _covers(values.get("registrars") or {}, values["dcv_zone"]):
        raise SettingsError("dcv_zone", "needs a registrar provider for it (or a parent zone) "
                                        "in registrars: we write its TXT records")
    _check_channels(values)
    return _with_derived_paths(Settings(**values))


def _covers(registrars: Mapping[str, Any], zone: str) -> bool:
    labels = zone.split(".")
    return any(".".join(labels[start:]) in {z.lower().rstrip(".") for z in registrars}
               for start in range(len(labels)))


def _check_sso(values: dict[str, Any]) -> None:
    if not values.get("sso_platform_login_url"):
        raise SettingsError("sso_platform_login_url", "is required with sso_platform_url")
    by_cookie = bool(values.get("sso_platform_cookie"))
    if by_cookie == bool(values.get("sso_introspection_url")):
        raise SettingsError("sso_introspection_url", "set either it or sso_platform_cookie "
                            "(how the platform's signed-in user is found)")
    if by_cookie and len(values.get("sso_platform_cookie_key", "")) < 32:
        raise SettingsError("sso_platform_cookie_key", "must be at least 32 characters")
    if not 60 <= values.get("sso_session_seconds", 3600.0) <= 90 * 86400:
        raise SettingsError("sso_session_seconds", "must be between 60 s and 90 days")


def _check_channels(values: dict[str, Any]) -> None:
    """Private keys, the edge token and readers' cookies never cross the network in clear,
    unless the operator says so (``allow_insecure_control``)."""
    for cert, key in (("control_tls_cert", "control_tls_key"),
                      ("control_client_cert", "control_client_key")):
        if bool(values.get(cert)) != bool(values.get(key)):
            raise SettingsError(key, f"{cert} and {key} go together")
    if values.get("control_client_ca") and not values.get("control_tls_cert"):
        raise SettingsError("control_client_ca", "client certificates need control_tls_cert")
    if values.get("allow_insecure_control"):
        return
    for url in (values.get("control_url") or "").split(","):
        if plain_http_off_host(url.strip()):
            raise SettingsError("control_url", f"{url.strip()} is plain HTTP to another host: "
                                "agents would fetch private keys in clear; use https:// "
                                "(control_tls_cert) or set allow_insecure_control")
    if plain_http_off_host(values.get("sso_introspection_url") or ""):
        raise SettingsError("sso_introspection_url", "is plain HTTP to another host: readers' "
                            "cookies would travel in clear; use https:// or set "
                            "allow_insecure_control")


def _with_derived_paths(settings: Settings) -> Settings:
    data_dir = Path(settings.data_dir).absolute()
    return dataclasses.replace(
        settings,
        data_dir=str(data_dir),
        sqlite_path=settings.sqlite_path or str(data_dir / "edge.db"),
        edge_dir=settings.edge_dir or str(data_dir / "edge"),
    )

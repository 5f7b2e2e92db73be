"""Settings, read once at start-up from an optional TOML file and environment variables.

Every setting has a TOML key (``api_token``) and an environment variable (``EDGE_API_TOKEN``);
the environment wins. A missing or malformed setting raises :class:`SettingsError` naming it,
so a process refuses to start rather than run half-configured.

Each setting is declared once, as a field of :class:`Settings` made by :func:`setting`: its
default, its parser and whether it is a secret sit together, and the parser table and the list
of secrets are read from the fields (a setting cannot be parsed but not declared, or the
reverse).
"""
from __future__ import annotations

import copy
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
PASSWORD_HASH = "scrypt:32768:8:1"
"""werkzeug's own default, the admins' passwords' (``admin_password_hash``)."""


class SettingsError(EdgeRouterError):
    """A setting is missing or malformed; ``name`` is the environment variable to fix."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"setting {ENV_PREFIX}{name.upper()} ({name}): {problem}")
        self.name = name
        self.problem = problem


def setting(default: Any, parse: Callable[[Any], Any], *, secret: bool = False) -> Any:
    """A field of :class:`Settings`: ``parse`` turns a TOML or environment value into it (or
    raises ValueError saying what is wrong); a ``secret`` never shows in a repr."""
    metadata = {"parse": parse, **(SECRET if secret else {})}
    if isinstance(default, (list, dict)):  # each Settings gets its own copy
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default),
                                 metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Settings:
    """All configuration of the control service, the edge agent and the demo."""

    __repr__ = redacted_repr  # secrets (metadata=SECRET) show as '***'

    api_token: str = setting("", parse.text, secret=True)
    edge_token: str = setting("", parse.text, secret=True)
    encryption_keys: list[str] = setting([], parse.fernet_keys, secret=True)
    data_dir: str = setting("edge-data", parse.text)
    storage_backend: str = setting("sqlite", parse.choice("sqlite", "dynamodb"))
    sqlite_path: str = setting("", parse.text)
    dynamodb_endpoint_url: str = setting("", parse.text)
    dynamodb_region: str = setting("us-east-1", parse.text)
    dynamodb_table_prefix: str = setting("edge_", parse.text)
    listen_host: str = setting("127.0.0.1", parse.text)
    listen_port: int = setting(8000, parse.port)
    log_format: str = setting("auto", parse.choice(*LOG_FORMATS))
    """``json`` (one object a line), ``text``, or ``auto``: text when stderr is a terminal,
    else JSON."""
    log_level: str = setting("INFO", parse.log_level)
    serve_threads: int = setting(16, parse.positive_int)
    """Request threads of `edgectl serve` (long polls of agents each hold one)."""
    drain_seconds: float = setting(5.0, parse.number)
    """After SIGTERM, /healthz answers 503 this long while requests are still served, so load
    balancers stop sending before the listener closes."""
    shutdown_seconds: float = setting(1.0, parse.positive)
    """Then, at most this long for the requests in flight to finish (long polls were answered
    when the drain began): the process is gone ``drain + shutdown`` after the signal."""
    control_tls_cert: str = setting("", parse.text)
    control_tls_key: str = setting("", parse.text)
    """PEM files: `edgectl serve` speaks HTTPS (the agents' channel carries private keys)."""
    control_ca_bundle: str = setting("", parse.text)
    """What agents and the edge's HAProxy trust for the control service's certificate (a
    private CA's file); empty: the system's CAs."""
    control_client_ca: str = setting("", parse.text)
    """`edgectl serve`: the edge API also requires a client certificate this CA signed (mTLS,
    besides the edge token)."""
    control_client_cert: str = setting("", parse.text)
    control_client_key: str = setting("", parse.text)
    """`edgectl agent`: its client certificate and key, for ``control_client_ca``."""
    allow_insecure_control: bool = setting(False, parse.boolean)
    """Let agents use an http:// control URL (and SSO an http:// introspection URL) to another
    host. Off: only loopback may be plain HTTP."""
    control_url: str = setting("", parse.text)
    """The agents' way to the control service: one URL or a comma-separated list of every
    replica (the agent moves to the next when one does not answer)."""
    control_servers: list[str] = setting([], parse.servers)
    """Every control replica as host:port, as the edge reaches them (ACME challenges, SSO):
    the same list on every replica, so the published state does not depend on which replica
    wrote it. None: this replica's listen_host:listen_port."""
    platform_domains: list[str] = setting([], parse.names)
    edge_cname_target: str = setting("edge.platform.test", parse.text)
    edge_addresses: list[str] = setting(["127.0.0.1"], parse.addresses)
    dns_servers: list[str] = setting([], parse.addresses)
    dns_port: int = setting(53, parse.port)
    dns_timeout: float = setting(2.0, parse.number)
    dns_concurrency: int = setting(16, parse.integer)
    issue_concurrency: int = setting(8, parse.integer)
    acme_directory_url: str = setting("https://127.0.0.1:14000/dir", parse.text)
    acme_ca_bundle: str = setting("", parse.text)
    acme_email: str = setting("", parse.text)
    acme_issuers: list[dict[str, str]] = setting([], parse.issuers, secret=True)  # EAB keys
    """Ordered CAs to try; when empty, the one of acme_directory_url / acme_ca_bundle."""
    certificate_key_type: str = setting("ec256", parse.choice("ec256", "rsa2048", "rsa3072"))
    acme_orders_per_3h: int = setting(300, parse.integer)
    acme_certs_per_domain_7d: int = setting(50, parse.integer)
    acme_failures_per_name_1h: int = setting(5, parse.integer)
    caa_identities: list[str] = setting(["letsencrypt.org"], parse.names)
    app_servers: list[str] = setting(["127.0.0.1:9001"], parse.servers)
    origin_pools: dict[str, list[str]] = setting({}, parse.origin_pools)
    """Named server lists a domain may send its requests to instead of ``app_servers``."""
    metadata_keys: list[str] = setting([], parse.names)
    haproxy_bin: str = setting("haproxy", parse.text)
    edge_dir: str = setting("", parse.text)
    edge_bind: str = setting("127.0.0.1", parse.text)
    edge_http_port: int = setting(8080, parse.port)
    edge_https_port: int = setting(8443, parse.port)
    edge_stats_port: int = setting(8404, parse.integer)
    edge_proxy_https_port: int = setting(0, parse.integer)
    edge_proxy_http_port: int = setting(0, parse.integer)
    """A shard node's binds for its router's connections, which carry a PROXY v2 header
    (TLS and plain HTTP, on edge_bind; 0: off)."""
    edge_redirect_capacity: int = setting(1_000_000, parse.between(1000, 100_000_000))
    """Short links the edge's visit table holds (sized for every plain link in the map)."""
    edge_metrics_port: int = setting(0, parse.integer)
    """Where `edgectl agent` exports requests and errors per publication (/metrics on
    edge_metrics_bind; 0: not exported)."""
    edge_metrics_bind: str = setting("", parse.text)
    """The address both exporters listen on (edge_stats_port, edge_metrics_port); empty:
    edge_bind. They answer anyone who reaches them: a private address, not the public one."""
    worker_interval: float = setting(2.0, parse.number)
    edge_watch_seconds: float = setting(5.0, parse.number)
    """How long an agent's request waits for the next state (a long poll; 0: plain polls)."""
    edge_shard: str = setting("default", parse.text)
    """The edge shard the node serves (docs/shards.md): its agent fetches that shard's state."""
    shard_move_grace_seconds: float = setting(60.0, parse.number)
    """How long a shard keeps a hostname that moved to another after the routers switched
    (routers still catching up find it served in both places; docs/shards.md)."""
    worker_id: str = setting("", parse.text)
    retry_base_seconds: float = setting(5.0, parse.number)
    retry_max_seconds: float = setting(3600.0, parse.number)
    claim_ttl_seconds: float = setting(7 * 86400.0, parse.number)
    max_pending_domains: int = setting(25, parse.integer)
    """Claims not yet verified per publication (each blocks its hostname); 0: no limit."""
    allow_wildcards: bool = setting(False, parse.boolean)
    dcv_zone: str = setting("", parse.zone)
    """A zone we drive through ``registrars`` where publishers delegate DNS-01 (pre-validation,
    wildcards without their registrar); empty: not offered."""
    prevalidation_recheck_seconds: float = setting(60.0, parse.positive)
    """How often a pre-validated domain's traffic record is checked until it points at us."""
    short_domains: list[str] = setting([], parse.names)
    shortlinks_port: int = setting(8100, parse.port)
    shortlink_servers: list[str] = setting([], parse.servers)
    """Where the edge sends short domains (``edgectl shortlinks``); none: this host's
    ``shortlinks_port``."""
    recheck_seconds: float = setting(3600.0, parse.number)
    byo_fallback_days: float = setting(7.0, parse.positive)
    """An uploaded certificate this close to its expiry gives way to the ACME one."""
    byo_private_roots: bool = setting(False, parse.boolean)
    webhook_url: str = setting("", parse.text, secret=True)  # may hold a token
    registrars: dict[str, dict[str, Any]] = setting({}, parse.registrars, secret=True)  # API keys
    webhook_secret: str = setting("", parse.text, secret=True)
    webhook_timeout_seconds: float = setting(5.0, parse.positive)
    """How long a webhook's POST may take; a sender that died mid-POST is taken over after
    three times this plus 10 s (its lease)."""
    webhook_retry_hours: float = setting(72.0, parse.positive)
    """How long a webhook is retried after it was emitted before it is left ``failed``."""
    publisher_dns_calls_per_minute: int = setting(30, parse.positive_int)
    """DNS checks, DNS reports and takeover calls one publication may make a minute (429 past)."""
    suspend_grace_seconds: float = setting(86400.0, parse.number)
    give_up_seconds: float = setting(7 * 86400.0, parse.number)
    outbox_grace_seconds: float = setting(5.0, parse.positive)
    """An outbox older than this was left by a process that died (or a consumer that failed):
    the worker drains it."""
    # retention: expired items go by DynamoDB TTL, or by the worker's sweep (sweep_batch a round)
    event_retention_seconds: float = setting(30 * 86400.0, parse.positive)
    """How long a domain's timeline events are kept."""
    webhook_retention_seconds: float = setting(30 * 86400.0, parse.positive)
    """How long a delivered webhook stays in the outbox after its delivery."""
    visit_report_retention_seconds: float = setting(7 * 86400.0, parse.positive)
    """How long the id of a counted visit report is remembered (a resend within it counts once)."""
    sweep_batch: int = setting(500, parse.positive_int)
    """Expired items deleted per table per worker round where the store has no TTL."""
    # single sign-on (edge/sso.py, kit/platform.py); an empty sso_platform_url turns it off
    sso_platform_url: str = setting("", parse.https_url)
    """The platform domain's base URL, e.g. https://platform.example; it serves
    /_edge/sso/authorize."""
    sso_platform_login_url: str = setting("", parse.https_url)
    """Where a visitor signs in on the platform; ``return_to`` is appended."""
    sso_introspection_url: str = setting("", parse.text)
    """Platform endpoint that answers the user of the request's cookies (or 401)."""
    sso_platform_cookie: str = setting("", parse.text)
    sso_platform_cookie_key: str = setting("", parse.text, secret=True)
    """Or: the platform's session cookie, an HS256 token verified with this key."""
    sso_session_seconds: float = setting(3600.0, parse.number)
    """Short, so a platform sign-out or ban reaches custom domains soon; renewed silently."""
    sso_key_activation_seconds: float = setting(60.0, parse.number)
    """A new signing key signs only after this long, once every edge has its public key."""
    # admin dashboard
    admin_cookie_secure: bool = setting(True, parse.boolean)
    """Send the session cookie over HTTPS only; turn off only for plain-HTTP test servers."""
    admin_session_seconds: float = setting(8 * 3600.0, parse.positive)
    admin_max_failures: int = setting(5, parse.positive_int)
    """Failed logins per username, and per client address, before a lockout."""
    admin_lockout_seconds: float = setting(900.0, parse.positive)
    admin_password_hash: str = setting(PASSWORD_HASH, parse.password_hash)

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
    field.name: field.metadata["parse"] for field in dataclasses.fields(Settings)}
SECRETS = tuple(field.name for field in dataclasses.fields(Settings)
                if field.metadata.get("secret"))
"""The settings that hold credentials (tokens, keys, URLs that may carry one)."""


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
    if values.get("webhook_url"):
        _check_webhook_url(values["webhook_url"])
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


def _check_webhook_url(url: str) -> None:
    """An http(s) URL whose host a request can be sent to (every DNS label at most 63
    characters): else each webhook failed its attempts until it was given up."""
    parts = urlsplit(url)
    try:
        host, _ = parts.hostname or "", parts.port  # a port that is not a number raises
        host.encode("idna")
    except (ValueError, UnicodeError):
        host = ""
    if parts.scheme not in ("http", "https") or not host:
        raise SettingsError("webhook_url", "must be an http(s) URL with a valid host (each "
                                           "dot-separated label at most 63 characters)")


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
    if plain_http_off_host(values.get("webhook_url") or ""):
        raise SettingsError("webhook_url", "is plain HTTP to another host: the platform's "
                            "events would travel in clear; use https:// or set "
                            "allow_insecure_control")


def _with_derived_paths(settings: Settings) -> Settings:
    data_dir = Path(settings.data_dir).absolute()
    return dataclasses.replace(
        settings,
        data_dir=str(data_dir),
        sqlite_path=settings.sqlite_path or str(data_dir / "edge.db"),
        edge_dir=settings.edge_dir or str(data_dir / "edge"),
    )

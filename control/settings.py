"""Settings, read once at start-up from an optional TOML file and environment variables.

Every setting has a TOML key (``api_token``) and an environment variable (``EDGE_API_TOKEN``);
the environment wins. A missing or malformed setting raises :class:`SettingsError` naming it,
so a process refuses to start rather than run half-configured.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import tomllib
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from cryptography.fernet import Fernet

from domains.registrars import provider_names

ENV_PREFIX = "EDGE_"


class SettingsError(Exception):
    """A setting is missing or malformed; ``name`` is the environment variable to fix."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"setting {ENV_PREFIX}{name.upper()} ({name}): {problem}")
        self.name = name
        self.problem = problem


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be an integer")
    return int(value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes", "on"):
        return True
    if str(value).lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _float(value: Any) -> float:
    return float(value)


def _list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise ValueError("must be a list of strings or a comma-separated string")


def _port(value: Any) -> int:
    port = _int(value)
    if not 0 < port < 65536:
        raise ValueError("must be a TCP port (1-65535)")
    return port


def _addresses(value: Any) -> list[str]:
    items = _list(value)
    for item in items:
        ipaddress.ip_address(item)
    return items


def _servers(value: Any) -> list[str]:
    items = _list(value)
    for item in items:
        host, sep, port = item.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{item!r} must be host:port")
        _port(port)
    return items


def _fernet_keys(value: Any) -> list[str]:
    keys = _list(value)
    if not keys:
        raise ValueError("at least one key is needed (generate one with `edgectl keys generate`)")
    for key in keys:
        try:
            Fernet(key.encode())
        except ValueError:
            raise ValueError("each key must be a url-safe base64 Fernet key of 32 bytes") from None
    return keys


def _registrars(value: Any) -> dict[str, dict[str, Any]]:
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else {}
    if not isinstance(value, dict):
        raise ValueError("must map zones to provider settings, e.g. {\"example.com\": "
                         "{\"provider\": \"route53\"}}")
    for zone, config in value.items():
        if not isinstance(config, dict) or not isinstance(config.get("provider"), str):
            raise ValueError(f"zone {zone!r} needs a table with a provider name")
        if config["provider"] not in provider_names():
            raise ValueError(f"zone {zone!r}: unknown provider {config['provider']!r} "
                             f"(known: {', '.join(provider_names())})")
    return {zone.lower().rstrip("."): dict(config) for zone, config in value.items()}


def _issuers(value: Any) -> list[dict[str, str]]:
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else []
    if not isinstance(value, list):
        raise ValueError("must be a list of tables with directory_url (and ca_bundle, "
                         "eab_kid, eab_hmac_key, profile)")
    allowed = {"directory_url", "ca_bundle", "eab_kid", "eab_hmac_key", "profile"}
    for n, issuer in enumerate(value):
        if not isinstance(issuer, dict) or not isinstance(issuer.get("directory_url"), str):
            raise ValueError(f"issuer {n} needs a directory_url")
        if set(issuer) - allowed:
            raise ValueError(f"issuer {n}: unknown keys {sorted(set(issuer) - allowed)}")
        if bool(issuer.get("eab_kid")) != bool(issuer.get("eab_hmac_key")):
            raise ValueError(f"issuer {n}: eab_kid and eab_hmac_key go together")
    return [dict(issuer) for issuer in value]


def _https_url(value: Any) -> str:
    url = _str(value)
    parts = urlsplit(url)
    if url and (parts.scheme != "https" or not parts.hostname or parts.username):
        raise ValueError(f"{url!r} must be an https:// URL with a host")
    return url.rstrip("/")


def _positive(value: Any) -> float:
    number = _float(value)
    if not number > 0:
        raise ValueError("must be a positive number")
    return number


def _positive_int(value: Any) -> int:
    number = _int(value)
    if number < 1:
        raise ValueError("must be a positive integer")
    return number


def _choice(*options: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _str(value)
        if text not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return text
    return parse



@dataclasses.dataclass(frozen=True)
class Settings:
    """All configuration of the control service, the edge agent and the demo."""

    api_token: str = ""
    edge_token: str = ""
    encryption_keys: list[str] = dataclasses.field(default_factory=list)
    data_dir: str = "edge-data"
    storage_backend: str = "sqlite"
    sqlite_path: str = ""
    dynamodb_endpoint_url: str = ""
    dynamodb_region: str = "us-east-1"
    dynamodb_table_prefix: str = "edge_"
    listen_host: str = "127.0.0.1"
    listen_port: int = 8000
    control_url: str = ""
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
    acme_issuers: list[dict[str, str]] = dataclasses.field(default_factory=list)
    """Ordered CAs to try; when empty, the one of acme_directory_url / acme_ca_bundle."""
    certificate_key_type: str = "ec256"
    acme_orders_per_3h: int = 300
    acme_certs_per_domain_7d: int = 50
    acme_failures_per_name_1h: int = 5
    caa_identities: list[str] = dataclasses.field(default_factory=lambda: ["letsencrypt.org"])
    app_servers: list[str] = dataclasses.field(default_factory=lambda: ["127.0.0.1:9001"])
    haproxy_bin: str = "haproxy"
    edge_dir: str = ""
    edge_bind: str = "127.0.0.1"
    edge_http_port: int = 8080
    edge_https_port: int = 8443
    edge_stats_port: int = 8404
    worker_interval: float = 2.0
    worker_id: str = ""
    retry_base_seconds: float = 5.0
    retry_max_seconds: float = 3600.0
    claim_ttl_seconds: float = 7 * 86400.0
    max_pending_domains: int = 25
    """Claims not yet verified per publication (each blocks its hostname); 0: no limit."""
    allow_wildcards: bool = False
    short_domains: list[str] = dataclasses.field(default_factory=list)
    shortlinks_port: int = 8100
    hot_links: int = 0
    shortlink_servers: list[str] = dataclasses.field(default_factory=list)
    """Where the edge sends short domains (``edgectl shortlinks``); none: this host's
    ``shortlinks_port``."""
    """How many of the most-visited short links HAProxy answers by itself (0: none)."""
    recheck_seconds: float = 3600.0
    webhook_url: str = ""
    registrars: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    webhook_secret: str = ""
    suspend_grace_seconds: float = 86400.0
    give_up_seconds: float = 7 * 86400.0
    # single sign-on (edge/sso.py, control/platform.py); an empty sso_platform_url turns it off
    sso_platform_url: str = ""
    """The platform domain's base URL, e.g. https://platform.example; it serves /_edge/sso/authorize."""
    sso_platform_login_url: str = ""
    """Where a visitor signs in on the platform; ``return_to`` is appended."""
    sso_introspection_url: str = ""
    """Platform endpoint that answers the user of the request's cookies (or 401)."""
    sso_platform_cookie: str = ""
    sso_platform_cookie_key: str = ""
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
        return self.control_url or f"http://{self.listen_host}:{self.listen_port}"

    def path(self, name: str) -> Path:
        return Path(self.data_dir) / name


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "api_token": _str,
    "edge_token": _str,
    "encryption_keys": _fernet_keys,
    "data_dir": _str,
    "storage_backend": _choice("sqlite", "dynamodb"),
    "sqlite_path": _str,
    "dynamodb_endpoint_url": _str,
    "dynamodb_region": _str,
    "dynamodb_table_prefix": _str,
    "listen_host": _str,
    "listen_port": _port,
    "control_url": _str,
    "platform_domains": _list,
    "edge_cname_target": _str,
    "edge_addresses": _addresses,
    "dns_servers": _addresses,
    "dns_port": _port,
    "dns_timeout": _float,
    "dns_concurrency": _int,
    "issue_concurrency": _int,
    "acme_directory_url": _str,
    "acme_ca_bundle": _str,
    "acme_email": _str,
    "acme_issuers": _issuers,
    "caa_identities": _list,
    "certificate_key_type": _choice("ec256", "rsa2048", "rsa3072"),
    "acme_orders_per_3h": _int,
    "acme_certs_per_domain_7d": _int,
    "acme_failures_per_name_1h": _int,
    "app_servers": _servers,
    "haproxy_bin": _str,
    "edge_dir": _str,
    "edge_bind": _str,
    "edge_http_port": _port,
    "edge_https_port": _port,
    "edge_stats_port": _int,
    "worker_interval": _float,
    "worker_id": _str,
    "retry_base_seconds": _float,
    "retry_max_seconds": _float,
    "claim_ttl_seconds": _float,
    "max_pending_domains": _int,
    "allow_wildcards": _bool,
    "short_domains": _list,
    "shortlinks_port": _port,
    "hot_links": _int,
    "shortlink_servers": _servers,
    "recheck_seconds": _float,
    "webhook_url": _str,
    "registrars": _registrars,
    "webhook_secret": _str,
    "suspend_grace_seconds": _float,
    "give_up_seconds": _float,
    "sso_platform_url": _https_url,
    "sso_platform_login_url": _https_url,
    "sso_introspection_url": _str,
    "sso_platform_cookie": _str,
    "sso_platform_cookie_key": _str,
    "sso_session_seconds": _float,
    "sso_key_activation_seconds": _float,
    # admin dashboard
    "admin_cookie_secure": _bool,
    "admin_session_seconds": _positive,
    "admin_max_failures": _positive_int,
    "admin_lockout_seconds": _positive,
}


CONTROL_SERVICE = ("api_token", "edge_token", "encryption_keys")
EDGE_AGENT = ("edge_token",)


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
    return _with_derived_paths(Settings(**values))


def _check_sso(values: dict[str, Any]) -> None:
    if not values.get("sso_platform_login_url"):
        raise SettingsError("sso_platform_login_url", "is required with sso_platform_url")
    by_cookie = bool(values.get("sso_platform_cookie"))
    if by_cookie == bool(values.get("sso_introspection_url")):
        raise SettingsError("sso_introspection_url", "set either it or sso_platform_cookie "
                            "(how the platform's signed-in user is found)")
    if by_cookie and len(values.get("sso_platform_cookie_key", "")) < 32:
        raise SettingsError("sso_platform_cookie_key", "must be at least 32 characters")
    if not 60 <= values.get("sso_session_seconds", 86400.0) <= 90 * 86400:
        raise SettingsError("sso_session_seconds", "must be between 60 s and 90 days")


def _with_derived_paths(settings: Settings) -> Settings:
    data_dir = Path(settings.data_dir).absolute()
    return dataclasses.replace(
        settings,
        data_dir=str(data_dir),
        sqlite_path=settings.sqlite_path or str(data_dir / "edge.db"),
        edge_dir=settings.edge_dir or str(data_dir / "edge"),
    )

"""Value parsers for settings: each takes what TOML or the environment gave and returns the
typed value, or raises ValueError with a sentence saying what is expected."""
from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, Callable
from urllib.parse import urlsplit

from cryptography.fernet import Fernet

from kit.route_extras import POOL_NAME


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


_ZONE_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def zone(value: Any) -> str:
    """A DNS zone name: lowercase, no trailing dot, at least two labels."""
    name = text(value).strip().lower().rstrip(".")
    labels = name.split(".")
    if name and (len(labels) < 2 or not all(_ZONE_LABEL.fullmatch(x) for x in labels)):
        raise ValueError("must be a DNS zone such as dcv.example.net")
    return name


def integer(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be an integer")
    return int(value)


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes", "on"):
        return True
    if str(value).lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def number(value: Any) -> float:
    return float(value)


def names(value: Any) -> list[str]:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise ValueError("must be a list of strings or a comma-separated string")


def port(value: Any) -> int:
    found = integer(value)
    if not 0 < found < 65536:
        raise ValueError("must be a TCP port (1-65535)")
    return found


def addresses(value: Any) -> list[str]:
    items = names(value)
    for item in items:
        ipaddress.ip_address(item)
    return items


def servers(value: Any) -> list[str]:
    items = names(value)
    for item in items:
        host, sep, port_text = item.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{item!r} must be host:port")
        port(port_text)
    return items


def fernet_keys(value: Any) -> list[str]:
    keys = names(value)
    if not keys:
        raise ValueError("at least one key is needed (generate one with `edgectl keys generate`)")
    for key in keys:
        try:
            Fernet(key.encode())
        except ValueError:
            raise ValueError("each key must be a url-safe base64 Fernet key of 32 bytes") from None
    return keys


def registrars(value: Any) -> dict[str, dict[str, Any]]:
    """Zones to provider settings, each with the ``publications`` whose connects may create
    records there (dnsops/automation.py); the domains part checks the provider names when it
    builds them."""
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else {}
    if not isinstance(value, dict):
        raise ValueError("must map zones to provider settings, e.g. {\"example.com\": "
                         "{\"provider\": \"route53\", \"publications\": [\"pub_1\"]}}")
    for zone, config in value.items():
        if not isinstance(config, dict) or not isinstance(config.get("provider"), str):
            raise ValueError(f"zone {zone!r} needs a table with a provider name")
        found = config.get("publications", [])
        if not isinstance(found, list) or not all(
                isinstance(item, str) and item.strip() for item in found):
            raise ValueError(f"zone {zone!r}: publications must be a list of publication ids")
    return {zone.lower().rstrip("."): dict(config) for zone, config in value.items()}


def origin_pools(value: Any) -> dict[str, list[str]]:
    """Pool name -> its servers (host:port), as JSON in the environment or a TOML table."""
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else {}
    if not isinstance(value, dict):
        raise ValueError('must map pool names to servers, e.g. {"canary": ["10.0.0.5:8080"]}')
    pools = {}
    for name, members in value.items():
        if not isinstance(name, str) or not POOL_NAME.fullmatch(name):
            raise ValueError(f"pool name {name!r}: 1-32 lowercase letters, digits, '_' or '-'")
        pools[name] = servers(members)
        if not pools[name]:
            raise ValueError(f"pool {name!r} needs at least one server")
    return pools


def issuers(value: Any) -> list[dict[str, str]]:
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


def https_url(value: Any) -> str:
    url = text(value)
    parts = urlsplit(url)
    if url and (parts.scheme != "https" or not parts.hostname or parts.username):
        raise ValueError(f"{url!r} must be an https:// URL with a host")
    return url.rstrip("/")


def positive(value: Any) -> float:
    found = number(value)
    if not found > 0:
        raise ValueError("must be a positive number")
    return found


def positive_int(value: Any) -> int:
    found = integer(value)
    if found < 1:
        raise ValueError("must be a positive integer")
    return found


def between(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        found = integer(value)
        if not low <= found <= high:
            raise ValueError(f"must be between {low} and {high}")
        return found
    return parse


def choice(*options: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        found = text(value)
        if found not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return found
    return parse


def log_level(value: Any) -> str:
    level = text(value).strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("must be one of debug, info, warning, error, critical")
    return level


_SCRYPT = re.compile(r"scrypt:(\d+):(\d+):(\d+)")


def password_hash(value: Any) -> str:
    """werkzeug's scrypt method with its cost: ``scrypt:N:r:p``, N a power of two."""
    method = text(value).strip()
    found = _SCRYPT.fullmatch(method)
    n, r, p = (int(x) for x in found.groups()) if found else (0, 0, 0)
    if not (n >= 2 and n & (n - 1) == 0 and r >= 1 and p >= 1):
        raise ValueError("must be scrypt:N:r:p with N a power of two, such as scrypt:32768:8:1")
    return method

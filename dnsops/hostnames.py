"""Hostnames are normalized once, here, at the boundary: lowercase IDNA A-labels, no trailing dot."""
from __future__ import annotations

import functools
import ipaddress
from typing import Iterable

import idna
from publicsuffixlist import PublicSuffixList

from dnsops.errors import InvalidHostname
from kit.hosts import HOSTNAME_LABEL

MAX_INPUT = 1024


@functools.lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


def _reject_ip(text: str) -> None:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return
    raise InvalidHostname(text, "an IP address is not a hostname; connect a domain name")


def normalize_hostname(raw: object, platform_domains: Iterable[str] = (),
                       allow_wildcard: bool = False) -> str:
    """The canonical form of ``raw``, or :class:`InvalidHostname` saying what is wrong with it.

    With ``allow_wildcard``, ``*.<name>`` is accepted for a valid, non-public ``<name>``.
    """
    if allow_wildcard and isinstance(raw, str) and raw.strip().startswith("*."):
        return "*." + normalize_hostname(raw.strip()[2:], platform_domains)
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidHostname(raw, "a hostname is required")
    if len(raw) > MAX_INPUT:
        raise InvalidHostname(raw[:64] + "...", "too long")
    text = raw.strip()
    if "://" in text or "/" in text or "@" in text or " " in text:
        raise InvalidHostname(raw, "give the bare hostname, like blog.example.com, not a URL")
    _reject_ip(text)
    text = text[:-1] if text.endswith(".") else text
    if text.startswith("*"):
        raise InvalidHostname(raw, "wildcard domains are not enabled here (allow_wildcards)")
    try:
        ascii_name = idna.encode(text, uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError) as exc:
        raise InvalidHostname(raw, f"not a valid hostname ({exc})") from None
    _reject_ip(ascii_name)
    if len(ascii_name) > 253:
        raise InvalidHostname(raw, "longer than 253 characters")
    labels = ascii_name.split(".")
    if len(labels) < 2:
        raise InvalidHostname(raw, "a domain needs at least two labels, like example.com")
    for label in labels:
        if not HOSTNAME_LABEL.fullmatch(label):
            raise InvalidHostname(raw, f"label {label!r} must be 1-63 letters, digits or inner hyphens")
    if labels[-1].isdigit():
        raise InvalidHostname(raw, "the top-level domain cannot be numeric")
    if _psl().is_public(ascii_name):
        raise InvalidHostname(raw, f"{ascii_name} is a public suffix; connect a domain under it")
    for platform in platform_domains:
        platform = platform.lower().rstrip(".")
        if ascii_name == platform or ascii_name.endswith("." + platform):
            raise InvalidHostname(raw, f"{ascii_name} belongs to the platform itself")
    return ascii_name


def base_of(hostname: str) -> str:
    """``example.com`` for ``*.example.com``; other names unchanged."""
    return hostname[2:] if hostname.startswith("*.") else hostname


def is_apex(hostname: str) -> bool:
    """True for a registrable domain (example.com), which cannot carry a CNAME."""
    return _psl().privatesuffix(hostname) == hostname

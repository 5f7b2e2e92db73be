"""Hostnames are normalized once, here, at the boundary: lowercase IDNA A-labels, no trailing dot.

People paste what their browser shows (``https://Blog.Example.com/path?x``), with spaces and a
trailing dot (an ideographic full stop too, from an East Asian keyboard): all of it is trimmed to
the hostname. Every refusal is one of our own sentences; the idna library's messages ("Empty
Label", "Codepoint U+005F at position 5") never reach a publisher."""
from __future__ import annotations

import ipaddress
import re
import unicodedata
from typing import Iterable
from urllib.parse import urlsplit

import idna

from dnsops.errors import InvalidHostname
from kit.hosts import HOSTNAME_LABEL, public_suffixes

MAX_INPUT = 1024
FULL_STOPS = ".\u3002\uff0e\uff61"
"""ASCII, ideographic, fullwidth and halfwidth ideographic full stops: IDNA maps each to a dot."""
_SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")
_LDH = re.compile(r"[a-z0-9-]")


def _reject_ip(text: str) -> None:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return
    raise InvalidHostname(text, "an IP address is not a hostname; connect a domain name")


def _trimmed(raw: str) -> str:
    """The host part of what was typed or pasted: no scheme, user, port, path, query, fragment,
    surrounding spaces or trailing full stop. Text that is no URL is returned as it is."""
    text = raw.strip()
    if _SCHEME.match(text):
        try:
            host = urlsplit(text).hostname
        except ValueError:  # e.g. an unbalanced [ in the authority
            host = None
        if not host:
            raise InvalidHostname(raw, "that URL has no hostname; give one like "
                                       "blog.example.com")
        text = host
    elif "@" in text:
        raise InvalidHostname(raw, "give a hostname like blog.example.com, not an email address")
    else:
        text = re.split(r"[/?#]", text, maxsplit=1)[0]
        if text.count(":") == 1 and not text.startswith("["):
            text = text.partition(":")[0]  # a host:port pasted from an address bar
    text = text.strip()
    return text[:-1] if text and text[-1] in FULL_STOPS else text


def _why_not(text: str) -> str:
    """Our sentence for why IDNA refused ``text`` (whose full stops are ASCII by now)."""
    labels = text.split(".")
    if any(not label for label in labels):
        return "it has an empty label: two dots in a row, or a dot at the start"
    for char in text:
        if char.isspace():
            return "a hostname has no spaces"
        if char.isascii() and not _LDH.match(char.lower()) and char != ".":
            return f"{char!r} is not allowed in a hostname: use letters, digits and hyphens"
    for label in labels:
        if label.startswith("-") or label.endswith("-"):
            return f"{label!r} starts or ends with a hyphen, which a hostname cannot"
        if len(label) > 63:
            return "each part between the dots can be at most 63 characters"
        if label[2:4] == "--" and not label.lower().startswith("xn--"):
            return f"{label!r} has hyphens in its third and fourth places, which only " \
                   "xn-- names may have"
    encoded = [_encoded(label) for label in labels]
    if None not in encoded and len(".".join(str(label) for label in encoded)) > 253:
        return "too long: a hostname has at most 253 characters"
    for char in text:
        if not char.isascii() and _encoded("a" + char + "a") is None:
            name = unicodedata.name(char, "unnamed")
            return f"the character {char!r} (U+{ord(char):04X}, {name.lower()}) cannot be " \
                   "used in a domain name here"
    return "it is not a valid domain name (check its letters, and that no part starts with " \
           "an accent or a joiner)"


def _encoded(label: str) -> str | None:
    """``label`` as an A-label, or None when IDNA refuses it."""
    try:
        return idna.encode(label, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return None


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
    _reject_ip(raw.strip())
    text = _trimmed(raw)
    if not text:
        raise InvalidHostname(raw, "a hostname is required")
    _reject_ip(text)
    if text.startswith("*"):
        raise InvalidHostname(raw, "wildcard domains are not enabled here (allow_wildcards)")
    text = "".join("." if char in FULL_STOPS else char for char in text)
    try:
        ascii_name = idna.encode(text, uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError):
        raise InvalidHostname(raw, _why_not(text)) from None
    _reject_ip(ascii_name)
    _check_ascii(raw, ascii_name, platform_domains)
    return ascii_name


def _check_ascii(raw: str, ascii_name: str, platform_domains: Iterable[str]) -> None:
    if len(ascii_name) > 253:
        raise InvalidHostname(raw, "too long: a hostname has at most 253 characters")
    labels = ascii_name.split(".")
    if len(labels) < 2:
        raise InvalidHostname(raw, "a domain needs at least two labels, like example.com")
    for label in labels:
        if not label:
            raise InvalidHostname(raw, "it has an empty label: two dots in a row, or a dot at "
                                       "the start or the end")
        if not HOSTNAME_LABEL.fullmatch(label):
            raise InvalidHostname(raw, f"{label!r} must be 1-63 letters, digits or inner "
                                       "hyphens")
    if labels[-1].isdigit():
        raise InvalidHostname(raw, "the top-level domain cannot be numeric")
    if public_suffixes().is_public(ascii_name):
        raise InvalidHostname(raw, f"{ascii_name} is a public suffix; connect a domain under it")
    for platform in platform_domains:
        platform = platform.lower().rstrip(".")
        if ascii_name == platform or ascii_name.endswith("." + platform):
            raise InvalidHostname(raw, f"{ascii_name} belongs to the platform itself")


def unicode_form(hostname: str) -> str:
    """``bücher.example`` for ``xn--bcher-kva.example``: the name as people read it; the name
    itself when it has no xn-- label or one that does not decode."""
    if "xn--" not in hostname:
        return hostname
    try:
        return str(idna.decode(hostname))
    except (idna.IDNAError, UnicodeError):
        return hostname


def base_of(hostname: str) -> str:
    """``example.com`` for ``*.example.com``; other names unchanged."""
    return hostname[2:] if hostname.startswith("*.") else hostname


def is_apex(hostname: str) -> bool:
    """True for a registrable domain (example.com), which cannot carry a CNAME."""
    return public_suffixes().privatesuffix(hostname) == hostname

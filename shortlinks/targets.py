"""Where a short link sends its visitors: targets checked and encoded as a Location header
carries them, the target per device, UTM parameters, and the rules that hold them."""
from __future__ import annotations

import ipaddress
import re
import unicodedata
from typing import Any, Callable
from urllib.parse import quote, urlsplit, urlunsplit

import idna

from shortlinks.errors import InvalidLink
from store import Item

MAX_TARGET = 2048
DEVICES = ("ios", "android", "desktop")
UTM_FIELDS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
MAX_UTM = 200
RULES = ("expired_url", "device_targets", "utm")
"""A link's rules: where an expired or exhausted link sends visitors instead of a 410, a target
per device (by User-Agent), and UTM parameters appended to its targets."""


def _ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


_REFUSED_CATEGORIES = {"Cc", "Zs", "Zl", "Zp"}
"""Controls (C0, DEL, C1), spaces and the line/paragraph separators U+2028/U+2029."""
_LONE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SUB_DELIMS = "!$&'()*+,;="
_PATH_SAFE = _SUB_DELIMS + ":@/%"
_QUERY_SAFE = _PATH_SAFE + "?"
_PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))


def _percent_encode(part: str, safe: str) -> str:
    """RFC 3986: UTF-8 percent-encoding of all but unreserved and ``safe`` characters; escapes
    already there stay, a ``%`` that starts none becomes ``%25``."""
    return quote(_LONE_PERCENT.sub("%25", part), safe=safe)


def ascii_target(target: Any) -> tuple[str, str]:
    """(the target as an ASCII URI, its host in IDNA form) or InvalidLink with a reason.

    A Location header is ASCII: waitress cannot send anything else, and raw Latin-1 bytes are
    read differently by each client. So the host is IDNA-encoded as a browser reads it (UTS 46:
    full-width letters, the Kelvin sign, the ideographic full stops all mapped), and the path,
    query and fragment are percent-encoded as UTF-8.
    """
    if not isinstance(target, str) or not target.strip():
        raise InvalidLink("target", "a URL is required")
    if len(target) > MAX_TARGET:
        raise InvalidLink("target", f"longer than {MAX_TARGET} characters")
    if "\\" in target or any(unicodedata.category(c) in _REFUSED_CATEGORIES for c in target):
        raise InvalidLink("target", "must not contain spaces, backslashes, control characters "
                                    "or line separators (U+2028, U+2029)")
    try:
        parts = urlsplit(target)
        port = parts.port  # raises ValueError for a malformed port
    except ValueError as exc:
        raise InvalidLink("target", f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidLink("target", "only http and https URLs can be short-linked")
    if not parts.hostname:
        raise InvalidLink("target", "the URL needs a host")
    if parts.username is not None or parts.password is not None:
        raise InvalidLink("target", "credentials in the URL are not allowed")
    if "%" in parts.netloc:
        raise InvalidLink("target", "the host must not be percent-encoded")
    if _ip_address(parts.hostname):
        host, netloc = "", f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    else:
        try:  # the host as a browser reads it (UTS 46), to catch loops however they are spelt:
            # map first (U+3002, U+FF0E and U+FF61 are dots), then drop the trailing dot
            mapped = idna.uts46_remap(parts.hostname, std3_rules=False, transitional=False)
            host = idna.encode(mapped.rstrip(".")).decode().lower()
        except (idna.IDNAError, ValueError):
            raise InvalidLink("target", "the host is not a valid domain name") from None
        host += "." if mapped.endswith(".") else ""
        netloc = host
    if port is not None:
        netloc += f":{port}"
    url = urlunsplit((parts.scheme, netloc, _percent_encode(parts.path, _PATH_SAFE),
                      _percent_encode(parts.query, _QUERY_SAFE),
                      _percent_encode(parts.fragment, _QUERY_SAFE)))
    if len(url) > MAX_TARGET:
        raise InvalidLink("target", f"longer than {MAX_TARGET} characters once encoded")
    return url, host


def location(target: str) -> str:
    """A stored target as a Location header can carry it: ASCII, however old the link (links
    stored before targets were normalised may hold any character)."""
    if target.isascii() and target.isprintable() and " " not in target:
        return target  # every character in _PRINTABLE (checked in C: this runs per redirect)
    escaped = "".join(quote(c) if unicodedata.category(c) in _REFUSED_CATEGORIES else c
                      for c in target)
    try:
        return ascii_target(escaped)[0]
    except InvalidLink:
        return quote(escaped, safe=_PRINTABLE)


def device_of(agent: str) -> str:
    """``ios``, ``android`` or ``desktop`` from a User-Agent (the tokens the platforms' own
    browsers and webviews send; anything else, an unknown agent included, is desktop)."""
    if "Android" in agent:
        return "android"
    if "iPhone" in agent or "iPad" in agent or "iPod" in agent:
        return "ios"
    return "desktop"


def with_utm(url: str, utm: dict[str, str] | None) -> str:
    """``url`` with the UTM parameters of ``utm`` set (replacing any of the same name already
    in its query; the rest of the query and the fragment stay as they are)."""
    if not utm:
        return url
    base, hash_, fragment = url.partition("#")
    path, _, query = base.partition("?")
    kept = [part for part in query.split("&")
            if part and part.partition("=")[0] not in utm]
    kept += [f"{name}={quote(str(utm[name]), safe='')}" for name in UTM_FIELDS if name in utm]
    return f"{path}?{'&'.join(kept)}{hash_}{fragment}"


def locations(link: Item) -> dict[str, str]:
    """Where ``link`` sends a visitor, by device (``""``: the default): computed once when the
    resolver reads the item, not per visit."""
    found = {"": with_utm(str(link["target"]), link.get("utm"))}
    for device, url in (link.get("device_targets") or {}).items():
        found[device] = with_utm(str(url), link.get("utm"))
    return found


def check_rules(rules: dict[str, Any], target: str,
                validate: Callable[[Any], str]) -> dict[str, Any]:
    """The rules as stored: each URL validated and encoded like a target (a short domain
    refused: a loop), UTM values short strings; InvalidLink names the field. ``validate`` is
    the link service's check of a target (:func:`ascii_target` and no loop)."""
    unknown = set(rules) - set(RULES)
    if unknown:
        raise InvalidLink(sorted(unknown)[0], "not a rule")
    checked: dict[str, Any] = {}
    if rules.get("expired_url") is not None:
        checked["expired_url"] = _rule_url(validate, "expired_url", rules["expired_url"])
    targets = rules.get("device_targets")
    if targets is not None:
        if not isinstance(targets, dict) or set(targets) - set(DEVICES):
            raise InvalidLink("device_targets", f"an object with any of {', '.join(DEVICES)}")
        checked["device_targets"] = {
            device: _rule_url(validate, f"device_targets.{device}", url)
            for device, url in targets.items() if url is not None} or None
    utm = rules.get("utm")
    if utm is not None:
        if not isinstance(utm, dict) or set(utm) - set(UTM_FIELDS):
            raise InvalidLink("utm", f"an object with any of {', '.join(UTM_FIELDS)}")
        for name, value in utm.items():
            if value is not None and (not isinstance(value, str) or not value
                                      or len(value) > MAX_UTM or not value.isprintable()):
                raise InvalidLink(f"utm.{name}", f"1-{MAX_UTM} printable characters")
        checked["utm"] = {k: v for k, v in utm.items() if v is not None} or None
    for url in locations({"target": target, **checked}).values():
        if len(url) > MAX_TARGET:
            raise InvalidLink("utm", f"the target would be longer than {MAX_TARGET} "
                                     "characters with these parameters")
    return {name: value for name, value in checked.items() if value is not None}


def _rule_url(validate: Callable[[Any], str], field: str, value: Any) -> str:
    try:
        return validate(value)
    except InvalidLink as exc:
        raise InvalidLink(field, exc.reason) from None

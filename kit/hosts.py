"""The small hostname facts every part needs: what a DNS label looks like, the host of an HTTP
request without its port, and the public suffix list. Full hostname rules (IDNA, public
suffixes, wildcards) belong to ``dnsops.hostnames``."""
from __future__ import annotations

import functools
import ipaddress
import re
from urllib.parse import urlsplit

from publicsuffixlist import PublicSuffixList

HOSTNAME_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
"""One lowercase LDH label (use with ``fullmatch``)."""
MAX_NAME = 253
"""The longest name DNS carries, written without its final dot (255 octets on the wire): a
record named ``<label>.<hostname>`` leaves the hostname that much less."""


def records_too_long(hostname: str, labels: tuple[str, ...]) -> str | None:
    """Why records named ``<label>.<hostname>`` cannot exist in DNS, or None when they fit: a
    hostname near DNS's own limit is valid, but no record could ever be made under it (a
    wildcard's records are its base name's: pass that)."""
    label = max(labels, key=len)
    over = len(label) + 1 + len(hostname) - MAX_NAME
    if over <= 0:
        return None
    return (f"too long for its DNS records: {label}.{hostname[:20]}... would have "
            f"{MAX_NAME + over} characters, more than DNS allows ({MAX_NAME}); a hostname here "
            f"has at most {len(hostname) - over} characters")


@functools.cache
def public_suffixes() -> PublicSuffixList:
    """The public suffix list, parsed once a process (28 ms of CPU) for every part."""
    return PublicSuffixList()


def host_without_port(host_header: str) -> str:
    """``Blog.Example.test:8443`` -> ``blog.example.test``; anything odd stays odd, so the
    hostname checks that follow refuse it."""
    return host_header.partition(":")[0].lower()


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1: traffic that never leaves this machine."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_http_off_host(url: str) -> bool:
    """True for an ``http://`` URL to another machine: whatever it carries travels in clear."""
    parts = urlsplit(url)
    return parts.scheme == "http" and not is_loopback(parts.hostname or "")

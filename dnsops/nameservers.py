"""Which of a zone's nameserver addresses a DNS check asks, and what it may keep of answers.

A zone's NS records are anyone's data: a publisher's zone may list dozens of servers, internal
addresses (``10.0.0.1``, ``169.254.169.254``) or IPv6 ones this host cannot reach, and serve
records of any size. So a check asks at most :data:`MAX_SERVERS` addresses (as many as the root
zone has), only globally routable ones this host has a route to, and keeps a few values of each
record set, each cut short: what it keeps ends up in the domain's item, its errors and its
timeline (a DynamoDB item holds 400 KB at most).
"""
from __future__ import annotations

import ipaddress
import socket
from typing import Iterable

MAX_SERVERS = 13
"""Nameserver addresses asked per zone."""
MAX_VALUES = 5
"""Values kept of one record set (what the check shows and stores)."""
VALUE_CHARS = 64
"""Characters kept of one value."""
SHOWN_IN_MESSAGES = 3
"""Values a problem's message quotes."""


def shown(value: str) -> str:
    """``value`` cut to :data:`VALUE_CHARS` characters."""
    return value if len(value) <= VALUE_CHARS else value[:VALUE_CHARS] + "..."


def kept(values: list[str]) -> list[str]:
    """What a check keeps of a record set's values."""
    more = [f"(and {len(values) - MAX_VALUES} more)"] if len(values) > MAX_VALUES else []
    return [shown(v) for v in values[:MAX_VALUES]] + more


def quoted(values: list[str], quote: bool = True) -> str:
    """A few of ``values`` for a message: ``'a', 'b' and 4 more``."""
    listed = ", ".join(repr(shown(v)) if quote else shown(v) for v in values[:SHOWN_IN_MESSAGES])
    extra = len(values) - SHOWN_IN_MESSAGES
    return listed + (f" and {extra} more" if extra > 0 else "")


def allows_loopback(resolver_addresses: Iterable[object]) -> bool:
    """Loopback nameservers are asked only when the configured resolver (``dns_servers``) is
    on loopback too: a test or a dev setup with its DNS server on 127.0.0.x. Elsewhere (a
    host's own stub resolver on 127.0.0.53 included: ``from_settings`` passes only the
    configured servers) an NS on loopback is a zone pointing our probes at ourselves."""
    addresses = [str(a) for a in resolver_addresses]
    try:
        return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)
    except ValueError:
        return False


def askable(addresses: Iterable[str], port: int, loopback: bool) -> list[str]:
    """At most :data:`MAX_SERVERS` of ``addresses``: globally routable ones (and loopback ones
    when ``loopback``) of an address family this host has a route for."""
    chosen: list[str] = []
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            continue
        if not (ip.is_global or (loopback and ip.is_loopback)) or not _routed(address, port):
            continue
        chosen.append(address)
        if len(chosen) == MAX_SERVERS:
            break
    return chosen


def _routed(address: str, port: int) -> bool:
    """Whether this host has a route to ``address`` (connecting a UDP socket sends nothing:
    it only looks the route up; a host without IPv6 fails with ENETUNREACH)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((address, port))
    except OSError:
        return False
    return True

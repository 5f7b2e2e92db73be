"""The DNS records a publisher must create for a hostname."""
from __future__ import annotations

import hashlib
import ipaddress
from typing import Iterable

from dnsops.hostnames import base_of, is_apex

CHALLENGE_LABEL = "_edge-challenge"
ACME_LABEL = "_acme-challenge"


def challenge_name(hostname: str) -> str:
    return f"{CHALLENGE_LABEL}.{base_of(hostname)}"


def dcv_target(hostname: str, dcv_zone: str) -> str:
    """Where ``_acme-challenge.<host>`` is delegated in our DCV zone: one label per base name
    (a wildcard and its apex share ``_acme-challenge``), the same at every connect and renewal."""
    label = hashlib.sha256(base_of(hostname).encode()).hexdigest()[:32]
    return f"{label}.{dcv_zone}"


def delegation_records(hostname: str, dcv_zone: str) -> list[dict[str, str]]:
    """The CNAME that delegates DNS-01 for ``hostname`` to our DCV zone (none without one)."""
    if not dcv_zone:
        return []
    return [{"type": "CNAME", "name": f"{ACME_LABEL}.{base_of(hostname)}",
             "value": dcv_target(hostname, dcv_zone)}]


def required_records(hostname: str, token: str, cname_target: str,
                     edge_addresses: Iterable[str]) -> list[dict[str, str]]:
    """CNAME to the edge for a subdomain, A/AAAA for an apex, plus the ownership TXT."""
    if is_apex(hostname):
        records = [{"type": "AAAA" if ipaddress.ip_address(a).version == 6 else "A",
                    "name": hostname, "value": a} for a in edge_addresses]
    else:
        records = [{"type": "CNAME", "name": hostname, "value": cname_target}]
    records.append({"type": "TXT", "name": challenge_name(hostname), "value": token})
    return records


def instructions(hostname: str, cname_target: str) -> str:
    """One sentence on what to create, and why an apex differs from a subdomain."""
    if hostname.startswith("*."):
        return (f"{hostname} covers every name under {base_of(hostname)}: create a wildcard "
                f"CNAME to {cname_target} and the TXT record on {base_of(hostname)}; "
                "its certificate needs a registrar we can write DNS-01 records with.")
    if is_apex(hostname):
        return (f"{hostname} is an apex domain, which cannot be a CNAME: create the A/AAAA "
                "records below (or an ALIAS/ANAME to "
                f"{cname_target} if your DNS host offers one) and the TXT record.")
    return (f"{hostname} is a subdomain: create a CNAME to {cname_target} and the TXT record "
            "that proves you own it.")


TAKEOVER_LABEL = "_edge-takeover"


def takeover_name(hostname: str) -> str:
    """Where the owner of a hostname's DNS proves it to move the hostname to their publication
    (domains/takeover.py): named like the ownership TXT, ``_edge-takeover.<host>``."""
    return f"{TAKEOVER_LABEL}.{base_of(hostname)}"

"""The DNS records a publisher must create for a hostname."""
from __future__ import annotations

import ipaddress
from typing import Iterable

from domains.hostnames import base_of, is_apex

CHALLENGE_LABEL = "_edge-challenge"


def challenge_name(hostname: str) -> str:
    return f"{CHALLENGE_LABEL}.{base_of(hostname)}"


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

"""Does the world's DNS point a hostname at our edge and prove ownership? Asked without a cache."""
from __future__ import annotations

import dataclasses
from typing import Any

import dns.exception
import dns.rdatatype
import dns.resolver

from domains.hostnames import is_apex
from domains.records import challenge_name


@dataclasses.dataclass
class DnsCheck:
    ok: bool
    problems: list[str]
    seen: dict[str, list[str]]


class DnsChecker:
    """Checks routing (CNAME to the edge target, or A/AAAA within the edge addresses) and the TXT."""

    def __init__(self, resolver: dns.resolver.Resolver, cname_target: str,
                 edge_addresses: list[str]) -> None:
        self._resolver = resolver
        self._target = cname_target.lower().rstrip(".")
        self._addresses = set(edge_addresses)

    @classmethod
    def from_settings(cls, settings: Any) -> "DnsChecker":
        resolver = dns.resolver.Resolver(configure=not settings.dns_servers)
        if settings.dns_servers:
            resolver.nameservers = list(settings.dns_servers)
            resolver.port = settings.dns_port
        resolver.lifetime = settings.dns_timeout
        resolver.cache = None
        return cls(resolver, settings.edge_cname_target, settings.edge_addresses)

    def _lookup(self, name: str, rdtype: str) -> tuple[list[str], str | None]:
        """(values, error); NXDOMAIN and no-answer are empty lists, not errors."""
        try:
            answer = self._resolver.resolve(name, rdtype, raise_on_no_answer=False,
                                            search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoNameservers):
            return [], None
        except dns.exception.Timeout:
            return [], f"DNS lookup of {rdtype} {name} timed out"
        except dns.exception.DNSException as exc:
            return [], f"DNS lookup of {rdtype} {name} failed: {exc}"
        wanted = dns.rdatatype.from_text(rdtype)
        values = []
        for rrset in answer.response.answer:
            if rrset.rdtype == wanted and rrset.name.to_text().rstrip(".").lower() == name:
                values += [self._text(rdata) for rdata in rrset]
        return values, None

    @staticmethod
    def _text(rdata: Any) -> str:
        if rdata.rdtype == dns.rdatatype.TXT:
            return b"".join(rdata.strings).decode(errors="replace")
        return str(rdata.to_text()).rstrip(".").lower()

    def check(self, hostname: str, token: str) -> DnsCheck:
        problems: list[str] = []
        seen: dict[str, list[str]] = {}
        self._check_routing(hostname, problems, seen)
        txt_name = challenge_name(hostname)
        txt, error = self._lookup(txt_name, "TXT")
        seen[f"TXT {txt_name}"] = txt
        if error:
            problems.append(error)
        elif token not in txt:
            found = f"we found {', '.join(repr(t) for t in txt)}" if txt else "we found none"
            problems.append(f"TXT record {txt_name} must contain {token!r}; {found}")
        return DnsCheck(not problems, problems, seen)

    def _check_routing(self, hostname: str, problems: list[str], seen: dict[str, list[str]]) -> None:
        if not is_apex(hostname):
            cnames, error = self._lookup(hostname, "CNAME")
            seen[f"CNAME {hostname}"] = cnames
            if error:
                problems.append(error)
                return
            if cnames:
                if cnames != [self._target]:
                    problems.append(f"CNAME {hostname} points to {cnames[0]}; "
                                    f"it must point to {self._target}")
                return
        addresses: list[str] = []
        for rdtype in ("A", "AAAA"):
            values, error = self._lookup(hostname, rdtype)
            seen[f"{rdtype} {hostname}"] = values
            if error:
                problems.append(error)
                return
            addresses += values
        wrong = sorted(set(addresses) - self._addresses)
        if not addresses:
            want = f"a CNAME to {self._target}" if not is_apex(hostname) else \
                f"A/AAAA records to {', '.join(sorted(self._addresses))}"
            problems.append(f"{hostname} has no DNS records; create {want}")
        elif wrong:
            problems.append(f"{hostname} resolves to {', '.join(wrong)}, which is not our edge "
                            f"({', '.join(sorted(self._addresses))})")

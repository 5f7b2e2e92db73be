"""A machine-readable DNS report of one domain (what Vercel answers at ``/domains/{d}/config``).

Built from the same check the lifecycle uses (dnsops/dnscheck.py), so the report and the
worker never disagree: ``misconfigured`` is true exactly when that check fails. The report adds
what a program needs to act without parsing sentences: which record routes the name to us
(``configured_by``), the exact records we recommend, and each record in the way
(``conflicts``: a wrong CNAME, a stray AAAA, a CAA that forbids our CA...) with its sentence.

The API checks DNS live (:func:`report`); the settings page and the dashboard show the report
of the domain's last check (:func:`last_report`), which costs no DNS query to render.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping

from dnsops.dnscheck import WILDCARD_PROBE, DnsChecker
from dnsops.hostnames import is_apex
from dnsops.records import delegation_records
from kit.clock import iso

MISSING = {"txt_missing": ("TXT",), "no_records": ("CNAME", "A", "AAAA"),
           "nxdomain": ("CNAME", "A", "AAAA")}
"""Problem codes that mean a recommended record is absent (of these types)."""


def configured_by(checker: DnsChecker, seen: Mapping[str, Mapping[str, list[str]]],
                  hostname: str) -> str | None:
    """``CNAME``, ``A`` or ``AAAA``: the record that sends ``hostname`` to our edge on every
    authoritative server asked; None when none does (or the servers disagree)."""
    name = f"{WILDCARD_PROBE}.{hostname[2:]}" if hostname.startswith("*.") else hostname
    verdicts = {_routed_by(checker, found, name) for found in seen.values()}
    return verdicts.pop() if len(verdicts) == 1 else None


def _routed_by(checker: DnsChecker, found: Mapping[str, list[str]], name: str) -> str | None:
    cnames = found.get(f"CNAME {name}") or []
    if cnames:
        return "CNAME" if cnames == [checker.cname_target] else None
    a, aaaa = found.get(f"A {name}") or [], found.get(f"AAAA {name}") or []
    if a:  # a stray AAAA beside a right A is a conflict, not a different routing
        return "A" if all(checker.is_edge_address(x) for x in a) else None
    return "AAAA" if aaaa and all(checker.is_edge_address(x) for x in aaaa) else None


def recommended(domain: Mapping[str, Any], dcv_zone: str) -> list[dict[str, str]]:
    """The domain's records, with the DNS-01 delegation when we offer one (a domain connected
    before ``dcv_zone`` was set has none among its records)."""
    records = [dict(r) for r in domain["dns_records"]]
    return records + [r for r in delegation_records(domain["hostname"], dcv_zone)
                      if r not in records]


def summarize(checker: DnsChecker, hostname: str, problems: list[dict[str, Any]],
              seen: Mapping[str, Mapping[str, list[str]]], recommended: list[dict[str, str]],
              checked_at: str) -> dict[str, Any]:
    """The report of one check: its ``problems`` (``DnsCheck.errors``) and ``seen`` records."""
    conflicts = [{**p["record"], "code": p["code"], "message": p["message"]}
                 for p in problems if p.get("record")]
    absent = {kind for p in problems for kind in MISSING.get(p["code"], ())}
    if is_apex(hostname):
        absent.discard("CNAME")  # an apex cannot be a CNAME: it is not "missing" there
    return {"hostname": hostname,
            "misconfigured": bool(problems),
            "configured_by": configured_by(checker, seen, hostname),
            "recommended": recommended,
            "conflicts": conflicts,
            "missing": [r for r in recommended if r["type"] in absent
                        and not r["name"].startswith("_acme-challenge.")],
            "problems": [{"code": p["code"], "message": p["message"]} for p in problems],
            "checked_at": checked_at}


def report(checker: DnsChecker, domain: Mapping[str, Any], recommended: list[dict[str, str]],
           clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """The DNS report of ``domain``, checked now (its schedule is not changed)."""
    result = checker.check(domain["hostname"], domain["token"])
    return summarize(checker, domain["hostname"], result.errors, result.seen, recommended,
                     iso(clock()))


def last_report(checker: DnsChecker, domain: Mapping[str, Any],
                recommended: list[dict[str, str]]) -> dict[str, Any] | None:
    """The report of the domain's last check (no DNS query); None before its first."""
    if not domain.get("dns_seen"):
        return None
    return summarize(checker, domain["hostname"], list(domain.get("validation_errors") or []),
                     domain["dns_seen"], recommended, str(domain.get("updated_at")))

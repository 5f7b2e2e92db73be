"""Does the world's DNS point a hostname at our edge, prove ownership and let our CA issue?

We ask the zone's authoritative servers directly (found by walking up to the zone cut), so a
record a publisher just created is seen at once; only when no NS can be found do we fall back
to the configured resolver. The servers are asked in parallel, under one deadline per check
(dnsops/nameservers.py says which addresses are asked and what is kept of their answers). A
server that does not answer with authority (a timeout, REFUSED, SERVFAIL, no AA flag) says
nothing: the check is judged on the servers that did, and each of those must agree (a problem
on any one is reported with it). When none did, the check is inconclusive (``dns_error``,
``dns_timeout``): the lifecycle then neither counts the domain's DNS as moved away nor as
ready.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver

from dnsops.hostnames import base_of, is_apex
from dnsops.nameservers import allows_loopback, askable, kept, quoted, shown
from dnsops.records import challenge_name


@dataclasses.dataclass(frozen=True)
class Problem:
    code: str
    message: str
    record: tuple[str, str, str] | None = dataclasses.field(default=None, compare=False)
    """(type, name, value) of the record at fault, when one is (the DNS report's conflicts)."""


INCONCLUSIVE = frozenset({"dns_error", "dns_timeout"})
"""Problems that say no server answered with authority: nothing is known of the records."""


@dataclasses.dataclass
class DnsCheck:
    ok: bool
    problems: list[Problem]
    seen: dict[str, dict[str, list[str]]]
    """Server (``ip:port`` or ``resolver``) -> ``"TYPE name"`` -> values found there."""

    @property
    def inconclusive(self) -> bool:
        """Some lookup got no authoritative answer: the check says nothing of where DNS
        points (not "moved away", not "ready")."""
        return any(p.code in INCONCLUSIVE for p in self.problems)

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [{"code": p.code, "message": p.message,
                 **({"record": dict(zip(("type", "name", "value"), p.record))}
                    if p.record else {})} for p in self.problems]


WILDCARD_PROBE = "edge-wildcard-probe"


class _LookupFailed(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def _dns_name(name: str) -> dns.name.Name:
    """``name`` as a DNS name; one DNS cannot carry (too long, an empty label) fails its
    lookup with a sentence, as any failed lookup does."""
    try:
        return dns.name.from_text(name)
    except dns.exception.DNSException as exc:
        raise _LookupFailed(Problem("bad_name", f"{shown(name)} cannot be looked up in DNS "
                                    f"({exc})")) from None


class DnsChecker:
    def __init__(self, resolver: dns.resolver.Resolver, cname_target: str,
                 edge_addresses: Iterable[str], *, port: int = 53, timeout: float = 2.0,
                 caa_identities: Iterable[str] = ("letsencrypt.org",),
                 cache_seconds: float = 30.0, check_seconds: float | None = None,
                 loopback: bool | None = None) -> None:
        self._resolver = resolver
        self._target = cname_target.lower().rstrip(".")
        self._addresses = {ipaddress.ip_address(a) for a in edge_addresses}
        self._port = port
        self._timeout = timeout
        self._caa = {c.lower() for c in caa_identities}
        # Zone cuts and parents' CAA are shared by many domains: remember them briefly.
        self._cache: dict[tuple[str, str], tuple[float, Any]] = {}
        self._cache_seconds = cache_seconds
        self._check_seconds = check_seconds or 3 * timeout
        """One deadline for a check's lookups on the zone's servers, however many there are."""
        self._loopback = allows_loopback(resolver.nameservers) if loopback is None else loopback
        self._local = threading.local()  # the deadline of the check this thread works for

    def _cached(self, kind: str, key: str, compute: Callable[[], Any]) -> Any:
        now = time.monotonic()
        hit = self._cache.get((kind, key))
        if hit is not None and hit[0] > now:
            return hit[1]
        value = compute()
        self._cache[(kind, key)] = (now + self._cache_seconds, value)
        return value

    @classmethod
    def from_settings(cls, settings: Any) -> "DnsChecker":
        resolver = dns.resolver.Resolver(configure=not settings.dns_servers)
        if settings.dns_servers:
            resolver.nameservers = list(settings.dns_servers)
            resolver.port = settings.dns_port
        resolver.lifetime = settings.dns_timeout
        resolver.cache = None
        return cls(resolver, settings.edge_cname_target, settings.edge_addresses,
                   port=settings.dns_port, timeout=settings.dns_timeout,
                   caa_identities=settings.caa_identities,
                   loopback=allows_loopback(settings.dns_servers or ()))

    # -- the check ------------------------------------------------------------------------

    def check(self, hostname: str, token: str) -> DnsCheck:
        servers: list[str | None] = [*self.authoritative_servers(base_of(hostname))] or [None]
        deadline = time.monotonic() + self._check_seconds
        with ThreadPoolExecutor(max_workers=len(servers)) as pool:
            results = list(pool.map(lambda s: self._check_at(s, hostname, token, deadline),
                                    servers))
        problems = self._judged([(label, said) for label, said, _ in results])
        problems += self._check_caa(hostname)
        return DnsCheck(not problems, problems, {label: seen for label, _, seen in results})

    def _check_at(self, server: str | None, hostname: str, token: str,
                  deadline: float) -> tuple[str, list[Problem], dict[str, list[str]]]:
        """What one server says: (its label, its problems, what it served)."""
        label = f"{server}:{self._port}" if server else "resolver"
        found: dict[str, list[str]] = {}
        self._local.deadline = deadline
        try:
            problems = self._check_on(server, hostname, token, found)
        finally:
            self._local.deadline = None
        for problem in problems:
            if problem.code in INCONCLUSIVE:
                found["error"] = [problem.message[:300]]
        return label, problems, found

    @staticmethod
    def _judged(results: list[tuple[str, list[Problem]]]) -> list[Problem]:
        """The problems of the servers that answered with authority, every one of them; only
        when none did, what kept each from answering (an inconclusive check)."""
        answered = [(label, problems) for label, problems in results
                    if not any(p.code in INCONCLUSIVE for p in problems)]
        judged = answered or results
        return [Problem(p.code, f"{p.message} (on {label})", p.record) if len(judged) > 1
                else p for label, problems in judged for p in problems]

    def _check_on(self, server: str | None, hostname: str, token: str,
                  found: dict[str, list[str]]) -> list[Problem]:
        try:
            problems = self._routing(server, hostname, found)
            txt_name = challenge_name(hostname)
            txt = self._ask(server, txt_name, "TXT", found)
        except _LookupFailed as failed:
            return [failed.problem]
        if not txt:
            problems.append(Problem("txt_missing", f"Create a TXT record {txt_name} with "
                                                   f"the value {token!r}; we found none."))
        elif token not in txt:
            problems.append(Problem("txt_mismatch", f"TXT record {txt_name} must contain "
                                    f"{token!r}; we found {quoted(txt)}.",
                                    ("TXT", txt_name, shown(txt[0]))))
        return problems

    def _routing(self, server: str | None, hostname: str,
                 found: dict[str, list[str]]) -> list[Problem]:
        if hostname.startswith("*."):
            # A wildcard is checked through a name only the wildcard record can answer.
            hostname = f"{WILDCARD_PROBE}.{hostname[2:]}"
        apex = is_apex(hostname)
        if not apex:
            cnames = self._ask(server, hostname, "CNAME", found)
            if cnames and cnames != [self._target]:
                return [Problem("cname_mismatch", f"Your CNAME {hostname} points to "
                                f"{shown(cnames[0])}; it must point to {self._target}.",
                                ("CNAME", hostname, shown(cnames[0])))]
            if cnames:
                return []
        a = self._ask(server, hostname, "A", found)
        aaaa = self._ask(server, hostname, "AAAA", found)
        if not a and not aaaa:
            want = (f"A/AAAA records to {self._edge_list()} (an apex cannot be a CNAME)"
                    if apex else f"a CNAME to {self._target}")
            code = "nxdomain" if f"NXDOMAIN {hostname}" in found else "no_records"
            return [Problem(code, f"{hostname} has no DNS records pointing at us; create {want}.")]
        wrong_a = sorted(x for x in a if ipaddress.ip_address(x) not in self._addresses)
        wrong_aaaa = sorted(x for x in aaaa if ipaddress.ip_address(x) not in self._addresses)
        problems = []
        if wrong_a:
            problems.append(Problem("a_mismatch", f"{hostname} resolves to "
                                    f"{quoted(wrong_a, quote=False)}, which is not our edge "
                                    f"({self._edge_list()}).", ("A", hostname, wrong_a[0])))
        if wrong_aaaa:
            problems.append(Problem("stray_aaaa", f"Remove the AAAA record(s) "
                                    f"{quoted(wrong_aaaa, quote=False)} of {hostname}: "
                                    "visitors on IPv6 would not reach us ({self._edge_list()}).",
                                    ("AAAA", hostname, wrong_aaaa[0])))
        return problems

    @property
    def cname_target(self) -> str:
        return self._target

    def is_edge_address(self, address: str) -> bool:
        try:
            return ipaddress.ip_address(address) in self._addresses
        except ValueError:
            return False

    def records(self, name: str, rdtype: str) -> list[str]:
        """The values of ``name`` ``rdtype`` on its first authoritative server (the resolver
        when none is found); empty when there are none or the lookup fails."""
        servers: list[str | None] = [*self.authoritative_servers(base_of(name))] or [None]
        try:
            return self._ask(servers[0], name, rdtype, {})
        except _LookupFailed:
            return []

    def _edge_list(self) -> str:
        return ", ".join(sorted(str(a) for a in self._addresses))

    def txt_everywhere(self, name: str, value: str) -> bool:
        """Whether every authoritative server of ``name`` serves TXT ``value`` (propagation)."""
        servers: list[str | None] = [*self.authoritative_servers(name)] or [None]
        for server in servers:
            try:
                if value not in [self._text(r) for r in self._query(server, name, "TXT", {})]:
                    return False
            except _LookupFailed:
                return False
        return True

    # -- CAA (RFC 8659: climb from the name towards the root; the first CAA RRset rules) ----

    def _check_caa(self, hostname: str) -> list[Problem]:
        wildcard = hostname.startswith("*.")
        hostname = base_of(hostname)
        name = dns.name.from_text(hostname)  # a connected hostname: a name DNS carries
        while len(name.labels) > 2:  # stop before the root and the TLD
            text = name.to_text()
            try:
                records = self._resolve(text, "CAA") if text.rstrip(".") == hostname else \
                    self._cached("caa", text, lambda: self._resolve(text, "CAA"))
            except _LookupFailed as failed:
                return [failed.problem]
            if records:
                return self._caa_verdict(hostname, name.to_text().rstrip("."), records, wildcard)
            name = name.parent()
        return []

    def _caa_verdict(self, hostname: str, owner: str, records: list[Any],
                     wildcard: bool = False) -> list[Problem]:
        tag = b"issuewild" if wildcard and any(r.tag.lower() == b"issuewild" for r in records) \
            else b"issue"  # RFC 8659: issuewild, when present, rules wildcard names
        issuers = [r.value.decode(errors="replace").split(";")[0].strip().lower()
                   for r in records if r.tag.lower() == tag]
        critical = [r.tag.decode(errors="replace") for r in records
                    if r.flags & 128 and r.tag.lower() not in (b"issue", b"issuewild", b"iodef")]
        if critical:
            return [Problem("caa_forbids_issuer", f"CAA at {owner} has a critical property "
                            f"{critical[0]!r} we do not understand, so no CA may issue.",
                            ("CAA", owner, self._caa_text(records, critical[0])))]
        if issuers and not self._caa.intersection(issuers):
            allowed = ", ".join(sorted(self._caa))
            return [Problem("caa_forbids_issuer", f"CAA records at {owner} allow only "
                            f"{', '.join(i or '(nobody)' for i in issuers)}; add "
                            f"0 issue \"{allowed}\" so we can get a certificate for {hostname}.",
                            ("CAA", owner, self._caa_text(records, tag.decode())))]
        return []

    @staticmethod
    def _caa_text(records: list[Any], tag: str) -> str:
        """The CAA records of ``tag`` in presentation form (``0 issue "ca.example"``)."""
        return ", ".join(r.to_text() for r in records
                         if r.tag.decode(errors="replace").lower() == tag.lower())

    # -- lookups --------------------------------------------------------------------------

    def authoritative_servers(self, hostname: str) -> list[str]:
        """Addresses of the NS of the zone holding ``hostname``; empty if none can be found
        (a name DNS cannot carry has none: its lookups then fail, each with its sentence)."""
        try:
            name = _dns_name(hostname)
        except _LookupFailed:
            return []
        while len(name.labels) > 1:
            text = name.to_text()
            servers = self._zone_cut(text) if text.rstrip(".") == hostname else \
                self._cached("ns", text, lambda: self._zone_cut(text))
            if servers is not None:
                return askable(servers, self._port, self._loopback)
            name = name.parent()
        return []

    def _zone_cut(self, name: str) -> list[str] | None:
        """Addresses of ``name``'s NS if it is a zone apex, else None."""
        try:
            answer = self._resolver.resolve(name, "NS", raise_on_no_answer=False, search=False)
        except dns.exception.DNSException:
            return None
        if answer.rrset is not None and answer.rrset.rdtype == dns.rdatatype.NS and \
                answer.rrset.name == dns.name.from_text(name):
            return self._addresses_of([str(r.target) for r in answer.rrset])
        return None

    def _addresses_of(self, names: list[str]) -> list[str]:
        addresses: list[str] = []
        for ns in sorted(names):
            for rdtype in ("A", "AAAA"):
                try:
                    answer = self._resolver.resolve(ns, rdtype, raise_on_no_answer=False,
                                                    search=False)
                except dns.exception.DNSException:
                    continue
                addresses += [r.address for r in answer.rrset or []
                              if r.address not in addresses]
        return addresses

    def _ask(self, server: str | None, name: str, rdtype: str,
             found: dict[str, list[str]]) -> list[str]:
        records = self._query(server, name, rdtype, found)
        values = [self._text(r) for r in records]
        found[f"{rdtype} {name}"] = kept(values)  # what is stored and shown: a few, cut short
        return values

    def _resolve(self, name: str, rdtype: str) -> list[Any]:
        return self._query(None, name, rdtype, {})

    def _query(self, server: str | None, name: str, rdtype: str,
               found: dict[str, list[str]]) -> list[Any]:
        wanted = dns.rdatatype.from_text(rdtype)
        where = f" at {server}" if server else ""
        owner = _dns_name(name)
        try:
            response = self._response(server, name, rdtype)
        except dns.resolver.NXDOMAIN:
            found[f"NXDOMAIN {name}"] = []
            return []
        except dns.exception.Timeout:
            raise _LookupFailed(Problem("dns_timeout", f"The DNS lookup of {rdtype} {name} "
                                        f"timed out{where}; we will try again.")) from None
        except (dns.exception.DNSException, OSError) as exc:
            raise _LookupFailed(Problem("dns_error", f"The DNS lookup of {rdtype} {name} "
                                        f"failed{where}: {exc}")) from None
        rcode = response.rcode()
        authority = server is None or bool(response.flags & dns.flags.AA)
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN) or not authority:
            # REFUSED, SERVFAIL, a referral or a cache's answer: that server knows nothing.
            raise _LookupFailed(Problem("dns_error", f"The DNS lookup of {rdtype} {name}{where} "
                                        f"got {dns.rcode.to_text(rcode)}"
                                        f"{'' if authority else ' without authority'}; we will "
                                        "try again."))
        if rcode == dns.rcode.NXDOMAIN:
            found[f"NXDOMAIN {name}"] = []
        return [rdata for rrset in response.answer
                if rrset.rdtype == wanted and rrset.name == owner for rdata in rrset]

    def _response(self, server: str | None, name: str, rdtype: str) -> dns.message.Message:
        """The answer of ``server`` (recursion off), within the check's deadline; of the
        resolver when None."""
        if server is None:
            answer = self._resolver.resolve(name, rdtype, raise_on_no_answer=False,
                                            search=False)
            return answer.response
        timeout = self._timeout
        deadline = getattr(self._local, "deadline", None)
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic())
            if timeout <= 0:
                raise dns.exception.Timeout()
        query = dns.message.make_query(name, rdtype)
        query.flags &= ~dns.flags.RD
        response = dns.query.udp(query, server, port=self._port, timeout=timeout)
        if response.flags & dns.flags.TC:
            response = dns.query.tcp(query, server, port=self._port, timeout=timeout)
        return response

    @staticmethod
    def _text(rdata: Any) -> str:
        if rdata.rdtype == dns.rdatatype.TXT:
            return b"".join(rdata.strings).decode(errors="replace")
        return str(rdata.to_text()).rstrip(".").lower()

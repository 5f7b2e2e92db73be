"""RFC 2136 dynamic update, signed with TSIG, against the zone's primary server (dnspython).

Changes go out as UPDATE messages over TCP; the zone is read back by AXFR signed with the same
key (so the server's ACL should allow transfers for that key). Before each call an unsigned SOA
query tells a zone the server does not serve (:class:`ZoneNotFound`) from a key it refuses
(:class:`AuthenticationFailed`).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, TypeVar

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update
import dns.xfr
import dns.zone

from dnsops.registrars import (AuthenticationFailed, Record, RegistrarError, RegistrarProvider,
                                RegistrarUnavailable, ZoneNotFound, from_rdata, register,
                                to_rdata)

T = TypeVar("T")

_ALGORITHMS = {"hmac-sha256": dns.tsig.HMAC_SHA256, "hmac-sha512": dns.tsig.HMAC_SHA512,
               "hmac-sha384": dns.tsig.HMAC_SHA384, "hmac-sha224": dns.tsig.HMAC_SHA224,
               "hmac-sha1": dns.tsig.HMAC_SHA1, "hmac-md5": dns.tsig.HMAC_MD5}


@register
class Rfc2136Provider(RegistrarProvider):
    """Any server that takes signed dynamic updates: BIND, Knot, PowerDNS, Windows DNS."""

    name = "rfc2136"
    SUPPORTED_TYPES = frozenset({"A", "AAAA", "CNAME", "MX", "TXT", "CAA", "NS", "SRV"})

    def __init__(self, *, server: str, port: int = 53, key_name: str | None = None,
                 key_secret: str | None = None, key_algorithm: str = "hmac-sha256",
                 timeout: float = 10.0) -> None:
        if (key_name is None) != (key_secret is None):
            raise RegistrarError("key_name and key_secret go together", provider=self.name)
        if key_algorithm.lower() not in _ALGORITHMS:
            raise RegistrarError(f"unknown TSIG algorithm {key_algorithm}", provider=self.name)
        self._server = server
        self._port = port
        self._timeout = timeout
        self._tsig: dict[str, Any] = {}
        if key_name is not None and key_secret is not None:
            try:
                keyring = dns.tsigkeyring.from_text({key_name: key_secret})
            except (ValueError, dns.exception.DNSException) as exc:
                raise RegistrarError(f"bad TSIG key: {exc}", provider=self.name) from None
            self._tsig = {"keyring": keyring, "keyname": dns.name.from_text(key_name),
                          "keyalgorithm": _ALGORITHMS[key_algorithm.lower()]}

    def _list_records(self, zone: str) -> Iterable[Record]:
        self._require_zone(zone)
        origin = dns.name.from_text(zone)
        transfer = self._call(zone, lambda: dns.zone.from_xfr(
            dns.query.xfr(self._server, origin, port=self._port, lifetime=self._timeout,
                          relativize=False, **self._tsig), relativize=False))
        for name, ttl, rdata in transfer.iterate_rdatas():
            if rdata.rdtype != dns.rdatatype.SOA:
                yield from_rdata(name.to_text(omit_final_dot=True), ttl, rdata)

    def _create_record(self, zone: str, record: Record) -> None:
        update = self._update(zone)
        update.add(dns.name.from_text(record.name), record.ttl, to_rdata(record))
        self._send(zone, update)

    def _delete_record(self, zone: str, record: Record) -> None:
        update = self._update(zone)
        update.delete(dns.name.from_text(record.name), to_rdata(record))
        self._send(zone, update)

    def _update(self, zone: str) -> dns.update.UpdateMessage:
        self._require_zone(zone)
        return dns.update.UpdateMessage(zone + ".", **self._tsig)

    def _send(self, zone: str, update: dns.update.UpdateMessage) -> None:
        response = self._call(zone, lambda: dns.query.tcp(update, self._server, port=self._port,
                                                          timeout=self._timeout))
        rcode = response.rcode()
        if rcode in (dns.rcode.REFUSED, dns.rcode.NOTAUTH):
            raise AuthenticationFailed(f"update of {zone} refused ({dns.rcode.to_text(rcode)})",
                                       provider=self.name, zone=zone)
        if rcode != dns.rcode.NOERROR:
            raise RegistrarError(f"update of {zone} failed: {dns.rcode.to_text(rcode)}",
                                 provider=self.name, zone=zone)

    def _require_zone(self, zone: str) -> None:
        """Raise :class:`ZoneNotFound` unless the server answers authoritatively for the zone."""
        query = dns.message.make_query(zone + ".", dns.rdatatype.SOA)
        response = self._call(zone, lambda: dns.query.tcp(query, self._server, port=self._port,
                                                          timeout=self._timeout))
        authoritative = response.flags & dns.flags.AA
        has_soa = any(rrset.rdtype == dns.rdatatype.SOA and rrset.name == query.question[0].name
                      for rrset in response.answer)
        if response.rcode() != dns.rcode.NOERROR or not authoritative or not has_soa:
            raise ZoneNotFound(zone, provider=self.name)

    def _call(self, zone: str, operation: Callable[[], T]) -> T:
        """Run one exchange with the server, turning dnspython's and the socket's errors ours."""
        try:
            return operation()
        except dns.tsig.PeerError as exc:
            raise AuthenticationFailed(f"server refused our TSIG key for {zone}: {exc}",
                                       provider=self.name, zone=zone) from None
        except dns.xfr.TransferError as exc:
            raise AuthenticationFailed(f"zone transfer of {zone} refused: {exc}",
                                       provider=self.name, zone=zone) from None
        except (dns.exception.Timeout, OSError, EOFError) as exc:
            raise RegistrarUnavailable(f"{self._server}:{self._port} unreachable: "
                                       f"{exc or type(exc).__name__}",
                                       provider=self.name, zone=zone) from None
        except dns.exception.DNSException as exc:
            raise RegistrarError(f"DNS error for {zone}: {exc}", provider=self.name,
                                 zone=zone) from None

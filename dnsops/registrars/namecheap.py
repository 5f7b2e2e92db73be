"""Namecheap's XML API (``namecheap.domains.dns.getHosts`` / ``setHosts``) over requests.

``setHosts`` replaces the domain's whole host list, so every change is read-modify-write:
fetch the hosts as Namecheap stores them, add or drop one entry, send all of them back with
the domain's ``EmailType`` (without it Namecheap drops the MX records). Hosts we cannot
represent (URL redirects, MXE, ALIAS) are carried through untouched, never listed.
"""
from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from typing import Iterable

import requests

from dnsops.registrars import (AuthenticationFailed, InvalidRecord, Record, RegistrarError,
                                RegistrarProvider, RegistrarUnavailable, ZoneNotFound, register)

PRODUCTION_URL = "https://api.namecheap.com/xml.response"
SANDBOX_URL = "https://api.sandbox.namecheap.com/xml.response"

# Error numbers from Namecheap's documentation (global parameters and dns methods).
_AUTH_ERRORS = {"1010101", "1010102", "1011102", "1010105", "1011105", "1050900", "1011150",
                "1017150", "1017105", "1017101", "1017410", "1017411", "1019103", "1016103",
                "1017103", "2030166"}
_ZONE_ERRORS = {"2019166", "2016166", "2030288"}
_REPRESENTABLE = {"A", "AAAA", "CNAME", "MX", "TXT", "CAA", "NS"}


@dataclasses.dataclass(frozen=True)
class _Host:
    """One host entry exactly as Namecheap stores it."""

    name: str
    type: str
    address: str
    mx_pref: str = "10"
    ttl: str = "1800"


@dataclasses.dataclass
class _HostList:
    hosts: list[_Host]
    email_type: str


class _Client:
    """The two API commands we use, with Namecheap's error numbers turned ours."""

    def __init__(self, base_url: str, auth: dict[str, str], session: requests.Session,
                 timeout: float) -> None:
        self._base_url = base_url
        self._auth = auth
        self._session = session
        self._timeout = timeout

    def get_hosts(self, zone: str) -> _HostList:
        result = self._command(zone, "namecheap.domains.dns.getHosts")
        found = _find(result, "DomainDNSGetHostsResult")
        if found is None:
            raise RegistrarError("getHosts answered without a result", provider="namecheap",
                                 zone=zone)
        hosts = [_Host(h.get("Name", "@"), h.get("Type", "").upper(), h.get("Address", ""),
                       h.get("MXPref") or "10", h.get("TTL") or "1800")
                 for h in found if _local(h.tag).lower() == "host"]
        return _HostList(hosts, found.get("EmailType", ""))

    def set_hosts(self, zone: str, host_list: _HostList) -> None:
        params: dict[str, str] = {}
        for i, host in enumerate(host_list.hosts, start=1):
            params.update({f"HostName{i}": host.name, f"RecordType{i}": host.type,
                           f"Address{i}": host.address, f"MXPref{i}": host.mx_pref,
                           f"TTL{i}": host.ttl})
        if host_list.email_type:
            params["EmailType"] = host_list.email_type
        result = self._command(zone, "namecheap.domains.dns.setHosts", params)
        found = _find(result, "DomainDNSSetHostsResult")
        if found is None or found.get("IsSuccess", "").lower() != "true":
            raise RegistrarError("setHosts did not succeed", provider="namecheap", zone=zone)

    def _command(self, zone: str, command: str,
                 params: dict[str, str] | None = None) -> ET.Element:
        sld, _, tld = zone.partition(".")
        data = {**self._auth, "Command": command, "SLD": sld, "TLD": tld, **(params or {})}
        try:
            # POST: Namecheap asks for it beyond 10 hosts, and keys stay out of URLs and logs.
            response = self._session.post(self._base_url, data=data, timeout=self._timeout)
        except requests.RequestException as exc:
            raise RegistrarUnavailable(f"{command}: {exc}", provider="namecheap",
                                       zone=zone) from None
        if response.status_code >= 500:
            raise RegistrarUnavailable(f"{command}: HTTP {response.status_code}",
                                       provider="namecheap", zone=zone)
        try:
            root = ET.fromstring(response.content)
        except ET.ParseError:
            raise RegistrarError(f"{command}: HTTP {response.status_code}, not the XML API",
                                 provider="namecheap", zone=zone) from None
        if root.get("Status", "").upper() != "OK":
            raise _error(zone, command, root)
        return root


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _find(root: ET.Element, tag: str) -> ET.Element | None:
    return next((e for e in root.iter() if _local(e.tag) == tag), None)


def _error(zone: str, command: str, root: ET.Element) -> RegistrarError:
    errors = [e for e in root.iter() if _local(e.tag) == "Error"]
    number = errors[0].get("Number", "") if errors else ""
    text = "; ".join((e.text or "").strip() for e in errors) or "unknown error"
    if number in _ZONE_ERRORS:
        return ZoneNotFound(zone, provider="namecheap")
    if number in _AUTH_ERRORS:
        return AuthenticationFailed(f"{text} ({number})", provider="namecheap", zone=zone)
    return RegistrarError(f"{command}: {text} ({number})", provider="namecheap", zone=zone)


@register
class NamecheapProvider(RegistrarProvider):
    name = "namecheap"

    def __init__(self, *, api_user: str, api_key: str, client_ip: str,
                 username: str | None = None, base_url: str = PRODUCTION_URL,
                 session: requests.Session | None = None, timeout: float = 30.0) -> None:
        auth = {"ApiUser": api_user, "ApiKey": api_key, "UserName": username or api_user,
                "ClientIp": client_ip}
        self._client = _Client(base_url, auth, session or requests.Session(), timeout)

    def _list_records(self, zone: str) -> Iterable[Record]:
        for host in self._client.get_hosts(zone).hosts:
            record = _to_record(zone, host)
            if record is not None:
                yield record

    def _create_record(self, zone: str, record: Record) -> None:
        host_list = self._client.get_hosts(zone)
        if any(_matches(zone, host, record) for host in host_list.hosts):
            return
        host_list.hosts.append(_to_host(zone, record))
        if record.type == "MX":
            host_list.email_type = "MX"
        self._client.set_hosts(zone, host_list)

    def _delete_record(self, zone: str, record: Record) -> None:
        host_list = self._client.get_hosts(zone)
        kept = [host for host in host_list.hosts if not _matches(zone, host, record)]
        if len(kept) != len(host_list.hosts):
            self._client.set_hosts(zone, _HostList(kept, host_list.email_type))


def _to_record(zone: str, host: _Host) -> Record | None:
    if host.type not in _REPRESENTABLE:
        return None
    name = zone if host.name in ("@", "") else f"{host.name}.{zone}"
    value = f"{host.mx_pref} {host.address}" if host.type == "MX" else host.address
    try:
        return Record(name, host.type, value, int(host.ttl))
    except (InvalidRecord, ValueError):
        return None  # something Namecheap accepted and DNS would not; carried, not listed


def _to_host(zone: str, record: Record) -> _Host:
    name = "@" if record.name == zone else record.name[: -len(zone) - 1]
    if record.type == "MX":
        pref, _, exchange = record.value.partition(" ")
        return _Host(name, "MX", exchange + ".", pref, str(record.ttl))
    address = record.value + "." if record.type in ("CNAME", "NS") else record.value
    return _Host(name, record.type, address, "10", str(record.ttl))


def _matches(zone: str, host: _Host, record: Record) -> bool:
    found = _to_record(zone, host)
    return found is not None and found.key == record.key

"""Amazon Route53 through boto3.

Route53 keeps every value of one name and type in one record set, so adding or removing a
value rewrites the set: read it, UPSERT it with the value added or removed, DELETE it when
the last value goes (DELETE must repeat the set exactly as stored). TXT values travel quoted
and split into 255-byte strings; names may come back with ``\\052`` for ``*``.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable, TypeVar

import boto3
import botocore.exceptions

from dnsops.registrars import (AuthenticationFailed, InvalidRecord, Record, RegistrarError,
                                RegistrarProvider, RegistrarUnavailable, ZoneNotFound,
                                from_presentation, register, to_rdata)

T = TypeVar("T")

_AUTH_CODES = {"AccessDenied", "AccessDeniedException", "InvalidClientTokenId",
               "SignatureDoesNotMatch", "UnrecognizedClientException", "ExpiredToken",
               "InvalidAccessKeyId", "MissingAuthenticationToken"}
_INPUT_CODES = {"InvalidChangeBatch", "InvalidInput"}


def _unescape(name: str) -> str:
    """Route53 writes some characters of names as ``\\ooo`` octal escapes (``*`` is ``\\052``)."""
    return re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), name)


@register
class Route53Provider(RegistrarProvider):
    name = "route53"
    SUPPORTED_TYPES = frozenset({"A", "AAAA", "CNAME", "MX", "TXT", "CAA", "NS", "SRV"})

    def __init__(self, *, client: Any = None, endpoint_url: str | None = None,
                 region_name: str = "us-east-1", aws_access_key_id: str | None = None,
                 aws_secret_access_key: str | None = None) -> None:
        self._client = client or boto3.client(
            "route53", endpoint_url=endpoint_url, region_name=region_name,
            aws_access_key_id=aws_access_key_id, aws_secret_access_key=aws_secret_access_key)
        self._zone_ids: dict[str, str] = {}

    def _list_records(self, zone: str) -> Iterable[Record]:
        zone_id = self._zone_id(zone)
        pages = self._call(zone, lambda: list(
            self._client.get_paginator("list_resource_record_sets").paginate(
                HostedZoneId=zone_id)))
        for page in pages:
            for rrset in page["ResourceRecordSets"]:
                if rrset["Type"] != "SOA":
                    yield from self._records(rrset)

    def _create_record(self, zone: str, record: Record) -> None:
        existing = self._record_set(zone, record)
        values = [r.value for r in self._records(existing)] if existing else []
        if record.value in values:
            return
        ttl = existing["TTL"] if existing else record.ttl
        self._change(zone, "UPSERT", record, ttl, [*values, record.value])

    def _delete_record(self, zone: str, record: Record) -> None:
        existing = self._record_set(zone, record)
        if existing is None:
            return
        values = [r.value for r in self._records(existing)]
        if record.value not in values:
            return
        remaining = [v for v in values if v != record.value]
        if remaining:
            self._change(zone, "UPSERT", record, existing["TTL"], remaining)
        else:
            self._change_set(zone, "DELETE", existing)

    def _records(self, rrset: dict[str, Any]) -> list[Record]:
        # Alias records have no ResourceRecords: they are Route53's own and left alone.
        name = _unescape(rrset["Name"])
        return [from_presentation(name, rrset["Type"], rr["Value"], int(rrset.get("TTL", 300)))
                for rr in rrset.get("ResourceRecords", [])]

    def _record_set(self, zone: str, record: Record) -> dict[str, Any] | None:
        zone_id = self._zone_id(zone)
        found = self._call(zone, lambda: self._client.list_resource_record_sets(
            HostedZoneId=zone_id, StartRecordName=record.name + ".",
            StartRecordType=record.type, MaxItems="1"))
        for rrset in found["ResourceRecordSets"]:
            name = _unescape(rrset["Name"]).lower().rstrip(".")
            if name == record.name and rrset["Type"] == record.type and \
                    "SetIdentifier" not in rrset:
                return dict(rrset)
        return None

    def _change(self, zone: str, action: str, record: Record, ttl: int,
                values: list[str]) -> None:
        wire = [to_rdata(Record(record.name, record.type, v)).to_text() for v in values]
        self._change_set(zone, action, {
            "Name": record.name + ".", "Type": record.type, "TTL": ttl,
            "ResourceRecords": [{"Value": v} for v in wire]})

    def _change_set(self, zone: str, action: str, rrset: dict[str, Any]) -> None:
        zone_id = self._zone_id(zone)
        self._call(zone, lambda: self._client.change_resource_record_sets(
            HostedZoneId=zone_id,
            ChangeBatch={"Comment": "edge-router", "Changes": [
                {"Action": action, "ResourceRecordSet": rrset}]}))

    def _zone_id(self, zone: str) -> str:
        """The hosted zone's id, found by name (a public zone preferred over a private one)."""
        if zone not in self._zone_ids:
            found = self._call(zone, lambda: self._client.list_hosted_zones_by_name(
                DNSName=zone + ".", MaxItems="100"))
            matches = [z for z in found["HostedZones"]
                       if _unescape(z["Name"]).lower().rstrip(".") == zone]
            if not matches:
                raise ZoneNotFound(zone, provider=self.name)
            matches.sort(key=lambda z: bool(z.get("Config", {}).get("PrivateZone")))
            self._zone_ids[zone] = matches[0]["Id"]
        return self._zone_ids[zone]

    def _call(self, zone: str, operation: Callable[[], T]) -> T:
        """Run one API call, turning botocore's errors ours."""
        try:
            return operation()
        except botocore.exceptions.ClientError as exc:
            raise self._error(zone, exc) from None
        except botocore.exceptions.NoCredentialsError as exc:
            raise AuthenticationFailed(str(exc), provider=self.name, zone=zone) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise RegistrarUnavailable(str(exc), provider=self.name, zone=zone) from None

    def _error(self, zone: str, exc: botocore.exceptions.ClientError) -> RegistrarError:
        error = exc.response.get("Error") or {}
        # Some servers put the error under "Errors" (as moto does for a bad access key).
        nested = (exc.response.get("Errors") or {}).get("Error") or {}
        code = error.get("Code") or nested.get("Code") or ""
        message = error.get("Message") or nested.get("Message") or str(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code == "NoSuchHostedZone":
            self._zone_ids.pop(zone, None)
            return ZoneNotFound(zone, provider=self.name)
        if code in _AUTH_CODES or status in (401, 403):
            return AuthenticationFailed(f"{code or status}: {message}", provider=self.name,
                                        zone=zone)
        if code in _INPUT_CODES:
            return InvalidRecord(message, provider=self.name, zone=zone)
        if code == "Throttling" or status >= 500:
            return RegistrarUnavailable(f"{code or status}: {message}", provider=self.name,
                                        zone=zone)
        return RegistrarError(f"{code or status}: {message}", provider=self.name, zone=zone)

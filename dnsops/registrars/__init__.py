"""Registrar providers: create, delete and list DNS records in a publisher's zone.

One small interface (:class:`RegistrarProvider`), providers registered by name
(:func:`get_provider`), and :func:`ensure_records`, which creates only what is missing and
never adds to a record set that already answers for a name (:func:`plan_records`).
Each provider keeps its vendor's wire protocol inside its own module; vendor exceptions
(boto3, dnspython, requests) never leave it: callers only ever see :class:`RegistrarError`.

Record values use one form whatever the provider: TXT values are the text itself (no quotes,
long values not split), every other type is its DNS presentation form with names written
without the trailing dot (``"10 mail.example.com"``, ``"edge.platform.test"``).
"""
from __future__ import annotations

import abc
import dataclasses
import importlib
from typing import Any, ClassVar, Iterable

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT

from dnsops.errors import DnsError


class RegistrarError(DnsError):
    """Root of the registrar errors: ``provider`` and ``zone`` say where it happened."""

    def __init__(self, message: str, *, provider: str | None = None,
                 zone: str | None = None) -> None:
        super().__init__(f"{provider}: {message}" if provider else message)
        self.provider = provider
        self.zone = zone


class ZoneNotFound(RegistrarError):
    """The provider does not host this zone (or these credentials cannot see it)."""

    def __init__(self, zone: str, *, provider: str | None = None) -> None:
        super().__init__(f"zone {zone} is not hosted here", provider=provider, zone=zone)


class AuthenticationFailed(RegistrarError):
    """The provider refused our credentials (API key, TSIG key, access key)."""


class RegistrarUnavailable(RegistrarError):
    """The provider could not be reached or failed on its side; worth retrying later."""


class InvalidRecord(RegistrarError):
    """A record that cannot be stored: bad value, unsupported type, outside the zone."""

    def __init__(self, reason: str, *, value: object = None, provider: str | None = None,
                 zone: str | None = None) -> None:
        super().__init__(f"invalid record {value!r}: {reason}", provider=provider, zone=zone)
        self.reason = reason
        self.value = value


class UnknownProvider(RegistrarError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no registrar provider named {name!r} "
                         f"(known: {', '.join(provider_names())})")
        self.name = name


def normalize_name(name: str) -> str:
    """Lowercase, no trailing dot: the one form of zone and record names here."""
    return name.strip().lower().rstrip(".")


@dataclasses.dataclass(frozen=True)
class Record:
    """One value of one DNS record set; ``name`` is the FQDN without the trailing dot."""

    name: str
    type: str
    value: str
    ttl: int = 300

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", normalize_name(self.name))
        object.__setattr__(self, "type", self.type.strip().upper())
        if self.type != "TXT":
            object.__setattr__(self, "value", _canonical_value(self.type, self.value))

    @property
    def key(self) -> tuple[str, str, str]:
        """What identifies the record; the TTL is a property of it, not part of its identity."""
        return (self.name, self.type, self.value)


_NAME_VALUED = frozenset({"CNAME", "NS", "MX", "SRV", "PTR", "DNAME"})
"""Types whose value is names and numbers only: compared without regard to case."""


def _canonical_value(rdtype: str, value: str) -> str:
    try:
        rdata = dns.rdata.from_text(dns.rdataclass.IN, rdtype, value.strip(),
                                    origin=dns.name.root, relativize=False)
    except (dns.exception.DNSException, ValueError) as exc:
        raise InvalidRecord(str(exc) or type(exc).__name__, value=value) from None
    text = rdata.to_text().rstrip(".")
    return text.lower() if rdtype in _NAME_VALUED else text


def to_rdata(record: Record) -> dns.rdata.Rdata:
    """The record as dnspython rdata (names absolute, TXT split into 255-byte strings)."""
    if record.type == "TXT":
        data = record.value.encode()
        chunks = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
        return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, chunks)
    return dns.rdata.from_text(dns.rdataclass.IN, record.type, record.value,
                               origin=dns.name.root, relativize=False)


def from_rdata(name: str, ttl: int, rdata: dns.rdata.Rdata) -> Record:
    """The inverse of :func:`to_rdata`."""
    rdtype = dns.rdatatype.to_text(rdata.rdtype)
    if rdtype == "TXT":
        text = b"".join(rdata.strings).decode("utf-8", "replace")  # type: ignore[attr-defined]
        return Record(name, rdtype, text, ttl)
    return Record(name, rdtype, rdata.to_text(), ttl)


def from_presentation(name: str, rdtype: str, text: str, ttl: int) -> Record:
    """A record from a zone-file value (TXT quoted, as Route53 and zone files write it)."""
    try:
        rdata = dns.rdata.from_text(dns.rdataclass.IN, rdtype, text, origin=dns.name.root,
                                    relativize=False)
    except (dns.exception.DNSException, ValueError) as exc:
        raise InvalidRecord(str(exc) or type(exc).__name__, value=text) from None
    return from_rdata(name, ttl, rdata)


class RegistrarProvider(abc.ABC):
    """A place where a zone's records can be listed, created and deleted.

    The public methods normalize the zone, check the record belongs to it and that its type
    is supported, then call the ``_list_records``/``_create_record``/``_delete_record`` hooks.
    An implementer writes only the hooks, raising :class:`RegistrarError` subclasses for every
    failure (never a vendor exception), and declares its capabilities as class constants.
    """

    name: ClassVar[str] = ""
    SUPPORTED_TYPES: ClassVar[frozenset[str]] = frozenset({"A", "AAAA", "CNAME", "MX", "TXT",
                                                           "CAA"})
    SUPPORTS_TXT: ClassVar[bool] = True
    SUPPORTS_MULTIPLE_VALUES: ClassVar[bool] = True
    """Several values under one name and type (two TXT tokens side by side)."""

    def list_records(self, zone: str) -> list[Record]:
        """Every record of the zone we can represent (SOA left out), sorted."""
        return sorted(self._list_records(normalize_name(zone)), key=lambda r: r.key)

    def create_record(self, zone: str, record: Record) -> None:
        """Add one value; other values of the same name and type stay. Idempotent."""
        self._create_record(self._checked_zone(zone, record), record)

    def delete_record(self, zone: str, record: Record) -> None:
        """Remove one value (matched by name, type and value); deleting an absent one is a no-op."""
        self._delete_record(self._checked_zone(zone, record), record)

    def _checked_zone(self, zone: str, record: Record) -> str:
        zone = normalize_name(zone)
        if record.name != zone and not record.name.endswith("." + zone):
            raise InvalidRecord(f"{record.name} is not in zone {zone}", value=record.value,
                                provider=self.name, zone=zone)
        if record.type not in self.SUPPORTED_TYPES:
            raise InvalidRecord(f"{self.name} cannot store {record.type} records",
                                value=record.value, provider=self.name, zone=zone)
        return zone

    @abc.abstractmethod
    def _list_records(self, zone: str) -> Iterable[Record]:
        """Read the zone from the provider; raise :class:`ZoneNotFound` if it is not there."""

    @abc.abstractmethod
    def _create_record(self, zone: str, record: Record) -> None:
        """Add ``record`` keeping every other value; do nothing if it is already there."""

    @abc.abstractmethod
    def _delete_record(self, zone: str, record: Record) -> None:
        """Remove exactly this value, keeping the others; do nothing if it is absent."""


_ADDRESS = frozenset({"A", "AAAA"})
_DNSSEC = frozenset({"RRSIG", "NSEC", "NSEC3", "DNSKEY", "DS"})


@dataclasses.dataclass(frozen=True)
class Conflict:
    """Records we did not create: the name already answers with ``existing``, and ours beside
    them would split its traffic or could not coexist (a CNAME beside anything)."""

    name: str
    wanted: tuple[Record, ...]
    existing: tuple[Record, ...]

    @property
    def sentence(self) -> str:
        """What a person has to do about it, by hand."""
        theirs = ", ".join(f"{r.type} {r.value}" + (f" (from {r.name})" if r.name != self.name
                                                     else "") for r in self.existing)
        ours = ", ".join(f"{r.type} {r.value}" for r in self.wanted)
        return (f"{self.name} already has {theirs}: we did not add {ours} beside it; "
                f"replace {theirs} at {self.name} with {ours} by hand")


@dataclasses.dataclass(frozen=True)
class RecordPlan:
    """What :func:`plan_records` decided: the records to create, and those left to a person."""

    create: list[Record]
    conflicts: list[Conflict]


_TRAFFIC = _ADDRESS | {"CNAME"}


def _in_the_way(wanted: Record, existing: Record) -> bool:
    """Whether ``existing`` (not one of ours) at ``wanted``'s name keeps us from adding it."""
    if existing.type in _DNSSEC:
        return False
    if wanted.type == "CNAME" or existing.type == "CNAME":
        return True
    return wanted.type in _ADDRESS and existing.type in _ADDRESS


def _wildcard_answer(wanted: Record, present: list[Record]) -> list[Record]:
    """The traffic records a wildcard answers ``wanted``'s name with (RFC 4592: the name has
    no records at or below it; the wildcard of its closest existing ancestor answers), when
    ``wanted`` would take that traffic (an A/AAAA/CNAME on a name people visit)."""
    def exists(node: str) -> bool:
        return any(r.name == node or r.name.endswith("." + node) for r in present)

    if wanted.type not in _TRAFFIC or wanted.name.startswith("_") or exists(wanted.name):
        return []
    labels = wanted.name.split(".")
    encloser = next((".".join(labels[i:]) for i in range(1, len(labels))
                     if exists(".".join(labels[i:]))), None)
    return [r for r in present if r.name == f"*.{encloser}" and r.type in _TRAFFIC]


def plan_records(existing: Iterable[Record], desired: Iterable[Record]) -> RecordPlan:
    """Desired records against a zone's existing ones: create what is missing unless the name
    already answers otherwise. Another A/AAAA there (live traffic, also through a wildcard), a
    CNAME there, or anything where we want a CNAME, stops every record of ours at that name
    that it is in the way of; TXT records go beside other TXT (ownership and ACME values
    coexist)."""
    desired = list(dict.fromkeys(desired))
    ours = {r.key for r in desired}
    present = list(existing)
    keys = {r.key for r in present}
    create: list[Record] = []
    blocked: dict[str, tuple[list[Record], list[Record]]] = {}
    for record in desired:
        theirs = [e for e in present if e.name == record.name and e.key not in ours
                  and _in_the_way(record, e)] + [
            e for e in _wildcard_answer(record, present)
            if (record.name, e.type, e.value) not in ours]
        if theirs:
            wanted, found = blocked.setdefault(record.name, ([], []))
            wanted.append(record)
            found.extend(e for e in theirs if e not in found)
        elif record.key not in keys:
            create.append(record)
    return RecordPlan(create, [Conflict(name, tuple(wanted), tuple(found))
                               for name, (wanted, found) in blocked.items()])


def ensure_records(provider: RegistrarProvider, zone: str,
                   records: Iterable[Record]) -> RecordPlan:
    """Create what the zone lacks and can take (:func:`plan_records`), leave everything else
    untouched; return the plan: ``create`` is what was created, ``conflicts`` what was not."""
    plan = plan_records(provider.list_records(zone), records)
    for record in plan.create:
        provider.create_record(zone, record)
    return plan


_REGISTRY: dict[str, type[RegistrarProvider]] = {}
_BUILTIN = {"rfc2136": "dnsops.registrars.rfc2136", "route53": "dnsops.registrars.route53",
            "namecheap": "dnsops.registrars.namecheap"}


def register(cls: type[RegistrarProvider]) -> type[RegistrarProvider]:
    """Class decorator: make a provider available to :func:`get_provider` by its ``name``."""
    _REGISTRY[cls.name] = cls
    return cls


def provider_names() -> list[str]:
    return sorted(set(_REGISTRY) | set(_BUILTIN))


def get_provider(name: str, **config: Any) -> RegistrarProvider:
    """The provider registered as ``name``, built with ``config`` (its constructor's keywords)."""
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    cls = _REGISTRY.get(name)
    if cls is None:
        raise UnknownProvider(name)
    try:
        return cls(**config)
    except TypeError as exc:
        raise RegistrarError(f"bad configuration: {exc}", provider=name) from None

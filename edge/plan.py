"""Existing vs desired routes of a node, as a plan of creates/updates/deletes (octoDNS style)."""
from __future__ import annotations

import dataclasses
import re

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edge.errors import EdgeError
from edge.state import Route

MAX_DELETE_SHARE = 0.3
MIN_EXISTING_FOR_SHARE = 10
_PEM_BLOCK = re.compile(
    r"-----BEGIN ([A-Z0-9 ]{1,64})-----[A-Za-z0-9+/= \t\r\n]*-----END \1-----")
"""One PEM block (RFC 7468): base64 and whitespace between its BEGIN and END lines."""


class UnsafePlan(EdgeError):
    """The plan would take down too many routes at once; apply it with ``force``."""


class CertificateRejected(EdgeError):
    def __init__(self, hostname: str, reason: str) -> None:
        super().__init__(f"certificate for {hostname} refused: {reason}")
        self.hostname = hostname


@dataclasses.dataclass(frozen=True)
class Change:
    action: str  # "create", "update" or "delete"
    hostname: str
    existing: Route | None
    desired: Route | None

    @property
    def cert_changed(self) -> bool:
        return self.desired is not None and (self.existing is None
                                             or self.existing.pem != self.desired.pem)

    def describe(self) -> str:
        if self.action == "create" and self.desired:
            return f"+ {self.hostname} -> {self.desired.publication_id} (new certificate)"
        if self.action == "delete" and self.existing:
            return f"- {self.hostname} (was {self.existing.publication_id})"
        assert self.existing and self.desired
        parts = []
        if self.existing.publication_id != self.desired.publication_id:
            parts.append(f"{self.existing.publication_id} -> {self.desired.publication_id}")
        if self.cert_changed:
            parts.append("new certificate")
        if self.existing.extras != self.desired.extras:
            parts.append(f"extras {self.desired.extras or 'none'}")
        return f"~ {self.hostname}: {', '.join(parts)}"


@dataclasses.dataclass
class Plan:
    changes: list[Change]
    existing_count: int

    def describe(self) -> list[str]:
        return [change.describe() for change in self.changes] or ["no changes"]

    def raise_if_unsafe(self, force: bool = False) -> None:
        refuse_mass_delete(sum(1 for c in self.changes if c.action == "delete"),
                           self.existing_count, "routes", force)

    def check_certificates(self) -> None:
        """Refuse a plan with a certificate HAProxy could not load, before touching HAProxy."""
        for change in self.changes:
            if change.cert_changed and change.desired is not None:
                check_pem(change.desired)


def refuse_mass_delete(deletes: int, existing: int, what: str, force: bool = False) -> None:
    """Raise :class:`UnsafePlan` if ``deletes`` is more than ``MAX_DELETE_SHARE`` of the
    ``existing`` ``what`` (routes, short links) a node serves, unless forced: a bug or an empty
    store must not take them offline at once."""
    if force or existing < MIN_EXISTING_FOR_SHARE:
        return
    if deletes > existing * MAX_DELETE_SHARE:
        raise UnsafePlan(f"plan removes {deletes} of {existing} {what} "
                         f"(more than {MAX_DELETE_SHARE:.0%}); refused unless forced")


def make_plan(existing: dict[str, Route], desired: dict[str, Route]) -> Plan:
    """The changes, by hostname. One pass over both dicts and a sort of the changes only: an
    agent hands back the same Route objects for unchanged routes, so most compare by identity
    (a one-route change at 100,000 routes must not sort or compare 100,000 PEMs)."""
    changes = []
    for hostname, new in desired.items():
        old = existing.get(hostname)
        if old is None:
            changes.append(Change("create", hostname, None, new))
        elif old is not new and old != new:
            changes.append(Change("update", hostname, old, new))
    changes.extend(Change("delete", hostname, old, None)
                   for hostname, old in existing.items() if hostname not in desired)
    changes.sort(key=lambda change: change.hostname)
    return Plan(changes, len(existing))


def check_pem(route: Route) -> None:
    """A certificate and its key, and nothing but whitespace outside their PEM blocks (an ACME
    chain holds none, RFC 8555 9.1): text there could only be meant for someone else."""
    try:
        cert = x509.load_pem_x509_certificate(route.pem.encode())
        key = serialization.load_pem_private_key(route.pem.encode(), password=None)
    except ValueError as exc:
        raise CertificateRejected(route.hostname, f"not a certificate and key in PEM ({exc})") \
            from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(serialization.Encoding.DER, public) != \
            key.public_key().public_bytes(serialization.Encoding.DER, public):
        raise CertificateRejected(route.hostname, "the private key does not match the certificate")
    if _PEM_BLOCK.sub("", route.pem).strip(" \t\r\n"):
        raise CertificateRejected(route.hostname, "text outside its PEM blocks")


def make_delta_plan(existing: dict[str, Route], changed: dict[str, Route | None]) -> Plan:
    """The plan of a delta: ``changed`` maps each hostname it touches to its new route, or None
    (removed). Only those hostnames are compared; the share of deletes is still counted
    against every route of ``existing``."""
    touched = {hostname: existing[hostname] for hostname in changed if hostname in existing}
    plan = make_plan(touched, {h: route for h, route in changed.items() if route is not None})
    return Plan(plan.changes, len(existing))

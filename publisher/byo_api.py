"""The publisher API for a domain's own certificate: ``PUT``, ``GET`` and ``DELETE
/api/v1/domains/<hostname>/certificate`` (same tokens and scoping as the other domain calls)."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel, Field

from certs.byo import MAX_CHAIN_CHARS, MAX_KEY_CHARS, UploadRejected
from certs.uploads import public_view
from domains.byo import CustomCertificates, NoUpload
from domains.errors import PUBLISHER_ERRORS, DnsError, DomainError
from domains.service import ROUTED
from kit.api import RequestModel, operation
from kit.auth import require_platform_or_publication
from kit.web import api_error, use
from publisher import auth
from store import ConflictError

bp = Blueprint("domains_byo_api", __name__, url_prefix="/api/v1/domains")


class UploadCertificate(RequestModel):
    """A certificate chain (PEM: yours first, then its intermediates; the root may be left
    out) and its private key (PEM, unencrypted: we encrypt it at rest)."""

    certificate: str = Field(description=f"PEM, at most {MAX_CHAIN_CHARS // 1024} KiB")
    private_key: str = Field(description=f"PEM, at most {MAX_KEY_CHARS // 1024} KiB")


class UploadedCertificate(BaseModel):
    hostname: str
    upload_id: str
    fingerprint: str = Field(description="SHA-256 of the certificate (DER), hex")
    names: list[str]
    not_before: str
    not_after: str
    issuer: str
    serial: str
    uploaded_at: str
    fallback_at: float | None = Field(description="when the ACME certificate is served again "
                                      "(epoch seconds; null once it is)")
    retired: bool
    served: bool = Field(description="the edge serves it now (the domain is routed: active or "
                                     "awaiting_traffic; and its fallback time has not come)")


class UploadRemoved(BaseModel):
    removed: str


def _custom() -> CustomCertificates:
    return use(CustomCertificates)


def _view(domain: dict[str, Any], upload: dict[str, Any] | None = None) -> dict[str, Any]:
    """The domain's upload as stored (or ``upload``, when its write is still in the outbox)."""
    uploads = _custom().uploads
    view = uploads.describe(domain["hostname"]) or (public_view(upload) if upload else None)
    if view is None:
        raise NoUpload(domain["hostname"])
    return {**view, "served": domain["status"] in ROUTED and uploads.in_time(view)}


@bp.errorhandler(UploadRejected)
def rejected(exc: UploadRejected) -> tuple[Response, int]:
    return api_error(str(exc), 400, exc.code, field=exc.field)


@bp.errorhandler(DomainError)
@bp.errorhandler(DnsError)
def domain_error(exc: DomainError | DnsError) -> tuple[Response, int]:
    return api_error(str(exc), exc.status)


@bp.errorhandler(ConflictError)
def conflict(exc: ConflictError) -> tuple[Response, int]:
    return api_error(f"{exc.key} changed while we worked on it; try again", 409)


@bp.put("/<hostname>/certificate")
@require_platform_or_publication
@operation(summary="Serve your own certificate for a domain (ours stays as the fallback)",
           auth="platform_or_publication", body=UploadCertificate,
           responses={200: UploadedCertificate, 404: None, 409: None})
def upload(hostname: str, body: UploadCertificate) -> Response:
    """Checked before it is stored: the key matches the certificate, its names cover the
    host, it is valid now and beyond ``byo_fallback_days``, and the chain builds. Each
    refusal is a 400 with one sentence. 409 while the domain's DNS is not verified yet."""
    domain = auth.api_domain(hostname)
    checked = _custom().check(domain["hostname"], body.certificate, body.private_key)
    stored, sealed = _custom().upload(domain, checked)
    return jsonify(_view(stored, sealed))


@bp.get("/<hostname>/certificate")
@require_platform_or_publication
@operation(summary="A domain's own certificate (never its key)", auth="platform_or_publication",
           responses={200: UploadedCertificate, 404: None})
def show(hostname: str) -> Response:
    return jsonify(_view(auth.api_domain(hostname)))


@bp.delete("/<hostname>/certificate")
@require_platform_or_publication
@operation(summary="Remove a domain's own certificate: ours is served again",
           auth="platform_or_publication", responses={200: UploadRemoved, 404: None, 409: None})
def remove(hostname: str) -> Response:
    domain = auth.api_domain(hostname)
    _custom().remove(domain)
    return jsonify(removed=domain["hostname"])

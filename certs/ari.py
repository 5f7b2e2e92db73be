"""ACME Renewal Information (RFC 9773): the certificate identifier, and a NewOrder that says
which certificate it replaces (the `acme` library's NewOrder has no ``replaces`` field yet).

A renewal that names the certificate it replaces lets the CA exempt it from rate limits.
"""
from __future__ import annotations

import base64
import math

import josepy as jose
from acme import messages
from cryptography import x509


def cert_id(cert: x509.Certificate) -> str:
    """base64url(authority key identifier) "." base64url(serial as a DER INTEGER body)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    serial = cert.serial_number
    serial_bytes = serial.to_bytes(math.ceil((serial.bit_length() + 1) / 8), "big", signed=True)
    return f"{_b64(aki.key_identifier or b'')}.{_b64(serial_bytes)}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


class NewOrderReplacing(messages.NewOrder):
    """NewOrder with RFC 9773's ``replaces`` (the certID of the certificate being renewed)."""

    replaces: str = jose.field("replaces", omitempty=True)

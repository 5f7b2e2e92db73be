"""Helpers for tests that talk to a real HAProxy: self-signed certs and TLS requests by SNI."""
from __future__ import annotations

import datetime
import http.client
import json
import socket
import ssl
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed_pem(hostname: str) -> tuple[str, str]:
    """(cert PEM, combined cert+key PEM) for ``hostname``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return cert_pem, cert_pem + key_pem


def https_get(port: int, hostname: str, path: str = "/", cafile: str | None = None,
              cadata: str | None = None, headers: dict[str, str] | None = None
              ) -> tuple[int, dict[str, str], bytes, x509.Certificate]:
    """GET over TLS to 127.0.0.1:port with SNI and Host ``hostname``; verifies against the CA given."""
    context = ssl.create_default_context(cafile=cafile, cadata=cadata)
    if cafile is None and cadata is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    # http.client would send SNI for 127.0.0.1: connect ourselves with the name we want.
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn.sock = context.wrap_socket(raw, server_hostname=hostname)
    der = conn.sock.getpeercert(binary_form=True)
    conn.request("GET", path, headers={"Host": hostname, **(headers or {})})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), body, x509.load_der_x509_certificate(der)


def json_body(body: bytes) -> Any:
    return json.loads(body.decode())

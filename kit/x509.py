"""Small X.509 builders for certificates we sign ourselves: a node's fallback certificate,
the test CA for Pebble's listener, and the certificates tests and benchmarks serve."""
from __future__ import annotations

import datetime
import ipaddress
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
_CA_USAGE = x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          key_cert_sign=True, crl_sign=True, encipher_only=False,
                          decipher_only=False)


def build_certificate(common_name: str, key: PrivateKey, *, signer: PrivateKey | None = None,
                      issuer: x509.Name | None = None, names: Sequence[str] = (),
                      ca: bool = False, days: float = 30) -> x509.Certificate:
    """A certificate for ``key``, signed by ``signer`` (itself when None).

    ``names`` become subjectAltNames: IP literals as IP addresses, the rest as DNS names.
    """
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer or subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=days)))
    # The extensions a public CA's certificates carry, so ours pass a WebPKI path check
    # (cryptography.x509.verification) like any publisher's certificate would.
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                                    critical=False).add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key((signer or key).public_key()),
        critical=False)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0),
                                        critical=True).add_extension(_CA_USAGE, critical=True)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [_general_name(name) for name in names]), critical=False)
    return builder.sign(signer or key, hashes.SHA256())


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def cert_to_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def self_signed(hostname: str, key: PrivateKey | None = None, days: int = 30) -> tuple[str, str]:
    """(certificate PEM, certificate + key PEM) for ``hostname``."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    cert = cert_to_pem(build_certificate(hostname, key, names=[hostname], days=days))
    return cert, cert + key_to_pem(key)


def key_to_pem(key: PrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


class LocalCA:
    """A private CA made on the spot (the demo's and the tests' control channel): it signs
    the control service's certificate and the agents' client certificates."""

    def __init__(self, days: int = 365) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._days = days
        self.cert = build_certificate("edge-router local CA", self._key, ca=True, days=days)
        self.pem = cert_to_pem(self.cert)

    def issue(self, names: Sequence[str], days: float | None = None) -> tuple[str, str]:
        """(certificate PEM, key PEM) for ``names`` (the first is the common name), valid
        for ``days`` (the CA's own lifetime when None)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = build_certificate(names[0], key, signer=self._key, issuer=self.cert.subject,
                                 names=names, days=self._days if days is None else days)
        return cert_to_pem(cert), key_to_pem(key)


def local_ca_and_server(names: Sequence[str], days: int = 365) -> tuple[str, str, str]:
    """(CA certificate PEM, server certificate PEM, server key PEM) from a new :class:`LocalCA`."""
    ca = LocalCA(days)
    return (ca.pem, *ca.issue(names))

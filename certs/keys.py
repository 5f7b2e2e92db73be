"""Certificate private keys: generated here, serialized, put in CSRs. They are encrypted at rest
by ``kit.vault.KeyVault``, never logged or returned."""
from __future__ import annotations

from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from kit.x509 import PrivateKey


def generate_key(kind: str = "ec256") -> PrivateKey:
    if kind == "ec256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind in ("rsa2048", "rsa3072"):
        return rsa.generate_private_key(65537, int(kind[3:]))
    raise ValueError(f"unknown key type {kind!r}")


def key_to_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def key_from_pem(pem: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise ValueError("unsupported key type")
    return key


def make_csr(key: PrivateKey, hostnames: Sequence[str]) -> bytes:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hostnames]),
                          critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)

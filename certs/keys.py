"""Private keys: generated here, encrypted at rest with MultiFernet, never logged or returned."""
from __future__ import annotations

from typing import Sequence

from cryptography import x509
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class KeyVaultError(Exception):
    """A stored secret could not be decrypted (wrong or rotated-away key)."""


class KeyVault:
    """Encrypts secrets under the first key; decrypts under any (so keys rotate without downtime)."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("at least one encryption key is needed")
        self._fernet = MultiFernet([Fernet(key.encode()) for key in keys])

    def encrypt(self, secret: bytes) -> str:
        return self._fernet.encrypt(secret).decode("ascii")

    def decrypt(self, token: str) -> bytes:
        try:
            return self._fernet.decrypt(token.encode("ascii"))
        except InvalidToken:
            raise KeyVaultError("stored secret cannot be decrypted with the configured keys") \
                from None

    def rotate(self, token: str) -> str:
        """The same secret encrypted under the first (newest) key."""
        try:
            return self._fernet.rotate(token.encode("ascii")).decode("ascii")
        except InvalidToken:
            raise KeyVaultError("stored secret cannot be decrypted with the configured keys") \
                from None

    def __repr__(self) -> str:
        return "KeyVault(<redacted>)"


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

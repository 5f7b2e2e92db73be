"""Secrets at rest: encrypted with MultiFernet under the first configured key, decrypted under
any, so keys rotate without downtime (``edgectl keys rotate``)."""
from __future__ import annotations

from typing import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from kit.errors import EdgeRouterError


class KeyVaultError(EdgeRouterError):
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

"""Per-publication API tokens: a bearer that sees and changes only its publication's short links.

The platform's ``api_token`` still sees everything. Tokens are 256 random bits, so a plain
SHA-256 of each is what is stored (a slow password hash would buy nothing); the token itself is
shown once, when it is created (``edgectl tokens create``).
"""
from __future__ import annotations

import hashlib
import re
import secrets
import time
from typing import Callable

from store import ABSENT, Item, Table, TableSpec, all_items

API_TOKENS = TableSpec("api_tokens", key="token_hash", indexes=("publication_id",))
PUBLICATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
"""A publication id (use with ``fullmatch``). Ids starting with "_" are the platform's own
(``_platform``), so no token or publisher call can name them."""
PUBLICATION_ID_RULE = ("1-128 letters, digits, '_', '.', ':' or '-', "
                       "starting with a letter or digit")
PREFIX = "ept_"
"""Recognizable in logs and secret scanners: edge publication token."""


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class PublicationTokens:
    def __init__(self, table: Table, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.table = table

    def create(self, publication_id: str, label: str = "") -> tuple[str, Item]:
        """A new token for ``publication_id``: (the token, shown once; its stored record)."""
        if not PUBLICATION_ID.fullmatch(publication_id):
            raise ValueError(f"a publication id is {PUBLICATION_ID_RULE}")
        token = PREFIX + secrets.token_urlsafe(32)
        digest = _hash(token)
        item = self.table.put({"token_hash": digest, "token_id": digest[:12],
                               "publication_id": publication_id, "label": label,
                               "created_at": self._clock()}, expected_version=ABSENT)
        return token, item

    def publication_of(self, token: str) -> str | None:
        """The publication a bearer token belongs to, or None if it is not one of ours."""
        if not token.startswith(PREFIX):
            return None
        item = self.table.get(_hash(token))
        return str(item["publication_id"]) if item is not None else None

    def list_for(self, publication_id: str) -> list[Item]:
        return self.table.query("publication_id", publication_id, limit=1000).items

    def revoke(self, token_id: str) -> bool:
        """Delete the token whose id (the first 12 hex digits of its hash) is ``token_id``."""
        for item in all_items(self.table):
            if item["token_id"] == token_id:
                return self.table.delete(item["token_hash"])
        return False

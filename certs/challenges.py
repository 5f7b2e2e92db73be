"""HTTP-01 key authorizations, shared through the table so any control replica can answer."""
from __future__ import annotations

import re
import time
from typing import Callable

from flask import Blueprint, Response, abort

from kit.web import use
from store import Table, TableSpec

CHALLENGES = TableSpec("acme_challenges", key="token", expiring=True)
TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,256}$")
CHALLENGE_TTL = 900.0


class ChallengeStore:
    def __init__(self, table: Table, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.table = table

    def add(self, token: str, key_authorization: str) -> None:
        self.table.put({"token": token, "key_authorization": key_authorization,
                        "expires_at": self._clock() + CHALLENGE_TTL})

    def get(self, token: str) -> str | None:
        item = self.table.get(token) if TOKEN.fullmatch(token) else None
        return None if item is None else str(item["key_authorization"])

    def remove(self, token: str) -> None:
        self.table.delete(token)


bp = Blueprint("acme_challenge", __name__)


@bp.get("/.well-known/acme-challenge/<token>")
def answer(token: str) -> Response:
    store = use(ChallengeStore)
    key_authorization = store.get(token)
    if key_authorization is None:
        abort(404)
    return Response(key_authorization, mimetype="text/plain")

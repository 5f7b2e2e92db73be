"""Publication tokens for the operator (``edgectl tokens``): create one (shown once), list a
publication's, revoke one. Behind the platform's token, so the CLI needs no store access and no
encryption key (only a hash of each token is stored)."""
from __future__ import annotations

import datetime

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel, Field

from admin.web import admin
from kit.api import RequestModel, operation
from kit.auth import require_platform_token
from kit.tokens import PUBLICATION_ID, PUBLICATION_ID_RULE
from kit.web import api_error
from store import Item

bp = Blueprint("tokens_api", __name__, url_prefix="/api/v1/ops")


class NewToken(RequestModel):
    label: str = Field("", max_length=64, description="What the token is for (shown in lists)")


class TokenView(BaseModel):
    token_id: str = Field(description="The first 12 hex digits of the token's hash: what "
                          "revoke takes")
    publication_id: str
    label: str
    created_at: str = Field(description="ISO 8601, UTC")


class CreatedToken(TokenView):
    token: str = Field(description="The bearer token, shown this once (only its hash is kept)")


class TokenList(BaseModel):
    tokens: list[TokenView]


class Revoked(BaseModel):
    revoked: str


def _view(item: Item) -> dict[str, str]:
    created = datetime.datetime.fromtimestamp(float(item["created_at"]), datetime.timezone.utc)
    return {"token_id": item["token_id"], "publication_id": item["publication_id"],
            "label": item.get("label", ""), "created_at": created.isoformat(timespec="seconds")}


def _refused(publication_id: str) -> tuple[Response, int] | None:
    if PUBLICATION_ID.fullmatch(publication_id):
        return None
    return api_error(f"a publication id is {PUBLICATION_ID_RULE}", 400, field="publication_id")


@bp.post("/publications/<publication_id>/tokens")
@require_platform_token
@operation(summary="A new token that acts for this publication only (shown once)",
           auth="platform", body=NewToken, responses={201: CreatedToken})
def create(publication_id: str, body: NewToken) -> tuple[Response, int]:
    refused = _refused(publication_id)
    if refused is not None:
        return refused
    token, item = admin().services.tokens.create(publication_id, body.label)
    return jsonify(token=token, **_view(item)), 201


@bp.get("/publications/<publication_id>/tokens")
@require_platform_token
@operation(summary="A publication's tokens (never the tokens themselves)", auth="platform",
           responses={200: TokenList})
def list_tokens(publication_id: str) -> Response | tuple[Response, int]:
    refused = _refused(publication_id)
    if refused is not None:
        return refused
    return jsonify(tokens=[_view(item) for item in
                           admin().services.tokens.list_for(publication_id)])


@bp.delete("/tokens/<token_id>")
@require_platform_token
@operation(summary="Revoke a token: it stops working at once", auth="platform",
           responses={200: Revoked, 404: None})
def revoke(token_id: str) -> Response | tuple[Response, int]:
    if not admin().services.tokens.revoke(token_id):
        return api_error(f"no token {token_id}", 404, "not_found")
    return jsonify(revoked=token_id)

"""`edgectl tokens create|list|revoke`: a publication's API tokens, through the operator API
(no store access, no encryption key on the operator's machine)."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from edgectl.ops.base import actions, body, operator_command
from edgectl.ops.client import OK, ControlClient, segment
from edgectl.ops.output import emit, rows_or, table

if TYPE_CHECKING:
    from rich.console import Console


def _path(publication: str) -> str:
    return f"/api/v1/ops/publications/{segment(publication)}/tokens"


def create(args: argparse.Namespace, client: ControlClient) -> int:
    emit(args, client.post(_path(args.publication), body(label=args.label)), _created)
    return OK


def _created(out: Console, token: dict[str, Any]) -> None:
    out.print(f"token {token['token_id']} for {token['publication_id']} "
              "(shown once, store it now):")
    print(token["token"])  # plain, never wrapped: it is copied as it is


def list_tokens(args: argparse.Namespace, client: ControlClient) -> int:
    emit(args, client.get(_path(args.publication)), _list)
    return OK


def _list(out: Console, data: dict[str, Any]) -> None:
    rows_or(out, table("tokens", ("token id", "label", "created"),
                       ((t["token_id"], t["label"], t["created_at"]) for t in data["tokens"])),
            "no token for this publication")


def revoke(args: argparse.Namespace, client: ControlClient) -> int:
    emit(args, client.delete(f"/api/v1/ops/tokens/{segment(args.token_id)}"),
         lambda out, data: out.print(f"revoked {data['revoked']}: it stops working now"))
    return OK


def _publication(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("publication", metavar="PUBLICATION_ID")


def _create_arguments(parser: argparse.ArgumentParser) -> None:
    _publication(parser)
    parser.add_argument("--label", default="", help="what the token is for")


def _revoke_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("token_id", metavar="TOKEN_ID", help="as `tokens list` shows it")


operator_command("tokens", "per-publication API tokens (they act for that publication only)",
                 actions({
                     "create": ("a new token for a publication, shown once", create,
                                _create_arguments),
                     "list": ("a publication's tokens (ids and labels, never the tokens)",
                              list_tokens, _publication),
                     "revoke": ("revoke a token: it stops working at once", revoke,
                                _revoke_arguments)}))

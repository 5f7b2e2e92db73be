"""`edgectl status`, `edgectl nodes` and `edgectl certs list`: what the fleet looks like."""
from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING, Any

from edgectl.ops.base import actions, leaf, operator_command
from edgectl.ops.client import OK, ControlClient
from edgectl.ops.output import ago, cell, emit, more, pairs, rows_or, table, when

if TYPE_CHECKING:
    from rich.console import Console

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([dhw]?)\s*$")
_DAYS = {"": 1.0, "d": 1.0, "h": 1 / 24, "w": 7.0}


def status(args: argparse.Namespace, client: ControlClient) -> int:
    emit(args, client.get("/api/v1/ops/status"), lambda out, data: _status(out, data, client))
    return OK


def _status(out: Console, data: dict[str, Any], client: ControlClient) -> None:
    domains, certs, edge = data["domains"], data["certificates"], data["edge"]
    out.print(pairs(f"control service {client.urls[0]}", [
        ("version", data["version"]), ("store", data["storage_backend"])]))
    counts = [(name, count) for name, count in domains["by_status"].items() if count]
    out.print(pairs("domains", counts + [("total", domains["total"]),
                                         ("failing", domains["failing"])]))
    out.print(pairs("certificates", [
        ("expired", certs["expired"]), ("expiring within 7 days", certs["expiring_7d"]),
        ("expiring within 30 days", certs["expiring_30d"]),
        ("next expiry", when(certs["next_expiry"]))]))
    out.print(pairs("edge", [
        ("desired version", edge["desired_version"]), ("nodes", edge["nodes"]),
        ("in sync", f"{edge['in_sync']} of {edge['nodes']}"),
        ("HAProxy running", f"{edge['haproxy_running']} of {edge['nodes']}")]))
    if data.get("links") is not None:
        out.print(pairs("short links", [(name, data["links"][name])
                                        for name in ("links", "disabled", "visits")]))


def nodes(args: argparse.Namespace, client: ControlClient) -> int:
    emit(args, client.get("/api/v1/edge/nodes"), _nodes)
    return OK


def _nodes(out: Console, data: dict[str, Any]) -> None:
    rows_or(out, table(f"edge nodes (desired version {cell(data['desired_version'])})",
                    ("node", "applied version", "in sync", "behind by", "last report",
                     "HAProxy", "error"),
                    ((node["node_id"], node.get("applied_version"), node["in_sync"],
                      ago(node["lag_seconds"]).removesuffix(" ago") if node["lag_seconds"]
                      else "-", ago(node["last_seen_seconds"]), node.get("haproxy_running"),
                      node.get("error")) for node in data["nodes"])),
            "no edge node has reported yet")


def days(text: str) -> float:
    """``30d``, ``12h``, ``2w`` or a number of days."""
    found = _DURATION.match(text)
    if found is None or float(found.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30d, 12h or 2w")
    return float(found.group(1)) * _DAYS[found.group(2)]


def certs_list(args: argparse.Namespace, client: ControlClient) -> int:
    emit(args, client.get("/api/v1/ops/certificates", within_days=args.expiring,
                          limit=args.limit, cursor=args.cursor), _certificates)
    return OK


def _certificates(out: Console, data: dict[str, Any]) -> None:
    rows_or(out, table("certificates", ("hostname", "expires", "days left", "names", "issuer",
                                     "key"),
                    ((cert["hostname"], when(cert["not_after"]), cert["days_left"],
                      cert["names"], cert["issuer"], cert["key_type"])
                     for cert in data["certificates"])), "no certificate matches")
    more(out, data.get("next_cursor"))


def _certs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--expiring", type=days, metavar="DURATION",
                        help="only those expiring within it (30d, 12h, 2w; expired ones too), "
                             "soonest first")
    paging(parser)


def limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 500:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 1 to 500")
    return int(text)


def paging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=limit, default=100, metavar="N",
                        help="at most N (1-500, default 100)")
    parser.add_argument("--cursor", help="the next page (printed after a full page)")


operator_command("status", "the control service at a glance (domains, certificates, edge, "
                 "links)", leaf(status))
operator_command("nodes", "the edge nodes and the version each serves", leaf(nodes))
operator_command("certs", "stored certificates (never their keys)", actions({
    "list": ("certificates, all or those expiring soon", certs_list, _certs_arguments)}))

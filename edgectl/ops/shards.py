"""`edgectl shards list|add|remove|pin|unpin|force-routers`: the edge shards and the pinned
hostnames, through the operator API (the control service checks every change and refuses it
with a sentence); and the routers forced past their safety check."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from edgectl.ops.base import actions, operator_command
from edgectl.ops.client import OK, ControlClient, segment
from edgectl.ops.output import emit, rows_or, table

if TYPE_CHECKING:
    from rich.console import Console

SHARDS = "/api/v1/ops/shards"
OVERRIDES = "/api/v1/ops/shard-overrides"
ROUTER_FORCE = "/api/v1/ops/router/force"


def node(text: str) -> dict[str, Any]:
    """``HOST:HTTPS_PORT:HTTP_PORT`` (an IPv6 address in brackets) -> the API's node."""
    host, _, ports = text.rpartition("]") if text.startswith("[") else ("", "", text)
    parts = ports.lstrip(":").split(":") if host else ports.rsplit(":", 2)
    if host:
        parts = [host.lstrip("["), *parts]
    if len(parts) != 3 or not parts[0] or not all(p.isdigit() for p in parts[1:]):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a node as HOST:HTTPS_PORT:HTTP_PORT, e.g. 10.0.1.5:8443:8080")
    return {"host": parts[0], "https_port": int(parts[1]), "http_port": int(parts[2])}


def list_shards(args: argparse.Namespace, client: ControlClient) -> int:
    emit(args, client.get(SHARDS), _list)
    return OK


def _list(out: Console, data: dict[str, Any]) -> None:
    if not data["shards"]:
        out.print("no shard configured: one default shard, no router")
    else:
        out.print(table("shards", ("shard", "nodes (host:https:http)", "pinned", "routes",
                                   "moving in/out"), (
            (s["name"] + (" (draining)" if s.get("draining") else ""),
             ", ".join(f"{n['host']}:{n['https_port']}:{n['http_port']}" for n in s["nodes"]),
             s["pinned"], "unknown" if s.get("routes") is None else s["routes"],
             f"{s.get('moving_in', 0)}/{s.get('moving_out', 0)}") for s in data["shards"])))
    rows_or(out, table("pinned hostnames", ("hostname", "shard"),
                       ((o["hostname"], o["shard"]) for o in data["overrides"])),
            "no hostname pinned (the hash assigns every one)")


def _changed(what: str) -> Any:
    def render(out: Console, data: dict[str, Any]) -> None:
        out.print(f"{what} (registry revision {data['revision']})")
    return render


def add(args: argparse.Namespace, client: ControlClient) -> int:
    emit(args, client.request("PUT", f"{SHARDS}/{segment(args.name)}",
                              json={"nodes": args.node}),
         _changed(f"shard {args.name}: {len(args.node)} node(s)"))
    return OK


def remove(args: argparse.Namespace, client: ControlClient) -> int:
    emit(args, client.delete(f"{SHARDS}/{segment(args.name)}"),
         _changed(f"shard {args.name} drains: its hostnames move off, then it goes"))
    return OK


def pin(args: argparse.Namespace, client: ControlClient) -> int:
    emit(args, client.request("PUT", f"{OVERRIDES}/{segment(args.hostname)}",
                              json={"shard": args.shard}),
         _changed(f"{args.hostname} pinned to shard {args.shard}"))
    return OK


def unpin(args: argparse.Namespace, client: ControlClient) -> int:
    emit(args, client.delete(f"{OVERRIDES}/{segment(args.hostname)}"),
         _changed(f"{args.hostname} unpinned: the hash assigns it"))
    return OK


def force_routers(args: argparse.Namespace, client: ControlClient) -> int:
    emit(args, client.request("POST", ROUTER_FORCE, json={"version": args.version}),
         lambda out, data: out.print(f"routers may take version {data['forced']} even if it "
                                     "takes off most of their entries"))
    return OK


def _version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("version", metavar="VERSION",
                        help="the router version the routers refuse: their error (`edgectl "
                        "nodes`) names it with the removal; a stale one is refused")


def _name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="SHARD")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    _name(parser)
    parser.add_argument("--node", type=node, action="append", required=True,
                        metavar="HOST:HTTPS_PORT:HTTP_PORT",
                        help="a node's binds that accept the PROXY protocol (repeat per node)")


def _pin_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hostname", metavar="HOSTNAME")
    parser.add_argument("shard", metavar="SHARD")


def _unpin_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hostname", metavar="HOSTNAME")


operator_command("shards", "edge shards and the hostnames pinned to them", actions({
    "list": ("the shards, their nodes and the pinned hostnames", list_shards, None),
    "add": ("add a shard, or replace its nodes", add, _add_arguments),
    "remove": ("remove a shard: it drains (its hostnames move off), then goes", remove, _name),
    "pin": ("serve a hostname from a shard, whatever the hash says", pin, _pin_arguments),
    "unpin": ("let the hash assign a hostname again", unpin, _unpin_arguments),
    "force-routers": ("let the routers take a version that takes off most of their entries",
                      force_routers, _version)}))

"""`edgectl domains list|show|connect|check|remove`, through the publisher API (the platform's
token acts for every publication) and the operator's list of every publication's domains."""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from edgectl.ops.base import actions, body, fail, operator_command
from edgectl.ops.client import NOT_YET, OK, USAGE, ControlClient, segment
from edgectl.ops.fleet import paging
from edgectl.ops.output import emit, more, pairs, rows_or, table, when

if TYPE_CHECKING:
    from rich.console import Console

API = "/api/v1/domains"


def list_domains(args: argparse.Namespace, client: ControlClient) -> int:
    if args.publication:
        data = client.get(API, publication_id=args.publication, limit=args.limit,
                          cursor=args.cursor)
    else:
        data = client.get("/api/v1/ops/domains", status=args.status, failing=args.failing,
                          limit=args.limit, cursor=args.cursor)
    emit(args, data, _list)
    return OK


def _list(out: Console, data: dict[str, Any]) -> None:
    rows_or(out, table("domains", ("hostname", "publication", "status", "updated", "last error"),
                    ((d["hostname"], d["publication_id"], d["status"], when(d["updated_at"]),
                      d.get("last_error")) for d in data["domains"])), "no domain matches")
    more(out, data.get("next_cursor"))


def show(args: argparse.Namespace, client: ControlClient) -> int:
    emit(args, client.get(f"{API}/{segment(args.hostname)}"), _show)
    return OK


def _show(out: Console, domain: dict[str, Any]) -> None:
    out.print(pairs(domain["hostname"], [
        ("publication", domain["publication_id"]), ("status", domain["status"]),
        ("created", when(domain["created_at"])), ("updated", when(domain["updated_at"])),
        ("last error", domain.get("last_error")), ("attempts", domain.get("attempts")),
        ("next attempt", when(domain.get("next_attempt_at"))),
        ("redirects to", domain.get("redirect_to")), ("origin pool", domain.get("origin_pool"))]))
    _records(out, domain)
    events = domain.get("events") or []
    if events:
        out.print(table("timeline (newest first)", ("at", "what", "by", "why"),
                        ((when(e["at"]), e["what"], e["actor"], e["why"]) for e in events[:15])))


def _records(out: Console, domain: dict[str, Any]) -> None:
    records = list(domain.get("dns_records") or [])
    pair = domain.get("pair")
    if pair:
        records += pair.get("dns_records") or []
    if records:
        out.print(table("DNS records to create", ("type", "name", "value"),
                        ((r["type"], r["name"], r["value"]) for r in records)))


def connect(args: argparse.Namespace, client: ControlClient) -> int:
    domain = client.post(API, body(hostname=args.hostname, publication_id=args.publication,
                                   with_www=args.with_www))
    emit(args, domain, _connected)
    return OK


def _connected(out: Console, domain: dict[str, Any]) -> None:
    out.print(f"{domain['hostname']} is connected to {domain['publication_id']} "
              f"({domain['status']})")
    _records(out, domain)
    if domain.get("instructions"):
        out.print(domain["instructions"])


def check(args: argparse.Namespace, client: ControlClient) -> int:
    domain = client.again_on_conflict("POST", f"{API}/{segment(args.hostname)}/check")
    emit(args, domain, _checked)
    return OK if domain["ok"] else NOT_YET


def _checked(out: Console, domain: dict[str, Any]) -> None:
    verdict = "DNS is right" if domain["ok"] else "DNS is not right yet"
    out.print(f"{domain['hostname']}: {verdict} (status {domain['status']})")
    for problem in domain.get("validation_errors") or []:
        out.print(f"  - {problem.get('message') or problem}")
    seen = domain.get("seen") or {}
    rows = ((server, kind, values) for server, found in seen.items()
            for kind, values in found.items())
    rows_or(out, table("what the authoritative servers answer", ("server", "type", "values"),
                       rows), "no authoritative server answered")


def remove(args: argparse.Namespace, client: ControlClient) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            return fail(f"removing {args.hostname} takes its route off the edge and revokes its "
                        "certificate: add --yes to do it", USAGE)
        typed = input(f"Remove {args.hostname} (route and certificate go)? Type its name: ")
        if typed.strip().lower() != args.hostname.strip().lower():
            return fail(f"{args.hostname} is kept (the name typed differs)", USAGE)
    emit(args, client.again_on_conflict("DELETE", f"{API}/{segment(args.hostname)}"), _removed)
    return OK


def _removed(out: Console, data: dict[str, Any]) -> None:
    names = data["removed"] + (f" and {data['pair_removed']}" if data.get("pair_removed") else "")
    out.print(f"removing {names}: the route goes now, the certificate is revoked")


def _list_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--publication", metavar="ID", help="one publication's domains")
    which.add_argument("--status", help="only this status (pending_dns, verified, issuing, "
                       "awaiting_traffic, active, suspended, removing)")
    which.add_argument("--failing", action="store_true",
                       help="only those whose last step failed, longest failing first")
    paging(parser)


def hostname(text: str) -> str:
    """A name, checked by the service; here only what would change the request's path."""
    name = text.strip().removeprefix("https://").removeprefix("http://").rstrip("/")
    if set(name) <= {"."} or any(char in name for char in "/?#%\\") or \
            any(char.isspace() for char in name):
        raise argparse.ArgumentTypeError(f"{text!r} is not a hostname")
    return name


def _hostname(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hostname", type=hostname)


def _connect_arguments(parser: argparse.ArgumentParser) -> None:
    _hostname(parser)
    parser.add_argument("--publication", metavar="ID", required=True,
                        help="the publication it serves")
    parser.add_argument("--with-www", choices=("redirect", "serve", "none"),
                        help="for an apex or its www. name: the companion redirects here "
                             "(default), serves the same, or is not connected")


def _remove_arguments(parser: argparse.ArgumentParser) -> None:
    _hostname(parser)
    parser.add_argument("--yes", action="store_true", help="do not ask (scripts)")


operator_command("domains", "custom domains: list, show, connect, check, remove", actions({
    "list": ("domains of every publication, one status, the failing, or one publication's",
             list_domains, _list_arguments),
    "show": ("a domain, its DNS records and its timeline", show, _hostname),
    "connect": ("connect a domain to a publication; prints the DNS records to create",
                connect, _connect_arguments),
    "check": ("check a domain's DNS now (exit 4 while it is not right)", check, _hostname),
    "remove": ("remove a domain: its route goes, its certificate is revoked", remove,
               _remove_arguments)}))

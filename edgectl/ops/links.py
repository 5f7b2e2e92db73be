"""`edgectl links list|create|show|stats|import`, through the short-link API."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import TYPE_CHECKING, Any, Iterator

from edgectl.ops.base import actions, body, fail, operator_command
from edgectl.ops.client import OK, REFUSED, USAGE, ControlClient, OperatorError, segment
from edgectl.ops.fleet import paging
from edgectl.ops.output import emit, more, pairs, rows_or, table, when
from shortlinks.bulk import link_fields, rows
from shortlinks.errors import ShortlinkError

if TYPE_CHECKING:
    from rich.console import Console

API = "/api/v1/links"
_COLUMNS = ("link", "target", "owner", "code", "visits", "disabled", "valid until")


def address(text: str) -> tuple[str, str]:
    """``acme.link/x7Kq`` (a pasted https:// in front is fine) as (domain, slug)."""
    domain, _, slug = text.strip().removeprefix("https://").removeprefix("http://") \
        .partition("/")
    if set(domain) <= {"."} or set(slug) <= {"."} or "/" in slug or \
            any(char in text.strip() for char in "?#%\\ "):
        raise argparse.ArgumentTypeError(f"{text!r} is not a link: write DOMAIN/SLUG, e.g. "
                                         "acme.link/spring")
    return domain, slug


def _path(link: tuple[str, str]) -> str:
    return f"{API}/{segment(link[0])}/{segment(link[1])}"


def _row(link: dict[str, Any]) -> tuple[Any, ...]:
    return (f"{link['domain']}/{link['slug']}", link["target"], link["owner"], link["code"],
            link["visits"], link["disabled"], when(link.get("valid_until")))


def list_links(args: argparse.Namespace, client: ControlClient) -> int:
    emit(args, client.get(API, owner=args.owner, limit=args.limit, cursor=args.cursor), _list)
    return OK


def _list(out: Console, data: dict[str, Any]) -> None:
    rows_or(out, table("short links", _COLUMNS, (_row(link) for link in data["links"])),
            "no link matches")
    more(out, data.get("next_cursor"))


def create(args: argparse.Namespace, client: ControlClient) -> int:
    link = client.post(API, body(domain=args.domain, target=args.target, owner=args.owner,
                                 slug=args.slug, code=args.code, max_visits=args.max_visits))
    emit(args, link, lambda out, found: out.print(
        f"https://{found['domain']}/{found['slug']} -> {found['target']}"))
    return OK


def show(args: argparse.Namespace, client: ControlClient) -> int:
    emit(args, client.get(_path(args.link)), _show)
    return OK


def _show(out: Console, link: dict[str, Any]) -> None:
    out.print(pairs(f"{link['domain']}/{link['slug']}", [
        (name, when(value) if name in ("created_at", "updated_at", "valid_until") else value)
        for name, value in link.items() if name not in ("domain", "slug")]))


def stats(args: argparse.Namespace, client: ControlClient) -> int:
    emit(args, client.get(f"{_path(args.link)}/stats", days=args.days), _stats)
    return OK


def _stats(out: Console, data: dict[str, Any]) -> None:
    days = data["days"]
    out.print(table("visits per day (UTC)", ("date", "visits", "bots"),
                    ((d["date"], d["visits"], d["bots"]) for d in days)))
    out.print(f"total: {sum(d['visits'] for d in days)} visits, "
              f"{sum(d['bots'] for d in days)} from bots")
    if data["referrers"]:
        out.print(table("referrers", ("host", "visits"),
                        ((r["host"], r["visits"]) for r in data["referrers"])))


def import_links(args: argparse.Namespace, client: ControlClient) -> int:
    """One request per row (the API checks each as it would any link); a refused row is
    reported with its line number, and the service going away stops the import there."""
    try:
        with open(args.file, newline="", encoding="utf-8") as handle:
            total = max(0, sum(1 for _ in handle) - 1)
            handle.seek(0)
            created, refused = _import(client, rows(handle), total)
    except OSError as exc:
        return fail(f"cannot read {args.file}: {exc.strerror or exc}", USAGE)
    except (ShortlinkError, UnicodeDecodeError) as exc:
        return fail(f"{args.file}: {exc}", USAGE)
    if args.json:
        print(json.dumps({"created": created, "refused": [
            {"line": number, "error": error} for number, error in refused]}, indent=2))
        return REFUSED if refused else OK
    print(f"created {created} links, {len(refused)} rows refused")
    for number, error in refused:
        print(f"  line {number}: {error}")
    return REFUSED if refused else OK


def _import(client: ControlClient, found: Iterator[tuple[int, dict[str, str]]],
            total: int) -> tuple[int, list[tuple[int, str]]]:
    created, refused = 0, []
    with _progress(total) as advance:
        for number, row in found:
            try:
                client.post(API, link_fields(row))
                created += 1
            except ValueError as exc:
                refused.append((number, str(exc)))
            except OperatorError as exc:
                if exc.code != REFUSED:
                    raise OperatorError(f"stopped at line {number} after creating {created} "
                                        f"links: {exc}", exc.code) from None
                refused.append((number, str(exc)))
            advance()
    return created, refused


@contextlib.contextmanager
def _progress(total: int) -> Iterator[Any]:
    """A progress bar on a terminal's stderr; nothing in a pipe or a log."""
    if not sys.stderr.isatty():
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import Progress
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("importing", total=total or None)
        yield lambda: progress.advance(task)


def _list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--owner", required=True, metavar="PUBLICATION",
                        help="the publication whose links to list")
    paging(parser)


def _create_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("domain", help="one of the short domains (short_domains)")
    parser.add_argument("target", help="where it redirects (http or https URL)")
    parser.add_argument("--owner", required=True, metavar="PUBLICATION")
    parser.add_argument("--slug", help="the path after the domain (default: random)")
    parser.add_argument("--code", type=int, choices=(301, 302, 307, 308))
    parser.add_argument("--max-visits", type=int, metavar="N")


def _link_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("link", type=address, metavar="DOMAIN/SLUG")


def _stats_arguments(parser: argparse.ArgumentParser) -> None:
    _link_arguments(parser)
    parser.add_argument("--days", type=int, default=30, help="how many days back (default 30)")


operator_command("links", "short links: list, create, show, stats, import", actions({
    "list": ("a publication's short links", list_links, _list_arguments),
    "create": ("create a short link", create, _create_arguments),
    "show": ("a short link", show, _link_arguments),
    "stats": ("a short link's visits per day and referrers", stats, _stats_arguments),
    "import": ("create links from a CSV (domain,target,owner[,slug,code,max_visits]), one "
               "request per row; refused rows are listed by line",
               import_links, lambda parser: parser.add_argument("file", help="the CSV file"))}))

"""What the operator commands print: rich tables for people, the API's JSON for scripts."""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from kit.logs import strip_escapes

if TYPE_CHECKING:  # rich is imported when a command prints: the CLI's other processes never do
    from rich.console import Console
    from rich.table import Table

Render = Callable[["Console", Any], None]


def console() -> Console:
    """Colours on a terminal only; a pipe gets wide plain text, so a line stays one row. No
    markup or emoji codes: what is printed is data (a publisher's DNS answer reaches
    ``domains check``), and ``[/x]`` in it must print as it is, not style or crash the table."""
    from rich.console import Console
    if sys.stdout.isatty():
        return Console(highlight=False, markup=False, emoji=False)
    return Console(width=200, no_color=True, highlight=False, soft_wrap=True, markup=False,
                   emoji=False)


def json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print the API's JSON answer (for scripts) instead of a table")


def emit(args: argparse.Namespace, data: Any, render: Render) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2))
    else:
        render(console(), printable(data))


def printable(data: Any) -> Any:
    """``data`` with terminal escape sequences and control characters taken out of every
    string: the operator's terminal obeys them, and a publisher chooses some of these strings."""
    if isinstance(data, str):
        return strip_escapes(data)
    if isinstance(data, dict):
        return {printable(key): printable(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [printable(item) for item in data]
    return data


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    from rich.table import Table
    found = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        found.add_column(column, overflow="fold")
    for row in rows:
        found.add_row(*(cell(value) for value in row))
    return found


def pairs(title: str | None, values: Iterable[tuple[str, Any]]) -> Table:
    """A two-column table of names and values (one object's fields)."""
    from rich.table import Table
    found = Table(title=title, title_justify="left", show_header=False)
    found.add_column(style="bold")
    found.add_column(overflow="fold")
    for name, value in values:
        found.add_row(name, cell(value))
    return found


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(cell(item) for item in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{key}={cell(item)}" for key, item in value.items()) or "-"
    return str(value)


def when(timestamp: float | str | None) -> str:
    """A time as UTC to the minute, with how long ago or ahead it is."""
    if timestamp is None or timestamp == "":
        return "-"
    if isinstance(timestamp, str):
        try:
            at = datetime.datetime.fromisoformat(timestamp).timestamp()
        except ValueError:
            return timestamp
    else:
        at = float(timestamp)
    stamp = datetime.datetime.fromtimestamp(at, datetime.timezone.utc).strftime("%Y-%m-%d %H:%MZ")
    return f"{stamp} ({ago(time.time() - at)})"


def ago(seconds: float) -> str:
    size = abs(seconds)
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if size >= length:
            text = f"{size / length:.0f} {unit}"
            break
    else:
        text = f"{size:.0f} s"
    return f"{text} ago" if seconds >= 0 else f"in {text}"


def rows_or(out: Console, found: Table, empty: str) -> None:
    """The table, or a sentence when it has no row."""
    out.print(found if found.row_count else empty)


def more(out: Console, next_cursor: str | None) -> None:
    if next_cursor:
        out.print(f"more: add --cursor {next_cursor}")

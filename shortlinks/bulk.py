"""Reading a CSV of links (`edgectl links import FILE` sends each row to the links API) and QR
codes for a link."""
from __future__ import annotations

import csv
import io
from typing import IO, Any, Iterator

import segno

from shortlinks.errors import ShortlinkError


def rows(handle: IO[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of each link in the CSV; a ShortlinkError when a column it needs is
    missing from the header."""
    reader = csv.DictReader(handle)
    missing = {"domain", "target", "owner"} - set(reader.fieldnames or [])
    if missing:
        raise ShortlinkError(f"the CSV needs the columns {', '.join(sorted(missing))}")
    for number, row in enumerate(reader, start=2):  # line 1 is the header
        yield number, row


def link_fields(row: dict[str, str]) -> dict[str, Any]:
    """A row as the links API takes it (empty cells left out); a ValueError names a column
    that should hold a whole number."""
    fields: dict[str, Any] = {name: row[name] for name in ("domain", "target", "owner", "slug")
                              if row.get(name)}
    for name in ("code", "max_visits"):
        value = (row.get(name) or "").strip()
        if value:
            if not value.isdigit():
                raise ValueError(f"{name} must be a whole number, not {value!r}")
            fields[name] = int(value)
    return fields


def qr_code(url: str, kind: str = "svg") -> bytes:
    """The link as a QR code, ``svg`` or ``png``."""
    if kind not in ("svg", "png"):
        raise ShortlinkError("QR codes come as svg or png")
    buffer = io.BytesIO()
    segno.make(url, error="m").save(buffer, kind=kind, scale=4 if kind == "png" else 1,
                                    border=2)
    return buffer.getvalue()

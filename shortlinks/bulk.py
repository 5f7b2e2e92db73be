"""CSV bulk import (`edgectl links import FILE`) and QR codes for a link."""
from __future__ import annotations

import csv
import dataclasses
import io
import sys
from typing import IO, Iterator

import segno

from shortlinks.errors import ShortlinkError
from shortlinks.links import LinkService

COLUMNS = ("domain", "target", "owner", "slug", "code", "max_visits")


@dataclasses.dataclass
class ImportReport:
    created: int = 0
    errors: list[tuple[int, str]] = dataclasses.field(default_factory=list)


def _rows(handle: IO[str]) -> Iterator[tuple[int, dict[str, str]]]:
    reader = csv.DictReader(handle)
    missing = {"domain", "target", "owner"} - set(reader.fieldnames or [])
    if missing:
        raise ShortlinkError(f"the CSV needs the columns {', '.join(sorted(missing))}")
    for number, row in enumerate(reader, start=2):  # line 1 is the header
        yield number, row


def import_csv(links: LinkService, handle: IO[str], progress: IO[str] | None = None,
               total: int | None = None) -> ImportReport:
    """Create a link per row; a bad row is reported with its line number, never fatal."""
    report = ImportReport()
    for done, (number, row) in enumerate(_rows(handle), start=1):
        try:
            code = int(row["code"]) if row.get("code") else None
            max_visits = int(row["max_visits"]) if row.get("max_visits") else None
            links.create(row.get("domain"), row.get("target"), row.get("owner") or "",
                         slug=row.get("slug") or None, code=code, max_visits=max_visits)
            report.created += 1
        except (ShortlinkError, ValueError) as exc:
            report.errors.append((number, str(exc)))
        if progress is not None:
            _bar(progress, done, total)
    if progress is not None:
        progress.write("\n")
    return report


def _bar(out: IO[str], done: int, total: int | None) -> None:
    if total:
        filled = int(30 * done / total)
        out.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
    else:
        out.write(f"\r{done} rows")
    out.flush()


def qr_code(url: str, kind: str = "svg") -> bytes:
    """The link as a QR code, ``svg`` or ``png``."""
    if kind not in ("svg", "png"):
        raise ShortlinkError("QR codes come as svg or png")
    buffer = io.BytesIO()
    segno.make(url, error="m").save(buffer, kind=kind, scale=4 if kind == "png" else 1,
                                    border=2)
    return buffer.getvalue()


def run_import(links: LinkService, path: str) -> int:
    """The CLI: import ``path``, print a per-line error report; exit 1 if any row failed."""
    with open(path, newline="", encoding="utf-8") as handle:
        total = max(0, sum(1 for _ in handle) - 1)
    with open(path, newline="", encoding="utf-8") as handle:
        report = import_csv(links, handle, progress=sys.stderr, total=total)
    print(f"created {report.created} links, {len(report.errors)} rows refused")
    for number, error in report.errors:
        print(f"  line {number}: {error}")
    return 1 if report.errors else 0

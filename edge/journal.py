"""A release's change journal: what a hot change appends instead of rewriting the node's files.

A hot change at a node with 100,000 routes (or 1,000,000 short links) must not rewrite maps
that size. So each change appends one line to ``<release>/changes.jsonl`` (fsynced): the
version it brings and the absolute new value of each changed route (publication id, or null:
removed) and redirect (map value, or null), and the new extras of a route whose extras
changed. The release's files plus the journal, replayed in order, are the state the node
serves; replaying a line twice changes nothing, so folding the journal into the files
(:func:`fold_redirects`, the node's ``compact``) may be interrupted at any point. The node
folds it before HAProxy reads the files (a start or a reload), when it grows past a
threshold, and when the agent is idle. A line torn by a crash or a full disk is no change:
it is skipped when read and cut off before the next append.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

from kit.files import PUBLIC, fsync_directory

NAME = "changes.jsonl"
Changes = dict[str, str | None]


def append(release: Path, version: str, routes: Changes, redirects: Changes,
           extras: dict[str, str] | None = None) -> None:
    """One change, durable when this returns. ``extras``: the new extras (canonical JSON, ""
    for none) of the routes whose extras changed; a removed route's go with it."""
    entry: dict[str, object] = {"version": version, "routes": routes, "redirects": redirects}
    if extras:
        entry["extras"] = extras
    line = json.dumps(entry, separators=(",", ":")) + "\n"
    path = release / NAME
    created = not path.exists()
    descriptor = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, PUBLIC)
    try:
        _cut_torn_tail(descriptor)
        data = line.encode()
        while data:  # a short write (a disk filling up) is not the whole line
            data = data[os.write(descriptor, data):]
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    if created:
        fsync_directory(release)


def _cut_torn_tail(descriptor: int) -> None:
    """A crash or a full disk mid-append leaves a line without its newline (and an append
    before this check glued its line onto such bytes): cut the file back to its last line
    that decodes, so the next line is not glued onto them and no torn line ends up inside."""
    end = os.fstat(descriptor).st_size
    if end and os.pread(descriptor, 1, end - 1) != b"\n":
        end = _line_start(descriptor, end - 1)
        os.ftruncate(descriptor, end)
    if end:
        start = _line_start(descriptor, end - 1)
        try:
            json.loads(os.pread(descriptor, end - start, start))
        except ValueError:
            os.ftruncate(descriptor, start)


def _line_start(descriptor: int, position: int, chunk: int = 65536) -> int:
    """Where the line holding the byte before ``position`` starts (after the newline before)."""
    while position > 0:
        start = max(0, position - chunk)
        newline = os.pread(descriptor, position - start, start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        position = start
    return 0


def entries(release: Path) -> Iterator[dict[str, object]]:
    """The journal's changes in order; a torn last line (a crash mid-append) is not one, nor
    a last line that does not decode (torn bytes an append was glued onto)."""
    last: str | None = None
    try:
        with open(release / NAME, encoding="utf-8", errors="replace") as journal:
            for line in journal:
                if last is not None:
                    yield json.loads(last)
                last = line
    except FileNotFoundError:
        return
    if last is None or not last.endswith("\n"):
        return
    try:
        entry = json.loads(last)
    except ValueError:
        return
    yield entry


def replay(release: Path) -> tuple[str | None, Changes, Changes, int]:
    """(the last version, route changes, redirect changes, lines) of the whole journal."""
    version: str | None = None
    routes: Changes = {}
    redirects: Changes = {}
    count = 0
    for entry in entries(release):
        version = str(entry["version"])
        routes.update(entry["routes"])  # type: ignore[call-overload]
        redirects.update(entry["redirects"])  # type: ignore[call-overload]
        count += 1
    return version, routes, redirects, count


def replay_extras(release: Path) -> Changes:
    """The routes' extras the journal changed: hostname -> extras, or None (removed, or none)."""
    extras: Changes = {}
    for entry in entries(release):
        for hostname, publication in entry["routes"].items():  # type: ignore[attr-defined]
            if publication is None:
                extras[hostname] = None
        for hostname, value in (entry.get("extras") or {}).items():  # type: ignore[attr-defined]
            extras[hostname] = value or None
    return extras


def fold_redirects(map_path: Path, changes: Changes) -> None:
    """Rewrite the redirects map with ``changes`` applied, streamed line by line to a new file
    renamed over it: memory follows the changes, not the map (1,000,000 links stay on disk)."""
    pending = dict(changes)
    tmp = map_path.with_name(f".{map_path.name}.fold")
    with open(tmp, "w", encoding="utf-8") as out:
        if map_path.exists():
            with open(map_path, encoding="utf-8") as current:
                for line in current:
                    key = line.partition(" ")[0]
                    if key in pending:
                        value = pending.pop(key)
                        if value is not None:
                            out.write(f"{key} {value}\n")
                    elif line.strip():
                        out.write(line if line.endswith("\n") else line + "\n")
        out.writelines(f"{key} {value}\n" for key, value in sorted(pending.items())
                       if value is not None)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(tmp, PUBLIC)
    os.replace(tmp, map_path)


def drop(release: Path) -> None:
    (release / NAME).unlink(missing_ok=True)
    fsync_directory(release)

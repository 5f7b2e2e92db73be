"""Backup files: every stored item of the product's tables, as stored, so a restore gives the
same store back. Nothing here decrypts: a private key stays the ciphertext the store held.

A backup is a gzip-compressed tar of two members, in this order, each of mode 0600:

- ``manifest.json``: ``format`` (``edge-router-backup``), ``format_version`` (2),
  ``product_version``, ``backend`` (``sqlite`` or ``dynamodb``), ``consistency`` (``snapshot``:
  the store at one instant; ``per-item``: each item as it was when read), ``changed_during``
  (tables whose change markers moved while a per-item backup read: empty when nothing did),
  ``started_at`` and ``finished_at`` (UTC), ``tables`` (items per table), ``items`` (their sum),
  ``sha256`` (of ``items.jsonl``) and ``mac``: HMAC-SHA256 of every other field of the
  manifest (so of the items too, through ``sha256``) as canonical JSON (sorted keys, no
  spaces), under a key derived from the first encryption key (:func:`mac_keys`). Format 1 (the
  release before) is the same without ``mac``: a restore accepts it only when told to.
- ``items.jsonl``: one line per stored item, ``{"table", "key", "version", "data",
  "counters"}``. ``data`` is the stored JSON text, byte for byte; ``version`` and ``data`` are
  null for counters kept without an item (a count racing a delete can leave those).

A restore reads the whole file (MAC, checksum, counts, every line) before it writes anything,
from a private copy (:func:`private_copy`), so what it checked is what it writes.
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import hashlib
import hmac
import io
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import IO, Any, Iterator, NamedTuple, Protocol, Sequence

from store import META, StoreError, TableSpec

FORMAT = "edge-router-backup"
FORMAT_VERSION = 2
UNSIGNED_VERSION = 1
"""The format of the release before: no ``mac``."""
MAC_CONTEXT = b"edge-backup-mac-v1"
MANIFEST, ITEMS = "manifest.json", "items.jsonl"
BACKENDS = ("sqlite", "dynamodb")
USAGE, FAILED = 2, 1
"""Exit statuses: a bad file or argument; a store that cannot be read or written, or refuses."""


class BackupError(Exception):
    """One sentence for the operator, and the exit status it deserves."""

    def __init__(self, message: str, status: int = USAGE) -> None:
        super().__init__(message)
        self.status = status


class Stored(NamedTuple):
    """One item as a backend holds it: the stored JSON text, never parsed into values."""

    key: str
    version: int | None
    data: str | None
    counters: dict[str, int]


class Source(Protocol):
    """A store to back up, opened for reading only."""

    backend: str
    consistency: str

    def dump(self, spec: TableSpec) -> Iterator[Stored]:
        """Every live stored item of the table, counters included (none if it does not
        exist)."""

    def close(self) -> None:
        ...


class Target(Protocol):
    """A store to restore into; its tables are created when missing."""

    def holds_items(self, spec: TableSpec) -> bool:
        ...

    def clear(self, spec: TableSpec) -> None:
        """Delete every item of the table, counters included."""

    def load(self, spec: TableSpec, stored: Stored) -> None:
        """Write the item with its version, its stored text and its counters as they were
        (perhaps later, in a batch: by the next :meth:`flush`)."""

    def flush(self) -> None:
        """Return once every item loaded is written; raise :class:`StoreError` if one could
        not be."""


@dataclasses.dataclass
class Manifest:
    product_version: str
    backend: str
    consistency: str
    tables: dict[str, int]
    sha256: str
    started_at: str
    finished_at: str
    changed_during: list[str] = dataclasses.field(default_factory=list)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    mac: str = ""

    @property
    def items(self) -> int:
        return sum(self.tables.values())

    @property
    def signed(self) -> bool:
        return self.format_version > UNSIGNED_VERSION

    def fields(self) -> dict[str, Any]:
        """What the file holds (a format 1 manifest has no ``mac``)."""
        found = {**dataclasses.asdict(self), "items": self.items}
        return found if self.signed else {k: v for k, v in found.items() if k != "mac"}

    def to_json(self) -> bytes:
        return json.dumps(self.fields(), indent=2, sort_keys=True).encode()


def mac_keys(encryption_keys: Sequence[str]) -> list[bytes]:
    """The MAC key of each Fernet key (url-safe base64, as configured), in their order: a key
    of its own, so no MAC is ever made with a key that also encrypts."""
    return [hmac.new(base64.urlsafe_b64decode(key.encode()), MAC_CONTEXT,
                     hashlib.sha256).digest() for key in encryption_keys]


def _mac(key: bytes, fields: dict[str, Any]) -> str:
    signed = {name: value for name, value in fields.items() if name != "mac"}
    return hmac.new(key, json.dumps(signed, sort_keys=True, separators=(",", ":")).encode(),
                    hashlib.sha256).hexdigest()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def take_backup(source: Source, specs: tuple[TableSpec, ...], path: Path,
                product_version: str, markers: tuple[TableSpec, ...] = (),
                encryption_keys: Sequence[str] = ()) -> Manifest:
    """Write every item of ``specs`` from ``source`` to a new backup file at ``path``, signed
    under the first of ``encryption_keys`` (with none: unsigned, of format 1, which a restore
    takes only when told to; for tools that restore it themselves).

    ``markers``: small tables that change with every write that matters (a per-item backup
    reads them before and after, and names in the manifest those that moved)."""
    if path.exists():
        raise BackupError(f"{path} already exists; choose a new file name")
    if not path.parent.is_dir():
        raise BackupError(f"cannot write {path}: {path.parent} is not a directory")
    started_at = _now()
    before = _read_markers(source, markers)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".backup-") as scratch:
        items = Path(scratch) / ITEMS
        digest, counts = hashlib.sha256(), {}
        with items.open("wb") as out:
            for spec in specs:
                counts[spec.name] = 0
                for stored in source.dump(spec):
                    line = json.dumps({"table": spec.name, **stored._asdict()},
                                      sort_keys=True).encode() + b"\n"
                    digest.update(line)
                    out.write(line)
                    counts[spec.name] += 1
        after = _read_markers(source, markers)
        manifest = Manifest(product_version, source.backend, source.consistency, counts,
                            digest.hexdigest(), started_at, _now(),
                            [name for name in before if before[name] != after[name]],
                            format_version=FORMAT_VERSION if encryption_keys else
                            UNSIGNED_VERSION)
        if encryption_keys:
            manifest.mac = _mac(mac_keys(encryption_keys)[0], manifest.fields())
        _pack(manifest, items, Path(scratch) / "backup.tar.gz")
        os.replace(Path(scratch) / "backup.tar.gz", path)
    return manifest


def _read_markers(source: Source, markers: tuple[TableSpec, ...]) -> dict[str, list[Stored]]:
    return {spec.name: list(source.dump(spec)) for spec in markers}


def _pack(manifest: Manifest, items: Path, into: Path) -> None:
    """The tar and each of its members readable by their owner only (``tar -x`` keeps a
    member's mode): it holds password and token hashes and encrypted keys."""
    descriptor = os.open(into, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        body = manifest.to_json()
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mode = len(body), 0o600
        info.mtime = int(datetime.datetime.now().timestamp())
        tar.addfile(info, io.BytesIO(body))
        info = tar.gettarinfo(items, arcname=ITEMS)
        info.mode = 0o600
        with items.open("rb") as lines:
            tar.addfile(info, lines)


def restore_backup(target: Target, specs: tuple[TableSpec, ...], path: Path,
                   force: bool = False, copy: IO[bytes] | None = None) -> None:
    """Write the items of the backup at ``path`` (read from ``copy`` when given), which
    :func:`check_backup` read whole first, into ``target``, which must hold no item (unless
    ``force``: then what it holds is deleted first).

    The store's schema (``META``) is written first, so a store whose schema spreads index keys
    has them spread as its items are written (DynamoDB reads it to decide): unspread, every
    domain's status would be one partition key of its index, which throttles the restore and
    the writes after it (``TableSpec.spread``)."""
    by_name = {spec.name: spec for spec in specs}
    first = {META} & set(by_name)
    passes = [first, set(by_name) - first] if first else [set(by_name)]
    if not force:
        full = [spec.name for spec in specs if target.holds_items(spec)]
        if full:
            raise BackupError(f"the store is not empty ({', '.join(full[:3])} hold items); "
                              "restore into a new store, or pass --force to replace what it "
                              "holds", FAILED)
    try:
        for spec in specs:
            if force:
                target.clear(spec)
        for loading in passes:
            for table, stored in _items(path, by_name, copy=copy):
                if table in loading:
                    target.load(by_name[table], stored)
            target.flush()
    except StoreError as exc:
        raise BackupError(f"the store failed during the restore ({exc}) and may hold part of "
                          "the backup: once it answers, restore again with --force",
                          FAILED) from None


@contextlib.contextmanager
def private_copy(path: Path) -> Iterator[IO[bytes]]:
    """A copy of the backup at ``path`` that only this process can reach (an unnamed file in
    the temporary directory), for :func:`check_backup` and :func:`restore_backup` to read: a
    file changed between the check and the restore is not what the restore writes."""
    if not path.is_file():
        raise BackupError(f"no backup file at {path}")
    copy = tempfile.TemporaryFile(prefix="edge-restore-")
    with copy:
        try:
            with path.open("rb") as original:
                shutil.copyfileobj(original, copy)
        except OSError as exc:
            raise BackupError(f"cannot copy {path} into {tempfile.gettempdir()}: "
                              f"{exc.strerror or exc}", FAILED) from None
        yield copy


def check_backup(path: Path, specs: tuple[TableSpec, ...], encryption_keys: Sequence[str],
                 allow_unsigned: bool = False, copy: IO[bytes] | None = None) -> Manifest:
    """The manifest of the backup at ``path`` (read from ``copy`` when given), once its MAC
    verified under one of ``encryption_keys`` (keys rotate: any of them; a format 1 backup has
    none, and passes only with ``allow_unsigned``) and every item was read and matched its
    checksum, its counts and the tables of this release: a restore writes nothing before."""
    by_name = {spec.name: spec for spec in specs}
    manifest, raw = _manifest(path, copy)
    _authenticate(path, manifest, raw, encryption_keys, allow_unsigned)
    unknown = sorted(set(manifest.tables) - set(by_name))
    if unknown:
        raise BackupError(f"{path} holds table {unknown[0]}, which this release does not know; "
                          f"restore it with the release that wrote it "
                          f"({manifest.product_version})")
    digest, counts = hashlib.sha256(), {name: 0 for name in manifest.tables}
    for table, _ in _items(path, by_name, digest, copy):
        counts[table] = counts.get(table, 0) + 1
    if digest.hexdigest() != manifest.sha256 or counts != manifest.tables:
        raise BackupError(f"{path} is corrupted: its items do not match the checksum and "
                          "counts in its manifest")
    return manifest


def _authenticate(path: Path, manifest: Manifest, raw: dict[str, Any],
                  encryption_keys: Sequence[str], allow_unsigned: bool) -> None:
    if not manifest.signed:
        if not allow_unsigned:
            raise BackupError(f"{path} is an unsigned backup of format {UNSIGNED_VERSION} (from "
                              "a release before backups were signed), so nothing shows it is "
                              "unchanged; pass --allow-unsigned to restore it if you trust "
                              "every hand it went through")
        return
    given = str(raw.get("mac", "")).encode()
    if not any(hmac.compare_digest(_mac(key, raw).encode(), given)
               for key in mac_keys(encryption_keys)):
        raise BackupError(f"{path} is not signed under any of the configured encryption keys: "
                          "it was changed after it was written, or written under a key that "
                          "is not in encryption_keys")


@dataclasses.dataclass
class _Members:
    tar: tarfile.TarFile
    path: Path

    def read(self, name: str) -> IO[bytes]:
        try:
            member = self.tar.extractfile(name)
        except KeyError:
            member = None
        if member is None:
            raise BackupError(f"{self.path} is not a backup: it has no {name}")
        return member


def _open(path: Path, copy: IO[bytes] | None) -> tarfile.TarFile:
    if copy is None and not path.is_file():
        raise BackupError(f"no backup file at {path}")
    try:
        if copy is not None:
            copy.seek(0)
            return tarfile.open(fileobj=copy, mode="r:gz")
        return tarfile.open(path, mode="r:gz")
    except (tarfile.TarError, OSError, EOFError, zlib.error):
        raise BackupError(f"{path} is not a backup (not a gzip-compressed tar) or is "
                          "corrupted") from None


_CORRUPTED = (tarfile.TarError, OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError)


def _manifest(path: Path, copy: IO[bytes] | None) -> tuple[Manifest, dict[str, Any]]:
    """The manifest, checked, and the fields it was made from (for its MAC)."""
    try:
        with _open(path, copy) as tar:
            raw = json.loads(_Members(tar, path).read(MANIFEST).read())
    except BackupError:
        raise
    except _CORRUPTED:
        raise BackupError(f"{path} is corrupted: its manifest cannot be read") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise BackupError(f"{path} is not an edge-router backup")
    version = raw.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise BackupError(f"{path} is corrupted: its manifest has no format version")
    if version > FORMAT_VERSION:
        raise BackupError(f"{path} is a backup of format {version}, and this release reads "
                          f"format {FORMAT_VERSION} only; restore it with a newer edgectl")
    fields = {field.name for field in dataclasses.fields(Manifest)}
    try:
        manifest = Manifest(**{name: value for name, value in raw.items() if name in fields})
    except TypeError:
        raise BackupError(f"{path} is corrupted: its manifest lacks fields") from None
    if manifest.backend not in BACKENDS:
        raise BackupError(f"{path} is corrupted: its manifest names no known backend")
    if not isinstance(manifest.tables, dict) or not all(
            isinstance(count, int) for count in manifest.tables.values()):
        raise BackupError(f"{path} is corrupted: its manifest's table counts are not numbers")
    return manifest, raw


def _items(path: Path, specs: dict[str, TableSpec], digest: Any = None,
           copy: IO[bytes] | None = None) -> Iterator[tuple[str, Stored]]:
    """The items of the backup, each checked; ``digest`` is fed every line read."""
    try:
        with _open(path, copy) as tar:
            for number, line in enumerate(_Members(tar, path).read(ITEMS), start=1):
                if digest is not None:
                    digest.update(line)
                yield _parse(line, specs, f"{path} is corrupted: item {number}")
    except BackupError:
        raise
    except _CORRUPTED:
        raise BackupError(f"{path} is corrupted: its items cannot be read to the end") from None


def _parse(line: bytes, specs: dict[str, TableSpec], where: str) -> tuple[str, Stored]:
    raw = json.loads(line)
    if not isinstance(raw, dict) or raw.get("table") not in specs:
        raise BackupError(f"{where} names no table of this release")
    key, counters = raw.get("key"), raw.get("counters")
    if not isinstance(key, str) or not isinstance(counters, dict) or not all(
            isinstance(name, str) and isinstance(value, int) for name, value in counters.items()):
        raise BackupError(f"{where} has no key or bad counters")
    stored, spec = Stored(key, raw.get("version"), raw.get("data"), counters), specs[raw["table"]]
    if (stored.data is None) != (stored.version is None):
        raise BackupError(f"{where} has a version without data or data without a version")
    if stored.data is not None:
        if not isinstance(stored.data, str) or not isinstance(stored.version, int):
            raise BackupError(f"{where} has data that is not text or a version not a number")
        item = json.loads(stored.data)
        if not isinstance(item, dict) or str(item.get(spec.key)) != stored.key:
            raise BackupError(f"{where} does not hold its key {spec.key} in its data")
    return raw["table"], stored

"""`edgectl backup` and `edgectl restore`: a store taken while it serves comes back whole in a
fresh one (the same domains, links, certificates, keys still encrypted as stored), on SQLite
and on DynamoDB (dynalite), and from one to the other; bad files and full stores are refused
with a sentence."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import gzip
import hashlib
import hmac
import io
import json
import os
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from flask.testing import FlaskClient

from admin_app import create_app
from control.wiring import Services
from devtools.pebble import PebbleStack
from edge.restore import TIMELINE_JUMP
from edgectl.backup import MARKERS, TABLES, run_backup, run_restore
from kit.procs import free_port
from kit.settings import Settings
from shortlinks.changes import ANY_LINK, GENERATION, change_slot
from store import BATCH_GET, META, TableSpec, all_items, open_backend
from store.backup import FORMAT_VERSION, Source, Stored, mac_keys, take_backup
from store.backup_stores import open_source
from tests.conftest import ROOT, Activate, ServicesWith, on_pebble

AUTH = {"Authorization": "Bearer test-token-0123456789"}
EDGE = {"Authorization": "Bearer edge-token-0123456789"}
ACTIVE, PENDING = "shop.backup.test", "pending.backup.test"


def test_every_table_the_product_declares_is_backed_up() -> None:
    declared = set()
    for package in ("admin", "publisher", "control", "domains", "dnsops", "certs", "edge",
                    "shortlinks", "kit", "store", "edgectl"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "TableSpec" \
                        and node.args:
                    name = node.args[0]
                    if isinstance(name, ast.Constant):
                        declared.add(name.value)
                    elif getattr(name, "attr", getattr(name, "id", "")) == "META":
                        declared.add(META)  # the schema's table, named in store/
    assert declared == {spec.name for spec in TABLES}


def _fresh(settings: Settings) -> Settings:
    """Settings naming a new, empty store on the same backend."""
    if settings.storage_backend == "dynamodb":
        return dataclasses.replace(settings, dynamodb_table_prefix=f"r{uuid.uuid4().hex[:8]}_")
    return dataclasses.replace(settings, sqlite_path=f"{settings.sqlite_path}.restored.db")


def _edgectl(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command line, with the store settings and the encryption keys (that sign and
    check a backup) in the environment, and no other secret."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("EDGE_")}
    env.update(PYTHONPATH=str(ROOT), EDGE_STORAGE_BACKEND=settings.storage_backend,
               EDGE_SQLITE_PATH=settings.sqlite_path,
               EDGE_DYNAMODB_ENDPOINT_URL=settings.dynamodb_endpoint_url,
               EDGE_DYNAMODB_TABLE_PREFIX=settings.dynamodb_table_prefix,
               EDGE_ENCRYPTION_KEYS=",".join(settings.encryption_keys))
    return subprocess.run([sys.executable, "-m", "edgectl", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def _every_item(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    backend = open_backend(settings)
    try:
        # DynamoDB scans in no order
        return {spec.name: sorted(all_items(backend.table(spec)), key=lambda item: str(
            item[spec.key])) for spec in TABLES}
    finally:
        backend.close()


def _but_what_a_restore_moves_on(settings: Settings, restored: bool = False,
                                 ) -> dict[str, list[dict[str, Any]]]:
    """Every item, the links' change counter and the edge feeds' revisions apart. ``restored``:
    a fresh store `edgectl restore` filled, which moved the restored counter on by more than a
    batch and wrote the slot of that change (shortlinks.links.after_restore), and each feed's
    version item on by ``TIMELINE_JUMP``, compacted there, without its log
    (edge.state_reconcile.after_restore): the slot is taken out, the counter and revisions
    taken back, what the log and compaction held left out on both sides."""
    items = _every_item(settings)
    changes = {item["name"]: item for item in items["short_link_changes"]}
    n = int(changes.pop(GENERATION).get("n") or 0)
    if restored:
        assert changes.pop(change_slot(n))["link"] == ANY_LINK
        n -= BATCH_GET + 1
    metas = []
    for meta in items["edge_state"]:
        if restored:
            assert meta["compacted_revision"] == meta["revision"] > TIMELINE_JUMP
            meta = {**meta, "revision": meta["revision"] - TIMELINE_JUMP}
        metas.append({key: value for key, value in meta.items() if key not in (
            "version", "compacted_revision", "feed_from", "feed_counts", "feed_keys_from",
            "feed_keys")})
    return {**items, "short_link_changes": [*changes.values(), {"counter": n}],
            "edge_state": metas}


def _answers(client: FlaskClient) -> dict[str, Any]:
    """What the control API says of the domains, links and certificates."""
    domains = client.get("/api/v1/domains?publication_id=pub_1", headers=AUTH).get_json()
    return {"domains": domains["domains"],
            "shown": [client.get(f"/api/v1/domains/{name}", headers=AUTH).get_json()
                      for name in (ACTIVE, PENDING)],
            "links": client.get("/api/v1/links?owner=pub_1", headers=AUTH).get_json(),
            "link": client.get("/api/v1/links/go.backup.test/spring", headers=AUTH).get_json(),
            "state": client.get("/api/v1/edge/state", headers=EDGE).get_json(),
            "cert": client.get(f"/api/v1/edge/certs/{ACTIVE}", headers=EDGE).get_json()}


def _build_store(services: Services, activate: Activate) -> FlaskClient:
    client = create_app(services).test_client()
    for name in (ACTIVE, PENDING):
        answer = client.post("/api/v1/domains", headers=AUTH,
                             json={"hostname": name, "publication_id": "pub_1"})
        assert answer.status_code == 201, answer.get_json()
    activate(services, ACTIVE)
    made = client.post("/api/v1/links", headers=AUTH, json={
        "domain": "go.backup.test", "target": "https://example.com/a", "owner": "pub_1",
        "slug": "spring"})
    assert made.status_code == 201, made.get_json()
    assert services.links.add_visits({"go.backup.test/spring": 5}) == 5  # a counter too
    return client


def test_a_store_comes_back_whole_in_a_fresh_one(
        any_backend: Settings, services_with: ServicesWith, pebble: PebbleStack,
        activate: Activate, tmp_path: Path) -> None:
    base = dataclasses.replace(any_backend, short_domains=["go.backup.test"], **on_pebble(pebble))
    services = services_with(base=base)
    client = _build_store(services, activate)
    backup = tmp_path / "store.backup"

    taken = _edgectl(base, "backup", str(backup))  # while the services are open and serve
    assert taken.returncode == 0, taken.stderr
    assert f"to {backup}" in taken.stdout and "changed while" not in taken.stderr
    assert backup.stat().st_mode & 0o077 == 0, "only its owner reads a backup"
    assert b"PRIVATE KEY" not in gzip.decompress(backup.read_bytes())

    fresh = _fresh(base)
    restored = _edgectl(fresh, "restore", str(backup))
    assert restored.returncode == 0, restored.stderr
    assert _but_what_a_restore_moves_on(fresh, restored=True) == \
        _but_what_a_restore_moves_on(base), "every item, version and counter kept"

    again = services_with(base=fresh)
    before = _answers(client)
    assert [d["status"] for d in before["domains"]] == ["pending_dns", "active"]
    assert "PRIVATE KEY" in json.dumps(before["cert"]) and before["link"]["slug"] == "spring"
    after = _answers(create_app(again).test_client())
    assert after["state"].pop("revision") == before["state"].pop("revision") + TIMELINE_JUMP
    assert after == before
    certificate = again.certificates.get(ACTIVE)  # decrypts with the same encryption key
    assert certificate is not None and "PRIVATE KEY" in certificate.key_pem
    assert certificate == services.certificates.get(ACTIVE)
    assert again.links.get("go.backup.test", "spring")["visits"] == 5

    refused = _edgectl(fresh, "restore", str(backup))
    assert refused.returncode == 1 and "not empty" in refused.stderr
    assert "--force" in refused.stderr and "Traceback" not in refused.stderr


def test_a_sqlite_backup_restores_into_dynamodb(services_with: ServicesWith, settings: Settings,
                                                dynalite: str, tmp_path: Path) -> None:
    services = services_with()
    services.domains.connect("cross.backup.test", "pub_9")
    backup = tmp_path / "sqlite.backup"
    assert _edgectl(settings, "backup", str(backup)).returncode == 0
    dynamo = dataclasses.replace(settings, storage_backend="dynamodb",
                                 dynamodb_endpoint_url=dynalite,
                                 dynamodb_table_prefix=f"x{uuid.uuid4().hex[:8]}_")
    restored = _edgectl(dynamo, "restore", str(backup))
    assert restored.returncode == 0, restored.stderr
    assert _but_what_a_restore_moves_on(dynamo, restored=True) == \
        _but_what_a_restore_moves_on(settings)
    assert services_with(base=dynamo).domains.get("cross.backup.test")["publication_id"] == \
        "pub_9"


def _run(command: Any, settings: Settings, file: Path, force: bool = False,
         allow_unsigned: bool = False) -> int:
    return int(command(argparse.Namespace(file=str(file), force=force,
                                          allow_unsigned=allow_unsigned), settings))


def _signed(manifest: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The manifest with the MAC its fields have under the settings' first key: what only
    someone holding the encryption keys can write."""
    fields = {name: value for name, value in manifest.items() if name != "mac"}
    body = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return {**fields, "mac": hmac.new(mac_keys(settings.encryption_keys)[0], body,
                                      hashlib.sha256).hexdigest()}


def _unsigned(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest as the release before wrote it: format 1, no MAC."""
    assert manifest["format_version"] == FORMAT_VERSION == 2 and manifest["mac"]
    return {**{name: value for name, value in manifest.items() if name != "mac"},
            "format_version": 1}


def _repack(backup: Path, into: Path, manifest: Any = None, items: Any = None) -> Path:
    """A copy of ``backup`` with its manifest or items changed by the given functions (the
    MAC left as it was)."""
    with tarfile.open(backup) as tar:
        members = {name: tar.extractfile(name).read()  # type: ignore[union-attr]
                   for name in ("manifest.json", "items.jsonl")}
    if manifest is not None:
        members["manifest.json"] = json.dumps(manifest(json.loads(members["manifest.json"])))\
            .encode()
    if items is not None:
        members["items.jsonl"] = items(members["items.jsonl"])
    with tarfile.open(into, "w:gz") as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return into


@pytest.mark.slow
def test_bad_files_and_full_stores_are_refused_with_a_sentence(
        services_with: ServicesWith, settings: Settings, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    services_with().domains.connect("kept.backup.test", "pub_1")
    backup = tmp_path / "good.backup"
    assert _run(run_backup, settings, backup) == 0
    fresh = _fresh(settings)
    raw = backup.read_bytes()
    (tmp_path / "flipped.backup").write_bytes(raw[:60] + bytes(b ^ 0xFF for b in raw[60:90])
                                              + raw[90:])
    (tmp_path / "text.backup").write_text("not a backup\n")
    cases = {
        tmp_path / "missing.backup": "no backup file at",
        tmp_path / "text.backup": "is not a backup",
        tmp_path / "flipped.backup": "is corrupted",
        _repack(backup, tmp_path / "edited.backup", items=lambda body: body.replace(
            b"kept.backup.test", b"kxpt.backup.test")): "is corrupted",
        _repack(backup, tmp_path / "counts.backup", manifest=lambda m: _signed({
            **m, "tables": {**m["tables"], "domains": 7}}, settings)): "is corrupted",
        _repack(backup, tmp_path / "unsigned-counts.backup", manifest=lambda m: {
            **m, "tables": {**m["tables"], "domains": 7}}): "is not signed under any",
        _repack(backup, tmp_path / "newer.backup", manifest=lambda m: {
            **m, "format_version": FORMAT_VERSION + 1}): f"format {FORMAT_VERSION + 1}",
        _repack(backup, tmp_path / "other.backup", manifest=lambda m: _signed({
            **m, "tables": {**m["tables"], "from_the_future": 0}}, settings)): "does not know",
    }
    for path, sentence in cases.items():
        assert _run(run_restore, fresh, path) == 2, path
        err = capsys.readouterr().err
        assert sentence in err and err.count("\n") == 1 and "Traceback" not in err, (path, err)
    assert not Path(fresh.sqlite_path).exists(), "no store opened for a file refused"

    assert _run(run_restore, settings, backup) == 1
    assert "not empty" in capsys.readouterr().err
    assert _run(run_restore, settings, backup, force=True) == 0
    assert _every_item(settings)["domains"][0]["hostname"] == "kept.backup.test"

    assert _run(run_backup, settings, backup) == 2
    assert "already exists" in capsys.readouterr().err
    assert _run(run_backup, dataclasses.replace(settings, sqlite_path=str(tmp_path / "no.db")),
                tmp_path / "b2") == 1
    assert "no SQLite store at" in capsys.readouterr().err
    down = dataclasses.replace(settings, storage_backend="dynamodb",
                               dynamodb_endpoint_url=f"http://127.0.0.1:{free_port()}")
    assert _run(run_backup, down, tmp_path / "b3") == 1
    assert "does not answer" in capsys.readouterr().err
    assert _run(run_restore, down, backup) == 1
    err = capsys.readouterr().err
    assert "cannot" in err and "Traceback" not in err


@dataclasses.dataclass
class WriteWhileReading:
    """A source that makes ``write`` once the backup has begun reading the domains."""

    source: Source
    write: Callable[[], object]
    written: bool = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.source, name)

    def dump(self, spec: TableSpec) -> Iterator[Stored]:
        if spec.name == "domains" and not self.written:
            self.written = True
            self.write()
        return self.source.dump(spec)


def test_a_dynamodb_backup_names_the_tables_that_moved_while_it_read(
        services_with: ServicesWith, settings: Settings, dynalite: str, tmp_path: Path) -> None:
    dynamo = dataclasses.replace(settings, storage_backend="dynamodb",
                                 dynamodb_endpoint_url=dynalite,
                                 dynamodb_table_prefix=f"m{uuid.uuid4().hex[:8]}_")
    services = services_with(base=dynamo)
    services.domains.connect("early.backup.test", "pub_1")
    source = open_source(dynamo, TABLES)
    try:
        quiet = take_backup(source, TABLES, tmp_path / "quiet.backup", "test", MARKERS)
        busy = take_backup(WriteWhileReading(source, lambda: services.domains.connect(
            "late.backup.test", "pub_1")), TABLES, tmp_path / "busy.backup", "test", MARKERS)
    finally:
        source.close()
    assert (quiet.consistency, quiet.changed_during) == ("per-item", [])
    assert busy.changed_during == ["domain_counts"]

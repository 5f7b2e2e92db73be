"""What a backup file holds stays its owner's, and a restore takes only what a holder of the
encryption keys wrote: every member of the tar is 0600 (`tar -x` keeps it); the manifest holds
an HMAC under a key derived from the encryption keys, so a file changed without them (an admin
user added, checksum and counts made to match) is refused; keys rotate (any configured key
checks it); a backup of the release before, unsigned, restores only with --allow-unsigned,
with a warning."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from werkzeug.security import generate_password_hash

from admin.accounts import ADMIN_USERS, Users
from edgectl.backup import run_backup, run_restore
from kit.settings import Settings
from store import open_backend
from tests.conftest import TEST_PASSWORD_HASH, ServicesWith
from tests.test_backup import _edgectl, _every_item, _fresh, _repack, _run, _signed, _unsigned

RELEASE_BEFORE = {"format", "format_version", "product_version", "backend", "consistency",
                  "changed_during", "started_at", "finished_at", "tables", "items", "sha256"}
"""The manifest's fields as the release before wrote them (format 1, no ``mac``)."""
NOT_SIGNED = "is not signed under any of the configured encryption keys"


def _backup(services_with: ServicesWith, settings: Settings, path: Path) -> Path:
    services = services_with()
    services.domains.connect("kept.backup.test", "pub_1")
    Users(services.backend.table(ADMIN_USERS), method=TEST_PASSWORD_HASH).create(
        "alice", "alice's long password")
    assert _run(run_backup, settings, path) == 0
    return path


def _refused(capsys: pytest.CaptureFixture[str], sentence: str) -> None:
    err = capsys.readouterr().err
    assert sentence in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_every_member_of_a_backup_is_readable_by_its_owner_only(
        services_with: ServicesWith, settings: Settings, tmp_path: Path) -> None:
    umask = os.umask(0o022)  # a usual one: files made without a mode are world-readable
    try:
        backup = _backup(services_with, settings, tmp_path / "store.backup")
    finally:
        os.umask(umask)
    with tarfile.open(backup) as tar:
        assert {member.name: member.mode for member in tar.getmembers()} == {
            "manifest.json": 0o600, "items.jsonl": 0o600}
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "-xzf", str(backup), "-C", str(unpacked)], check=True, timeout=60)
    assert {path.name: path.stat().st_mode & 0o777 for path in unpacked.iterdir()} == {
        "manifest.json": 0o600, "items.jsonl": 0o600}


def _forge(backup: Path, into: Path, sign: Any = lambda manifest: manifest) -> Path:
    """``backup`` with an admin user added whose password the forger knows, its checksum and
    counts made to match, and its manifest then passed through ``sign``."""
    with tarfile.open(backup) as tar:
        lines = tar.extractfile("items.jsonl").read().splitlines(True)  # type: ignore[union-attr]
    alice = next(json.loads(line) for line in lines if b'"admin_users"' in line)
    user = {**json.loads(alice["data"]), "username": "mallory", "password_hash":
            generate_password_hash("mallory's password", method=TEST_PASSWORD_HASH)}
    lines.append(json.dumps({**alice, "key": "mallory", "data": json.dumps(user)},
                            sort_keys=True).encode() + b"\n")
    items = b"".join(lines)

    def matching(manifest: dict[str, Any]) -> dict[str, Any]:
        tables = {**manifest["tables"], "admin_users": manifest["tables"]["admin_users"] + 1}
        return sign({**manifest, "tables": tables, "items": sum(tables.values()),
                     "sha256": hashlib.sha256(items).hexdigest()})
    return _repack(backup, into, manifest=matching, items=lambda body: items)


def _signs_in(settings: Settings, username: str, password: str) -> bool:
    backend = open_backend(settings)
    try:
        return Users(backend.table(ADMIN_USERS)).verify(username, password) == username
    finally:
        backend.close()


def test_a_backup_changed_without_the_keys_is_refused(
        services_with: ServicesWith, settings: Settings, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    backup = _backup(services_with, settings, tmp_path / "good.backup")
    fresh = _fresh(settings)
    forged = _forge(backup, tmp_path / "forged.backup")
    assert _run(run_restore, fresh, forged) == 2
    _refused(capsys, NOT_SIGNED)
    assert _run(run_restore, fresh, forged, allow_unsigned=True) == 2, "format 1 only"
    _refused(capsys, NOT_SIGNED)
    downgraded = _forge(backup, tmp_path / "downgraded.backup", sign=_unsigned)
    assert _run(run_restore, fresh, downgraded) == 2
    _refused(capsys, "--allow-unsigned")
    assert not Path(fresh.sqlite_path).exists(), "no store opened for a file refused"
    # The forgery is a good file otherwise: signed with the keys, its user would sign in.
    signed = _forge(backup, tmp_path / "signed.backup", lambda m: _signed(m, settings))
    assert _run(run_restore, fresh, signed) == 0
    assert _signs_in(fresh, "mallory", "mallory's password")
    assert _signs_in(fresh, "alice", "alice's long password")


def test_a_backup_signed_under_a_key_rotated_out_of_first_place_restores(
        services_with: ServicesWith, settings: Settings, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    backup = _backup(services_with, settings, tmp_path / "under-a.backup")  # key A
    key_a, key_b = settings.encryption_keys[0], Fernet.generate_key().decode()
    fresh = _fresh(settings)
    assert _run(run_restore, dataclasses.replace(fresh, encryption_keys=[key_b]), backup) == 2
    _refused(capsys, NOT_SIGNED)
    rotated = dataclasses.replace(fresh, encryption_keys=[key_b, key_a])
    assert _run(run_restore, rotated, backup) == 0
    assert _every_item(rotated)["domains"][0]["hostname"] == "kept.backup.test"
    # A backup taken now is signed under B, the first key: A alone does not check it.
    again = tmp_path / "under-b.backup"
    assert _run(run_backup, rotated, again) == 0
    other = dataclasses.replace(settings, sqlite_path=str(tmp_path / "other.db"))
    assert _run(run_restore, dataclasses.replace(other, encryption_keys=[key_a]), again) == 2
    _refused(capsys, NOT_SIGNED)
    assert _run(run_restore, dataclasses.replace(other, encryption_keys=[key_b]), again) == 0


def test_an_unsigned_backup_of_the_release_before_restores_only_when_allowed(
        services_with: ServicesWith, settings: Settings, tmp_path: Path) -> None:
    backup = _backup(services_with, settings, tmp_path / "new.backup")
    old = _repack(backup, tmp_path / "old.backup", manifest=_unsigned)
    with tarfile.open(old) as tar:
        assert set(json.load(tar.extractfile("manifest.json"))) == RELEASE_BEFORE  # type: ignore
    fresh = _fresh(settings)
    refused = _edgectl(fresh, "restore", str(old))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "unsigned backup of format 1" in refused.stderr and "--allow-unsigned" in \
        refused.stderr and refused.stderr.count("\n") == 1, refused.stderr
    assert not Path(fresh.sqlite_path).exists()
    restored = _edgectl(fresh, "restore", "--allow-unsigned", str(old))
    assert restored.returncode == 0, restored.stderr
    assert "warning" in restored.stderr and "was not signed" in restored.stderr
    assert _every_item(fresh)["domains"][0]["hostname"] == "kept.backup.test"
    assert _signs_in(fresh, "alice", "alice's long password")

"""Durable file writes (kit/files.py): mode before content, fsync before and after the rename,
nothing left behind on an error; and the files the edge writes with them."""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator

import pytest

from edge.node import EdgeNode
from kit import files
from kit.files import SECRET, write_atomic


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that takes nothing away, so a mode seen on disk is the one asked for."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_a_secret_is_0600_before_a_byte_is_written(tmp_path: Path, open_umask: None,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int]] = []
    write = os.write

    def watched_write(descriptor: int, data: bytes | memoryview) -> int:
        status = os.fstat(descriptor)
        seen.append((stat.S_IMODE(status.st_mode), status.st_size))
        return write(descriptor, data)

    monkeypatch.setattr(files.os, "write", watched_write)
    target = tmp_path / "key.pem"
    write_atomic(target, "-----BEGIN PRIVATE KEY-----\n", SECRET)
    assert seen and seen[0] == (0o600, 0), "created 0600 and still empty at the first write"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_text() == "-----BEGIN PRIVATE KEY-----\n"


def test_mode_is_exact_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "public.txt", b"x", 0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "public.txt").stat().st_mode) == 0o644


def test_content_is_synced_before_the_rename_and_the_directory_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    fsync, replace = os.fsync, os.replace

    def watched_fsync(descriptor: int) -> None:
        kind = "directory" if stat.S_ISDIR(os.fstat(descriptor).st_mode) else "file"
        events.append(f"fsync {kind}")
        fsync(descriptor)

    def watched_replace(source: str | Path, target: str | Path) -> None:
        events.append("rename")
        replace(source, target)

    monkeypatch.setattr(files.os, "fsync", watched_fsync)
    monkeypatch.setattr(files.os, "replace", watched_replace)
    (tmp_path / "state.json").write_text("old")
    write_atomic(tmp_path / "state.json", "new")
    assert events == ["fsync file", "rename", "fsync directory"]
    assert (tmp_path / "state.json").read_text() == "new"


def test_an_error_leaves_the_old_file_and_no_temporary(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "crt-list"
    target.write_text("old content")

    def full_disk(descriptor: int, data: bytes | memoryview) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "write", full_disk)
    with pytest.raises(OSError):
        write_atomic(target, "new content")
    assert target.read_text() == "old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crt-list"], "no temporary left"


def test_a_large_payload_is_written_whole(tmp_path: Path) -> None:
    payload = os.urandom(3 * 1024 * 1024)
    write_atomic(tmp_path / "big", payload)
    assert (tmp_path / "big").read_bytes() == payload


def test_the_edge_default_certificate_key_is_0600(tmp_path: Path,
                                                                 open_umask: None) -> None:
    node = EdgeNode(tmp_path / "edge")
    default = node.layout.default_cert
    assert stat.S_IMODE(default.stat().st_mode) == 0o600
    assert "PRIVATE KEY" in default.read_text()
    assert not [p for p in default.parent.iterdir() if p.name.endswith(".tmp")]

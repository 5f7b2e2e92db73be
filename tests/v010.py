"""The release before versioned contracts, v0.1.0 (CHANGELOG.md), run from its own tree: the
tests that show a fleet can move from it to this release start its processes."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import pytest
from cryptography.fernet import Fernet

from kit.procs import ManagedProcess, free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
V010 = "a7135c702c9ad01362a609f8e6d8ecd8b8e7c63b"
"""The release before protocol and schema versions (CHANGELOG.md)."""


def v010_source() -> Path:
    """The v0.1.0 tree (``git archive`` of its commit), kept under the temp directory by commit:
    a second run reuses it. A shallow clone fetches the commit from its origin first; a clone
    that cannot get it fails with a sentence (a skip would hide the upgrade tests)."""
    cache = Path(tempfile.gettempdir()) / f"edge-router-{V010[:12]}"
    cache.mkdir(exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one extraction at a time
        if not (cache / "src" / "control" / "cli.py").exists():
            if not _has_v010():
                subprocess.run(["git", "fetch", "--quiet", "origin", V010], cwd=ROOT,
                               capture_output=True, timeout=120)
            if not _has_v010():
                pytest.fail(f"this clone lacks v0.1.0's commit {V010[:12]} and could not fetch "
                            "it from origin: clone with history (not --depth) to run the "
                            "upgrade tests")
            archive = subprocess.run(["git", "archive", V010], cwd=ROOT, capture_output=True,
                                     check=True).stdout
            (cache / "src").mkdir(exist_ok=True)
            subprocess.run(["tar", "-x", "-C", str(cache / "src")], input=archive, check=True)
    return cache / "src"


def _has_v010() -> bool:
    return subprocess.run(["git", "cat-file", "-e", f"{V010}^{{commit}}"], cwd=ROOT,
                          capture_output=True).returncode == 0


def v010_command(*args: str) -> tuple[list[str], dict[str, str], str]:
    """``edgectl <args>`` of v0.1.0 (its entry point was ``python -m control``): the argv, the
    environment that imports its tree rather than this one, and the directory to run it in."""
    source = v010_source()
    return [sys.executable, "-m", "control", *args], {"PYTHONPATH": str(source)}, str(source)


def current_command(*args: str) -> tuple[list[str], dict[str, str], str]:
    """``edgectl <args>`` of this tree, the same way."""
    return [sys.executable, "-m", "edgectl", *args], {"PYTHONPATH": str(ROOT)}, str(ROOT)


Release = Callable[..., "tuple[list[str], dict[str, str], str]"]
"""``v010_command`` or ``current_command``."""


def start_shortlinks(directory: Path, endpoint: str, prefix: str, release: Release,
                     n: int) -> tuple[ManagedProcess, int]:
    """``edgectl shortlinks --workers 1`` of ``release`` on the DynamoDB store ``endpoint``
    (table ``prefix``), logging to ``directory``; started, with its port."""
    port = free_port()
    argv, imports, cwd = release("shortlinks", "--workers", "1")
    env = {**os.environ, "EDGE_API_TOKEN": "test-token-0123456789",
           "EDGE_EDGE_TOKEN": "edge-token-0123456789",
           "EDGE_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
           "EDGE_DATA_DIR": str(directory / str(n)),
           "EDGE_STORAGE_BACKEND": "dynamodb", "EDGE_DYNAMODB_ENDPOINT_URL": endpoint,
           "EDGE_DYNAMODB_TABLE_PREFIX": prefix, "EDGE_SHORT_DOMAINS": "acme.link",
           "EDGE_SHORTLINKS_PORT": str(port), "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", **imports}
    running = ManagedProcess(f"shortlinks{n}", argv, directory / f"shortlinks{n}.log", env=env,
                             cwd=cwd)
    wait_for_port(port, process=running, timeout=60)
    return running, port

"""dynalite (DynamoDB's wire protocol in one Node process, from node_modules) for the tests and
the benches."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from kit.procs import ManagedProcess, start_listening

ROOT = Path(__file__).resolve().parent.parent


def dynalite_command(port: int, path: Path | None, creating_ms: int = 50) -> list[str]:
    """A dynalite on ``port`` storing in ``path`` (None: in its memory). Its tables stay
    CREATING for ``creating_ms``, not its default 500 ms: the store still waits for ACTIVE as on
    DynamoDB, without 10 s per store."""
    local = ROOT / "node_modules" / ".bin" / "dynalite"
    found = os.environ.get("EDGE_DYNALITE") or (str(local) if local.exists() else shutil.which("dynalite"))
    if not found:
        raise RuntimeError("dynalite is not installed: run `npm install` in the repository root")
    return [found, "--host", "127.0.0.1", "--port", str(port),
            *(["--path", str(path)] if path is not None else []),
            "--createTableMs", str(creating_ms), "--deleteTableMs", "50", "--updateTableMs", "50"]


def start_dynalite(directory: Path, path: Path | None = None,
                   creating_ms: int = 0) -> tuple[ManagedProcess, str]:
    """dynalite on a free loopback port, its log in ``directory``: (its process, its
    endpoint URL)."""
    process, port = start_listening(lambda port: ManagedProcess(
        "dynalite", dynalite_command(port, path, creating_ms), directory / "dynalite.log"))
    return process, f"http://127.0.0.1:{port}"

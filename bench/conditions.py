"""The conditions a figure was measured under, printed by every bench and kept in its JSON.

A figure without its date, commit, versions and load is a figure nobody can compare, so
every script calls `print_conditions()` first and `bench/run_all.py` stores `conditions()`
beside the results.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import signal
import ssl
import subprocess
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*argv: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (done.stdout or done.stderr).strip() or "unknown"


def _haproxy_version() -> str:
    if not shutil.which("haproxy"):
        return "not installed"
    first = _run("haproxy", "-v").splitlines()[0]
    parts = first.split()
    return parts[2] if len(parts) > 2 else first


def conditions() -> dict:
    """Date, commit, versions and load of this machine, now."""
    commit = _run("git", "rev-parse", "--short", "HEAD")
    dirty = _run("git", "status", "--porcelain", "--untracked-files=no")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit + ("+dirty" if dirty not in ("", "unknown") else ""),
        "haproxy": _haproxy_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 2),
    }


def print_conditions() -> dict:
    """Print the conditions, and from now on stop on SIGTERM as on Ctrl-C: the bench's
    ``finally`` blocks stop the servers it started (run_all's timeout and an operator's
    ``kill`` send SIGTERM; its default would leave them running)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    found = conditions()
    print(
        f"conditions: {found['date']}, commit {found['commit']}, HAProxy {found['haproxy']}, "
        f"{found['openssl']}, Python {found['python']}, {found['cores']} cores, "
        f"load average {found['load_average']:.2f}"
    )
    return found


def record(bench: str, figures: dict, measured: dict | None = None) -> None:
    """Keep one bench's figures for `bench/run_all.py`.

    When BENCH_RESULTS names a file, one JSON line {"bench", "conditions", "figures"} is appended
    to it; otherwise nothing happens, so a bench run by hand only prints. `figures` maps a short
    name to a number or a small dict (value, unit, baseline, ratio), JSON-serialisable.
    ``measured``: the conditions ``print_conditions()`` returned at the start, for a bench that
    runs long (the load at its start, and the commit it started on); default: now.
    """
    path = os.environ.get("BENCH_RESULTS")
    if not path:
        return
    line = json.dumps({"bench": bench, "conditions": measured or conditions(),
                       "figures": figures})
    with open(path, "a", encoding="utf-8") as out:
        out.write(line + "\n")

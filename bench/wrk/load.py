"""Realistic load for the benches: wrk with ``spread.lua``, over thousands of keys (hosts,
slugs, session tokens), uniform or Zipf, optionally pinned to a core with ``taskset``.

One request per key is written to a keys file (host, path, one optional header); wrk's Lua
picks a line per request (bench/wrk/spread.lua). A bench that used one host, one slug or one
token over kept-alive connections measured the best case: every lookup hit the CPU cache.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterable, Sequence

SCRIPT = Path(__file__).resolve().parent / "spread.lua"
DISTRIBUTIONS = ("uniform", "zipf", "sequential")


@dataclasses.dataclass
class Run:
    rate: float
    """Requests per second, wall clock."""
    requests: int
    bad: int
    """Answers that were not 2xx or 3xx."""
    errors: int
    """Socket errors (connect, read, write, timeout)."""


def write_keys(path: Path, rows: Iterable[tuple[str, str] | tuple[str, str, str]]) -> int:
    """One line per request: host, path[, "Header: value"]. Returns how many."""
    count = 0
    with path.open("w") as out:
        for row in rows:
            if any("\t" in field or "\n" in field for field in row):
                raise ValueError(f"a key holds a tab or a newline: {row!r}")
            out.write("\t".join(row) + "\n")
            count += 1
    return count


def pinned(argv: Sequence[str], core: int | None) -> list[str]:
    """``argv`` under ``taskset -c core`` (as is without a core, or without taskset)."""
    if core is None or not shutil.which("taskset"):
        return list(argv)
    return ["taskset", "-c", str(core), *argv]


def spare_cores() -> tuple[int | None, int | None]:
    """(server core, load core): two separate cores when the machine has two, else none."""
    cores = sorted(os.sched_getaffinity(0))
    return (cores[0], cores[1]) if len(cores) >= 2 else (None, None)


def wrk(url: str, keys: Path, distribution: str = "uniform", seconds: int = 5,
        connections: int = 50, threads: int = 1, core: int | None = None,
        exponent: float = 1.0, extra: Sequence[str] = ()) -> Run:
    """One wrk run over the keys in ``keys`` (``exponent``: Zipf's; for "sequential", the
    line to start after)."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}")
    argv = pinned(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", *extra,
                   "-s", str(SCRIPT), url, "--", str(keys), distribution, str(exponent)], core)
    output = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rate = float(_field(r"Requests/sec:\s+([\d.]+)", output))
    requests = int(_field(r"(\d+) requests in", output))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       output)
    return Run(rate, requests, int(bad.group(1)) if bad else 0,
               sum(map(int, errors.groups())) if errors else 0)


def _field(pattern: str, output: str) -> str:
    found = re.search(pattern, output)
    if found is None:
        raise RuntimeError(f"wrk printed no {pattern!r}:\n{output}")
    return found.group(1)


def warm(url: str, keys: Path, count: int, core: int | None = None, connections: int = 50,
         rate_guess: float = 500.0) -> None:
    """Visit every key at least once (in order, each run going on where the last stopped), so
    caches and leases are what a server that has run for a while holds: wrk runs until it has
    made ``count`` requests."""
    done = 0
    while done < count:
        seconds = max(1, int((count - done) / rate_guess) + 1)
        run = wrk(url, keys, "sequential", seconds, connections, core=core, exponent=done)
        done += run.requests
        rate_guess = max(run.rate, 50.0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time process ``pid`` and its reaped children used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(field) for field in fields[11:15]) / os.sysconf("SC_CLK_TCK")

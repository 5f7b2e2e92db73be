"""Run every benchmark and keep every figure, with its conditions, in one JSON file.

Usage: python bench/run_all.py [--full] [--only a,b] [--skip a,b] [--keep]
           [--out bench/results.json]

Each script of ``BENCHES`` runs as its own process (quick sizes by default, the published sizes
with ``--full``) with ``BENCH_RESULTS`` naming a scratch file, where ``bench.conditions.record``
appends its figures (``--add FILE`` takes what a bench run by hand recorded the same way). The
output is::

    {"conditions": {...this run...}, "mode": "quick" | "full" | "mixed",
     "results": [{"bench", "conditions", "figures",
                  "run": {"mode", "args", "exit_code", "seconds"}}]}

A script that fails, or that records nothing, still gets an entry (empty figures, its exit code
and the end of its output), so a missing figure is visible. ``--keep`` keeps the entries of the
scripts not run this time from the existing output file (a full run of one bench merged into
quick runs of the others); each entry carries its own conditions either way.
``scripts/render_bench.py`` turns the file into docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.conditions import conditions, print_conditions  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results.json"


@dataclasses.dataclass(frozen=True)
class Bench:
    quick: tuple[str, ...]
    """Arguments for the smallest sizes that still measure the path (minutes for all)."""
    full: tuple[str, ...] = ()
    """Arguments for the published sizes (the script's defaults unless given)."""


BENCHES: dict[str, Bench] = {
    "admin_pages": Bench(("--domains", "500", "--certificates", "100", "--rounds", "5")),
    "byo_upload": Bench(("--rounds", "3", "--gap", "0.2")),
    "certs_vs_certbot": Bench(("--count", "5", "--certbot-count", "2")),
    "cold_start": Bench(("--routes", "500", "--singles", "200")),
    "cold_shards": Bench(("--routes", "2000", "--shards", "4")),
    "control_scale": Bench(("--domains", "200,1000", "--window", "10", "--samples", "10"),
                           ("--domains", "1000,10000,100000")),
    "dns_check": Bench(("--domains", "200", "--sample", "50")),
    "edge_apply": Bench(("--certs", "100", "--hot", "5", "--reloads", "1")),
    "node_scale": Bench(("--routes", "2000", "--changes", "20", "--first", "100", "--whole", "1",
                         "--floor", "500")),
    "prevalidation_switch": Bench(("--seconds", "4",)),
    "redirect_domains": Bench(("--routes", "100", "--seconds", "2", "--rounds", "1")),
    "restore": Bench(("--items", "2000")),
    "router_overhead": Bench(("--map-entries", "100000", "--seconds", "2", "--rounds", "1")),
    "routing_overhead": Bench(("--entries", "1000", "--seconds", "2", "--rounds", "1")),
    "shard_change_latency": Bench(("--domains", "1000", "--shards", "2", "--samples", "10",
                                   "--new", "10")),
    "shortlinks_map": Bench(("--links", "10000", "--seconds", "2", "--rounds", "1",
                             "--changes", "5")),
    "shortlinks_python_path": Bench(("--keys", "1000", "--seconds", "2")),
    "shortlinks_throughput": Bench(("--seconds", "2", "--rounds", "1")),
    "sso_overhead": Bench(("--seconds", "2", "--rounds", "1")),
    "store_client": Bench(("--items", "500", "--rounds", "2")),
    "store_requests": Bench(()),
}
"""Every bench script (``bench/<name>.py``); bench/control_seed.py and control_stack.py are
control_scale's parts, conditions.py and this file are the plumbing."""


def _variant(entry: dict[str, Any]) -> tuple[str, Any, Any]:
    """What an entry added by hand replaces: the same bench on the same backend at the same
    sizes (a bench run on SQLite and on DynamoDB keeps an entry of each, and a run at 1,000
    and 10,000 domains leaves the one at 100,000)."""
    figures = entry.get("figures", {})
    sizes = tuple(size.get("domains") for size in figures.get("sizes") or ()
                  if isinstance(size, dict))
    return entry["bench"], figures.get("backend"), sizes


def run_one(name: str, args: tuple[str, ...], timeout: float,
            mode: str) -> list[dict[str, Any]]:
    """Run ``bench/<name>.py``; the entries it recorded (one with empty figures if none)."""
    print(f"== {name} {' '.join(args)}", flush=True)
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as folder:
        scratch = Path(folder) / "results.jsonl"
        env = {**os.environ, "BENCH_RESULTS": str(scratch), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                           os.environ.get("PYTHONPATH")]))}
        started = time.monotonic()
        process = subprocess.Popen([sys.executable, str(ROOT / "bench" / f"{name}.py"), *args],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=env, cwd=ROOT, start_new_session=True)
        lines: list[str] = []
        # Past the timeout the bench is stopped by its own PID (SIGTERM); it stops the servers
        # it started (bench/conditions.py: print_conditions).
        timer = threading.Timer(timeout, process.terminate)
        timer.start()
        try:
            assert process.stdout is not None
            for line in process.stdout:  # the bench's own lines, as they come
                print(f"   {line}", end="", flush=True)
                lines.append(line)
            exit_code = process.wait()
        finally:
            timer.cancel()
        if time.monotonic() - started >= timeout:
            lines.append(f"run_all: stopped after {timeout:.0f} s\n")
        run = {"mode": mode, "args": list(args), "exit_code": exit_code,
               "seconds": round(time.monotonic() - started, 1)}
        recorded = [json.loads(line) for line in scratch.read_text().splitlines()
                    if line.strip()] if scratch.exists() else []
    if not recorded:
        return [{"bench": name, "conditions": conditions(), "figures": {},
                 "run": {**run, "output_tail": "".join(lines[-15:])}}]
    return [{**entry, "run": run} for entry in recorded]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the published sizes")
    parser.add_argument("--only", default="", help="comma-separated bench names")
    parser.add_argument("--skip", default="", help="comma-separated bench names")
    parser.add_argument("--keep", action="store_true",
                        help="keep the existing output's entries of the benches not run")
    parser.add_argument("--add", type=Path, action="append", default=[],
                        help="also take the entries a bench run by hand recorded in this file "
                             "(BENCH_RESULTS=FILE python bench/NAME.py ...); they replace "
                             "this run's entries of the same bench")
    parser.add_argument("--no-run", action="store_true",
                        help="run no bench: only merge --add (and --keep) into the output")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--timeout", type=float, default=3 * 3600.0,
                        help="seconds one bench may take")
    args = parser.parse_args()
    only = {name for name in args.only.split(",") if name}
    skip = {name for name in args.skip.split(",") if name}
    unknown = (only | skip) - set(BENCHES)
    if unknown:
        parser.error(f"no such bench: {', '.join(sorted(unknown))} "
                     f"(known: {', '.join(BENCHES)})")
    names = [name for name in BENCHES if (not only or name in only) and name not in skip
             and not args.no_run]
    found = print_conditions()
    results: list[dict[str, Any]] = []
    for name in names:
        bench = BENCHES[name]
        results += run_one(name, bench.full if args.full else bench.quick, args.timeout,
                           "full" if args.full else "quick")
    added = [{**json.loads(line), "run": {"mode": "by hand", "from": path.name}}
             for path in args.add for line in path.read_text().splitlines() if line.strip()]
    replaced = {_variant(entry) for entry in added}
    results = [entry for entry in results if _variant(entry) not in replaced] + added
    if args.keep and args.out.exists():
        earlier = json.loads(args.out.read_text()).get("results", [])
        results = [entry for entry in earlier
                   if entry["bench"] not in names and _variant(entry) not in replaced] + results
    results.sort(key=lambda entry: list(BENCHES).index(entry["bench"])
                 if entry["bench"] in BENCHES else len(BENCHES))
    modes = sorted({str(entry.get("run", {}).get("mode")) for entry in results})
    document = {"conditions": found, "mode": modes[0] if len(modes) == 1 else "mixed",
                "results": results}
    args.out.write_text(json.dumps(document, indent=1, sort_keys=False) + "\n")
    failed = [entry["bench"] for entry in results if entry.get("run", {}).get("exit_code")]
    print(f"wrote {args.out} ({len(results)} results"
          + (f"; failed: {', '.join(failed)})" if failed else ")"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

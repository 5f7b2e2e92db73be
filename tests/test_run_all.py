"""bench/run_all.py runs bench scripts as processes and keeps what each recorded, with the
conditions of the run and of each bench, in one JSON file (what scripts/render_bench.py reads).
Two cheap benches at their quick sizes prove the plumbing; the figures themselves are not
judged here (speed is for bench/, not for tests)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.conditions import record

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def run_all(*args: str) -> subprocess.CompletedProcess[str]:
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "run_all.py"), *args], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        output, _ = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()  # by its PID; its bench stops the servers it started
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, output)


def test_run_all_keeps_every_figure_with_its_conditions(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "results.json"
    done = run_all("--only", "admin_pages,edge_apply", "--out", str(out))
    assert done.returncode == 0, done.stdout
    document = json.loads(out.read_text())
    assert document["mode"] == "quick"
    for field in ("date", "commit", "haproxy", "openssl", "python", "load_average"):
        assert document["conditions"][field] not in (None, ""), field
    by_bench = {entry["bench"]: entry for entry in document["results"]}
    assert sorted(by_bench) == ["admin_pages", "edge_apply"]
    for entry in by_bench.values():
        assert entry["conditions"]["commit"] == document["conditions"]["commit"]
        assert entry["run"]["exit_code"] == 0 and entry["run"]["mode"] == "quick"
    pages = by_bench["admin_pages"]["figures"]
    assert pages["domains"] == 500  # the quick size reached the script
    assert pages["pages_ms"]["/healthz"]["median"] > 0
    apply = by_bench["edge_apply"]["figures"]
    assert apply["certificates"] == 100 and apply["hot_ms"]["n"] == 5
    # A bench that fails still has its entry, with its exit code and why; --keep merges, and
    # --add takes what a bench run by hand recorded.
    by_hand = tmp_path / "by_hand.jsonl"
    monkeypatch.setenv("BENCH_RESULTS", str(by_hand))
    record("dns_check", {"domains": 3})
    failed = run_all("--only", "admin_pages", "--keep", "--out", str(out), "--timeout", "0.01",
                     "--add", str(by_hand))
    assert failed.returncode == 1
    merged = {entry["bench"]: entry for entry in json.loads(out.read_text())["results"]}
    assert merged["edge_apply"]["figures"] == apply  # kept from the first run
    assert merged["admin_pages"]["figures"] == {}
    assert merged["admin_pages"]["run"]["exit_code"] != 0
    assert "stopped after" in merged["admin_pages"]["run"]["output_tail"]
    assert merged["dns_check"]["figures"] == {"domains": 3}
    assert merged["dns_check"]["run"]["mode"] == "by hand"
    # One bench on two backends keeps an entry of each, and one at other sizes; a new run
    # replaces only the entry of its backend and sizes.
    for backend, domains, seconds in (("sqlite", 10, 1), ("dynamodb", 10, 2), ("dynamodb", 99, 3),
                                      ("dynamodb", 10, 4)):
        by_hand.unlink()
        record("control_scale", {"backend": backend, "sizes": [{"domains": domains}],
                                 "seconds": seconds})
        assert run_all("--no-run", "--keep", "--out", str(out), "--add", str(by_hand)
                       ).returncode == 1  # admin_pages' failed entry is kept
    scales = [(entry["figures"]["backend"], entry["figures"]["seconds"])
              for entry in json.loads(out.read_text())["results"]
              if entry["bench"] == "control_scale"]
    assert sorted(scales) == [("dynamodb", 3), ("dynamodb", 4), ("sqlite", 1)]
    assert "edge_apply" in {entry["bench"] for entry in json.loads(out.read_text())["results"]}


def test_a_bench_stopped_by_the_timeout_stops_the_servers_it_started(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_all's timeout sends SIGTERM to a bench; the bench stops what it started (here
    control_scale, caught while it starts knotd, seeds and runs serve) before it exits."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the bench's folders: its servers name it
    done = run_all("--only", "control_scale", "--timeout", "6", "--out", str(tmp_path / "r.json"))
    assert "domains on sqlite" in done.stdout, done.stdout  # caught midway, servers started
    mine = str(tmp_path).encode()
    left = []
    for proc in Path("/proc").iterdir():  # serve and the agent name it in their environment
        try:
            if proc.name.isdigit() and any(mine in (proc / part).read_bytes()
                                           for part in ("cmdline", "environ")):
                left.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    assert left == [], left
    tail = json.loads((tmp_path / "r.json").read_text())["results"][0]["run"]["output_tail"]
    assert "stopped after" in tail, tail

"""Issuing certificates against Pebble: our issuer against the certbot CLI, at equal concurrency.

Usage: python bench/certs_vs_certbot.py [--count 20] [--concurrency 8]

Two phases, each tool `count` certificates in each, each tool and phase on its own Pebble
(PEBBLE_VA_NOSLEEP=1, nonce rejection at Pebble's default):
- serial: both one at a time (ours: one issue after another; certbot: one process after another);
- parallel: both `concurrency` at a time (ours: that many threads in one process; certbot: that
  many `certonly` processes at once, each slot with its own directories and account).
Ours is our AcmeIssuer as Services.from_settings builds it (SQLite in a temp dir), HTTP-01
answered by our Flask app; certbot uses `--webroot` on a shared directory served by a plain
HTTP server (standalone would make parallel runs fight over the port). Throughput (issued /
wall seconds) and latency (each name's time, its failed runs included) are reported apart;
ours runs warm in one process, certbot pays a process start per name (that is how it runs).
Both include creating their ACME accounts (ours on the first order, certbot once per slot).
certbot is installed into its own virtualenv (~/.cache/edge-bench/certbot-venv) if missing.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography.fernet import Fernet
from werkzeug.serving import make_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from admin_app import create_app  # noqa: E402
from bench import conditions  # noqa: E402
from certs.issuer import IssuanceError  # noqa: E402
from control.wiring import Services  # noqa: E402
from devtools.pebble import PebbleStack  # noqa: E402
from kit.procs import free_port  # noqa: E402
from kit.settings import load_settings  # noqa: E402

VENV = Path.home() / ".cache" / "edge-bench" / "certbot-venv"
CERTBOT_TIMEOUT = 180.0
CERTBOT_ATTEMPTS = 3  # Pebble rejects 5% of good nonces; certbot's library retries only once


def certbot_binary() -> Path:
    certbot = VENV / "bin" / "certbot"
    if certbot.exists():
        return certbot
    print(f"installing certbot into {VENV} (not timed) ...", flush=True)
    VENV.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "certbot"],
                   check=True)
    return certbot


def certbot_version(certbot: Path) -> str:
    out = subprocess.run([str(certbot), "--version"], capture_output=True, text=True, timeout=60)
    return (out.stdout or out.stderr).strip()


def run_ours(root: Path, label: str, count: int, concurrency: int) -> Phase:
    """`count` names through our issuer, `concurrency` at a time, in one warm process."""
    http_port = free_port()
    stack = PebbleStack(root / f"pebble-ours-{label}", http_port=http_port)
    services = None
    server = None
    try:
        settings = load_settings(
            env={}, api_token="bench-token-0123456789", edge_token="bench-edge-0123456789",
            encryption_keys=Fernet.generate_key().decode(), data_dir=str(root / f"data-{label}"),
            acme_directory_url=stack.directory_url, acme_ca_bundle=str(stack.listener_ca))
        services = Services.from_settings(settings)
        server = make_server("127.0.0.1", http_port, create_app(services), threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        names = [f"c{n}.{label}.bench.test" for n in range(count)]
        phase = Phase()

        def issue(name: str) -> None:
            started = time.perf_counter()
            try:
                services.issuer.issue([name])
                phase.latencies.append(time.perf_counter() - started)
            except IssuanceError as exc:
                phase.failures.append(f"{name}: {exc.reason}")

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(issue, names))
        phase.elapsed = time.perf_counter() - started
        phase.issued = sum(1 for name in names
                           if (stored := services.certificates.get(name)) is not None
                           and "Pebble" in stored.issuer)
        return phase
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        if services is not None:
            services.close()
        stack.stop()


def run_certbot_once(certbot: Path, argv: list[str], env: dict[str, str],
                     log: Path) -> tuple[int, str]:
    with open(log, "ab") as out:
        process = subprocess.Popen([str(certbot), *argv], stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        try:
            return process.wait(CERTBOT_TIMEOUT), ""
        except subprocess.TimeoutExpired:
            process.kill()  # by its own PID
            process.wait()
            return -1, "timed out"


def _reason(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "rror" in line or "badNonce" in line]
    return (errors or lines or ["no output"])[0]


def webroot_server(webroot: Path, port: int) -> ThreadingHTTPServer:
    """The HTTP-01 answers of every certbot run: their shared webroot, served as files."""
    (webroot / ".well-known" / "acme-challenge").mkdir(parents=True)  # made here: no run
    # removes it while another writes into it

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), functools.partial(
        Quiet, directory=str(webroot)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run_certbot(root: Path, label: str, count: int, concurrency: int) -> Phase:
    """`count` names through the certbot CLI, one `certonly --webroot` process per name,
    `concurrency` processes at a time (each slot its own config, work and logs directories, as
    certbot locks them: so its own ACME account too). A failed run is run again (Pebble
    rejects 5% of good nonces); a name's latency includes its failed runs."""
    certbot = certbot_binary()
    http_port = free_port()
    stack = PebbleStack(root / f"pebble-certbot-{label}", http_port=http_port)
    base = root / f"certbot-{label}"
    server = webroot_server(base / "webroot", http_port)
    env = {**os.environ, "REQUESTS_CA_BUNDLE": str(stack.listener_ca),
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    slots: queue.Queue[Path] = queue.Queue()
    for n in range(concurrency):
        slots.put(base / f"slot{n}")
    phase = Phase()

    def issue(name: str) -> None:
        slot = slots.get()
        try:
            common = ["certonly", "--non-interactive", "--agree-tos",
                      "--register-unsafely-without-email", "--server", stack.directory_url,
                      "--config-dir", str(slot / "config"), "--work-dir", str(slot / "work"),
                      "--logs-dir", str(slot / "logs"), "--webroot", "-w",
                      str(base / "webroot"), "-d", name]
            started = time.perf_counter()
            for attempt in range(CERTBOT_ATTEMPTS):
                slot.mkdir(parents=True, exist_ok=True)
                (slot / "run.log").unlink(missing_ok=True)
                code, why = run_certbot_once(certbot, common, env, slot / "run.log")
                if code == 0:
                    phase.latencies.append(time.perf_counter() - started)
                    break
                phase.failed_runs += 1
                print(f"  certbot run for {name} failed (exit {code} {why}): "
                      f"{_reason(slot / 'run.log')}", flush=True)
                if attempt == CERTBOT_ATTEMPTS - 1:
                    phase.failures.append(f"{name}: exit {code} {why}".strip())
            if (slot / "config" / "live" / name / "fullchain.pem").exists():
                phase.issued += 1
        finally:
            slots.put(slot)

    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(issue, [f"b{n}.{label}.bench.test" for n in range(count)]))
        phase.elapsed = time.perf_counter() - started
    finally:
        server.shutdown()
        server.server_close()
        stack.stop()
    return phase


@dataclasses.dataclass
class Phase:
    """One tool's run: wall time, each issued name's latency, failures."""
    elapsed: float = 0.0
    issued: int = 0
    latencies: list[float] = dataclasses.field(default_factory=list)
    failures: list[str] = dataclasses.field(default_factory=list)
    failed_runs: int = 0

    def throughput(self) -> float:
        return self.issued / self.elapsed if self.elapsed else 0.0

    def latency(self, quantile: float) -> float:
        ordered = sorted(self.latencies) or [float("nan")]
        return ordered[min(len(ordered) - 1, int(len(ordered) * quantile))]

    def line(self, tool: str) -> str:
        return (f"  {tool:8} {self.issued:4} issued in {self.elapsed:7.2f} s: throughput "
                f"{self.throughput():6.2f} certs/s; latency p50 {self.latency(0.5) * 1000:7.0f} "
                f"ms, max {max(self.latencies or [0]) * 1000:7.0f} ms"
                + (f" ({self.failed_runs} failed runs re-run)" if self.failed_runs else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20, help="certificates per tool and phase")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="the parallel phase's N, for both tools")
    args = parser.parse_args()
    conditions.print_conditions()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    certbot = certbot_binary()  # installed before anything is timed
    print(f"({certbot_version(certbot)}; ours: AcmeIssuer in one warm process)", flush=True)
    figures: dict[str, object] = {"count": args.count, "concurrency": args.concurrency}
    failed = False
    with tempfile.TemporaryDirectory(prefix="certs-vs-certbot-") as tmp:
        root = Path(tmp)
        for label, concurrency in (("serial", 1), ("parallel", args.concurrency)):
            print(f"{label}: {args.count} certificates each, {concurrency} at a time",
                  flush=True)
            ours = run_ours(root, label, args.count, concurrency)
            theirs = run_certbot(root, label, args.count, concurrency)
            for line in ours.failures + theirs.failures:
                print(f"  FAILED {line}")
            print(ours.line("ours"))
            print(theirs.line("certbot"))
            print(f"  ours / certbot: throughput {ours.throughput() / theirs.throughput():.1f}x,"
                  f" latency p50 {theirs.latency(0.5) / ours.latency(0.5):.1f}x lower")
            figures[label] = {
                "concurrency": concurrency,
                "ours_certs_per_s": round(ours.throughput(), 3),
                "certbot_certs_per_s": round(theirs.throughput(), 3),
                "ours_latency_p50_ms": round(ours.latency(0.5) * 1000),
                "certbot_latency_p50_ms": round(theirs.latency(0.5) * 1000),
                "throughput_ratio": round(ours.throughput() / theirs.throughput(), 2),
                "latency_p50_ratio": round(theirs.latency(0.5) / ours.latency(0.5), 2)}
            failed |= ours.issued < args.count or theirs.issued < args.count
    conditions.record("certs_vs_certbot", figures)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()

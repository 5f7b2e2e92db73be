"""Issuing certificates against Pebble: our issuer (concurrent, bounded) vs the certbot CLI.

Usage: python bench/certs_vs_certbot.py [--count 100] [--concurrency 16] [--certbot-count N]

Phase 1: `count` certificates through our AcmeIssuer (as built by Services.from_settings,
SQLite in a temp dir), `concurrency` at a time, HTTP-01 answered by our Flask app on loopback.
Phase 2: `certbot-count` certificates (default: count) through the certbot CLI, one
`certonly --standalone -d <name>` run per domain, sequentially, the way people run it.
certbot is installed into its own virtualenv (~/.cache/edge-bench/certbot-venv) if missing.
Each phase gets its own Pebble (PEBBLE_VA_NOSLEEP=1, nonce rejection at Pebble's default).
The ratio is computed from per-certificate times measured in this run; nothing is extrapolated.
Both totals include creating the ACME account (ours on the first order, certbot on its first run).
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryptography.fernet import Fernet
from werkzeug.serving import make_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from admin_app import create_app  # noqa: E402
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


def run_ours(root: Path, count: int, concurrency: int) -> tuple[float, int, list[str]]:
    """(seconds, certificates issued, failures) for `count` names through our issuer."""
    http_port = free_port()
    stack = PebbleStack(root / "pebble-ours", http_port=http_port)
    services = None
    server = None
    try:
        settings = load_settings(
            env={}, api_token="bench-token-0123456789", edge_token="bench-edge-0123456789",
            encryption_keys=Fernet.generate_key().decode(), data_dir=str(root / "data"),
            acme_directory_url=stack.directory_url, acme_ca_bundle=str(stack.listener_ca))
        services = Services.from_settings(settings)
        server = make_server("127.0.0.1", http_port, create_app(services), threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        names = [f"c{n}.bench.test" for n in range(count)]
        failures: list[str] = []

        def issue(name: str) -> None:
            try:
                services.issuer.issue([name])
            except IssuanceError as exc:
                failures.append(f"{name}: {exc.reason}")

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(issue, names))
        elapsed = time.perf_counter() - started
        issued = sum(1 for name in names
                     if (stored := services.certificates.get(name)) is not None
                     and "Pebble" in stored.issuer)
        print(f"  (our issuer retried badNonce {services.issuer.bad_nonce_retries} times "
              f"beyond the library's own retry)")
        return elapsed, issued, failures
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


def run_certbot(root: Path, count: int) -> tuple[float, int, int, float, list[str]]:
    """(seconds incl. retries, certificates issued, failed runs, seconds in them, failures)."""
    certbot = certbot_binary()
    print(f"  ({certbot_version(certbot)}, one run per domain, sequential)", flush=True)
    http_port = free_port()
    stack = PebbleStack(root / "pebble-certbot", http_port=http_port)
    base = root / "certbot"
    base.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "REQUESTS_CA_BUNDLE": str(stack.listener_ca),
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    common = ["certonly", "--non-interactive", "--agree-tos", "--register-unsafely-without-email",
              "--server", stack.directory_url,
              "--config-dir", str(base / "config"), "--work-dir", str(base / "work"),
              "--logs-dir", str(base / "logs"),
              "--standalone", "--preferred-challenges", "http",
              "--http-01-port", str(http_port), "--http-01-address", "127.0.0.1"]
    elapsed = failed_seconds = 0.0
    failed_runs = issued = 0
    failures: list[str] = []
    try:
        for n in range(count):
            name = f"b{n}.bench.test"
            for attempt in range(CERTBOT_ATTEMPTS):
                started = time.perf_counter()
                (base / "run.log").unlink(missing_ok=True)
                code, why = run_certbot_once(certbot, [*common, "-d", name], env,
                                             base / "run.log")
                took = time.perf_counter() - started
                elapsed += took
                if code == 0:
                    break
                failed_runs += 1
                failed_seconds += took
                print(f"  certbot run for {name} failed (exit {code} {why}): "
                      f"{_reason(base / 'run.log')}", flush=True)
                if attempt == CERTBOT_ATTEMPTS - 1:
                    failures.append(f"{name}: exit {code} {why}".strip())
            if (base / "config" / "live" / name / "fullchain.pem").exists():
                issued += 1
    finally:
        stack.stop()
    return elapsed, issued, failed_runs, failed_seconds, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--certbot-count", type=int, default=None,
                        help="certificates through certbot (default: --count)")
    args = parser.parse_args()
    certbot_count = args.count if args.certbot_count is None else args.certbot_count
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    certbot_binary()  # install before anything is timed
    with tempfile.TemporaryDirectory(prefix="certs-vs-certbot-") as tmp:
        root = Path(tmp)
        print(f"our issuer: {args.count} certificates, concurrency {args.concurrency}", flush=True)
        ours, ours_issued, ours_failures = run_ours(root, args.count, args.concurrency)
        print(f"certbot: {certbot_count} certificates", flush=True)
        theirs, theirs_issued, failed_runs, failed_seconds, theirs_failures = \
            run_certbot(root, certbot_count)
    for line in ours_failures + theirs_failures:
        print(f"  FAILED {line}")
    ours_per = ours / max(ours_issued, 1)
    theirs_per = theirs / max(theirs_issued, 1)
    print(f"ours:    {ours_issued}/{args.count} certificates in {ours:7.2f} s  "
          f"{ours_issued / ours:7.2f} certs/s  {ours_per * 1000:8.1f} ms/cert")
    print(f"certbot: {theirs_issued}/{certbot_count} certificates in {theirs:7.2f} s  "
          f"{theirs_issued / theirs:7.2f} certs/s  {theirs_per * 1000:8.1f} ms/cert  "
          f"({failed_runs} failed runs re-run, {failed_seconds:.2f} s of the total)")
    print(f"ratio certbot/ours (per certificate): {theirs_per / ours_per:.1f}x")
    if ours_issued < args.count or theirs_issued < certbot_count:
        sys.exit(1)


if __name__ == "__main__":
    main()

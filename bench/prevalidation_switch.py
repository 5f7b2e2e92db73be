"""Failed requests while a pre-validated domain's traffic record switches to us (goal: 0).

Usage: python bench/prevalidation_switch.py [--seconds 10] [--connections 20]
Every process is real (control service, agent + HAProxy, sample apps, knotd, unbound, Pebble).
The domain gets its certificate through the DNS-01 delegation while its CNAME points elsewhere
(status awaiting_traffic), then wrk loads the edge as that host while, halfway through, the
CNAME is switched to us and the worker marks the domain active. The baseline is the same wrk
run on the same domain, active, with no switch, in the same process. Needs wrk and unbound.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devtools.demo import LocalStack  # noqa: E402
from bench.conditions import print_conditions, record  # noqa: E402
from devtools.pebble import PebbleStack  # noqa: E402
from kit.procs import free_port  # noqa: E402
from devtools.dns_server import KnotServer, UnboundResolver  # noqa: E402

HOST = "www.pub.test"
DCV_ZONE = "dcv.platform.test"
TSIG = ("edge-key", "c2VjcmV0LWtleS1mb3ItdGhlLWVkZ2UtdGVzdHMtMTIzNA==")


def wrk(port: int, seconds: int, connections: int) -> dict[str, float]:
    output = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
                             "-H", f"Host: {HOST}", f"https://127.0.0.1:{port}/echo/bench"],
                            capture_output=True, text=True, check=True).stdout
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       output)
    return {"requests": float(re.search(r"(\d+) requests in", output).group(1)),  # type: ignore
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore
            "failed": float((int(non_2xx.group(1)) if non_2xx else 0)
                            + (sum(int(g) for g in errors.groups()) if errors else 0))}


def status(stack: LocalStack) -> str:
    return str(stack.api("GET", f"/api/v1/domains/{HOST}").json()["status"])


def wait_status(stack: LocalStack, wanted: str, timeout: float = 60.0) -> float:
    start = time.monotonic()
    while status(stack) != wanted:
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{HOST} not {wanted} after {timeout}s")
        stack.check_alive()
        time.sleep(0.05)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=20)
    args = parser.parse_args()
    print_conditions()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        knot = KnotServer(directory / "knot", {"pub.test": "@ A 192.0.2.10\n", DCV_ZONE: ""},
                          tsig=TSIG)
        running: list[object] = [knot]
        try:
            unbound = UnboundResolver(directory / "unbound", knot, ["pub.test", DCV_ZONE])
            running.append(unbound)
            pebble = PebbleStack(directory / "pebble", http_port=free_port(),
                                 dns_server=unbound.server)
            running.append(pebble)
            stack = LocalStack(directory / "stack", pebble=pebble, log_level="WARNING",
                               extra_env={
                "EDGE_DNS_SERVERS": "127.0.0.1", "EDGE_DNS_PORT": str(knot.port),
                "EDGE_DCV_ZONE": DCV_ZONE, "EDGE_PREVALIDATION_RECHECK_SECONDS": "0.5",
                "EDGE_REGISTRARS": json.dumps({DCV_ZONE: {
                    "provider": "rfc2136", "server": "127.0.0.1", "port": knot.port,
                    "key_name": TSIG[0], "key_secret": TSIG[1]}})})
            running.append(stack)
            records = {r["name"]: r["value"] for r in stack.api(
                "POST", "/api/v1/domains",
                json={"hostname": HOST, "publication_id": "pub_1"}).json()["dns_records"]}
            zone = (f'_edge-challenge.www TXT "{records[f"_edge-challenge.{HOST}"]}"\n'
                    f'_acme-challenge.www CNAME {records[f"_acme-challenge.{HOST}"]}.\n')
            knot.set_zone("pub.test", "www CNAME old-host.example.\n" + zone)
            issued_in = wait_status(stack, "awaiting_traffic")
            stack.wait_served(HOST)

            switch: dict[str, float] = {}

            def move_traffic() -> None:
                time.sleep(args.seconds / 2)
                knot.set_zone("pub.test", "www CNAME edge.platform.test.\n" + zone)
                switch["active_after"] = wait_status(stack, "active", args.seconds)

            mover = threading.Thread(target=move_traffic)
            mover.start()
            during = wrk(stack.edge_https_port, args.seconds, args.connections)
            mover.join()
            baseline = wrk(stack.edge_https_port, args.seconds, args.connections)
        finally:
            for process in reversed(running):
                process.stop()  # type: ignore[attr-defined]
    load = os.getloadavg()[0]
    print(f"prevalidation_switch {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"load {load:.2f}, {os.cpu_count()} cores")
    print(f"certificate through the delegation, traffic elsewhere: {issued_in:.2f} s")
    print(f"during the switch: {during['requests']:.0f} requests, {during['failed']:.0f} failed,"
          f" {during['rps']:.0f} req/s; active {switch.get('active_after', float('nan')):.2f} s "
          "after the CNAME moved")
    print(f"baseline (active, no switch): {baseline['requests']:.0f} requests, "
          f"{baseline['failed']:.0f} failed, {baseline['rps']:.0f} req/s")
    print(f"ratio during/baseline: {during['rps'] / baseline['rps']:.2f}")
    record("prevalidation_switch", {
        "seconds": args.seconds, "connections": args.connections,
        "issued_while_elsewhere_s": round(issued_in, 2),
        "active_after_switch_s": round(switch.get("active_after", float("nan")), 2),
        "during": during, "baseline": baseline,
        "during_over_baseline": round(during["rps"] / baseline["rps"], 3)})
    if during["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()

"""Cold start of an edge node with many certificates, three ways, at several sizes.

Usage: python bench/cold_start.py [--sizes 1000,5000,10000] [--first 500]
- full:     render, `haproxy -c`, start with every certificate in the files
- restart:  start again from the files already checked (a node reboot)
- streamed: what EdgeNode.apply does on a cold node: start with the first slice of routes,
            then hot-add the rest through the runtime API
Each prints the time until the first and the last hostname are served.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.node_scale import served_name  # noqa: E402
from edge.node import EdgeNode  # noqa: E402
from edge.state import DesiredState, Route  # noqa: E402
from kit.procs import free_port  # noqa: E402
from kit.x509 import self_signed  # noqa: E402

KEY = ec.generate_private_key(ec.SECP256R1())


def wait_served(port: int, hostname: str, started: float) -> float:
    while served_name(port, hostname) != hostname:
        time.sleep(0.01)
    return time.perf_counter() - started


def state(routes: list[Route]) -> DesiredState:
    return DesiredState(tuple(routes), ("127.0.0.1:9",), ("127.0.0.1:9",))


def measure(size: int, first: int, root: Path) -> dict[str, tuple[float, float]]:
    routes = [Route(f"s{n:05d}.bench.test", "pub", self_signed(f"s{n:05d}.bench.test", KEY)[1])
              for n in range(size)]
    head, tail = routes[0].hostname, routes[-1].hostname
    ports = {"http_port": free_port(), "https_port": free_port()}
    results = {}

    node = EdgeNode(root / "full", cold_slice=0, **ports)
    started = time.perf_counter()
    node.apply(state(routes))
    results["full"] = (wait_served(ports["https_port"], head, started),
                       wait_served(ports["https_port"], tail, started))
    node.stop()

    node = EdgeNode(root / "full", cold_slice=0, **ports)
    started = time.perf_counter()
    node.start()
    results["restart"] = (wait_served(ports["https_port"], head, started),
                          wait_served(ports["https_port"], tail, started))
    node.stop()

    node = EdgeNode(root / "streamed", cold_slice=first, **ports)
    started = time.perf_counter()
    applying = threading.Thread(target=node.apply, args=(state(routes),))
    applying.start()
    first_served = wait_served(ports["https_port"], head, started)
    applying.join()
    results["streamed"] = (first_served, wait_served(ports["https_port"], tail, started))
    node.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,5000,10000")
    parser.add_argument("--first", type=int, default=500)
    args = parser.parse_args()
    print(f"{'certs':>6}  {'way':<9} {'first served':>13} {'all served':>11}")
    for size in (int(s) for s in args.sizes.split(",")):
        root = Path(tempfile.mkdtemp(prefix="coldstart-"))
        try:
            results = measure(size, min(args.first, size), root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        for way, (first, last) in results.items():
            print(f"{size:>6}  {way:<9} {first:>12.2f}s {last:>10.2f}s")
        print(f"{size:>6}  all served: full/streamed "
              f"{results['full'][1] / results['streamed'][1]:.2f}x, first served: full/streamed "
              f"{results['full'][0] / results['streamed'][0]:.1f}x")


if __name__ == "__main__":
    main()

"""SSO overhead at the edge: requests/s through HAProxy with a valid session cookie (ES256
verified by HAProxy on every request, user forwarded) vs without any cookie, same node.

Usage: python bench/sso_overhead.py [--seconds 4] [--rounds 7]
The app fleet is a HAProxy answering 200 by itself, so the edge is what is measured. Each round
is one wrk run of each, back to back; the ratio printed is the median of the rounds' ratios, so
load from elsewhere on the machine shifts both sides of a pair alike. Needs wrk. Goal: >= 0.9.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from devtools.probe import https_get  # noqa: E402
from edge.node import EdgeNode  # noqa: E402
from edge.sso import SESSION_COOKIE  # noqa: E402
from edge.state import DesiredState, Route  # noqa: E402
from kit.procs import free_port  # noqa: E402
from kit.x509 import self_signed  # noqa: E402
from routing_overhead import HOST, fast_upstream, requests_per_second  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    # A second published key, as during a rotation: the cookie is checked against both.
    spare = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    token = jwt.encode({"sub": "reader-1", "aud": HOST, "pub": "pub_1",
                        "exp": int(time.time()) + 3600}, key, algorithm="ES256")
    with tempfile.TemporaryDirectory() as tmp:
        upstream, address = fast_upstream(Path(tmp))
        node = EdgeNode(Path(tmp) / "edge", http_port=free_port(), https_port=free_port())
        try:
            node.apply(DesiredState((Route(HOST, "pub_1", self_signed(HOST)[1]),), (address,),
                                    ("127.0.0.1:9",), (), (spare.decode(), public.decode())))
            port = node.layout.https_port
            seen = https_get(port, HOST, headers={"Cookie": f"{SESSION_COOKIE}={token}"}).body
            assert seen == b"ok reader-1", f"the edge did not forward the user: {seen!r}"
            anonymous, signed_in = [], []
            for _ in range(args.rounds):
                anonymous.append(requests_per_second(port, args.seconds))
                signed_in.append(requests_per_second(port, args.seconds,
                                                     f"Cookie: {SESSION_COOKIE}={token}"))
        finally:
            node.stop()
            upstream.stop()
    without, with_cookie = statistics.median(anonymous), statistics.median(signed_in)
    print(f"no cookie:            {without:9.0f} req/s  (runs: {', '.join(f'{r:.0f}' for r in anonymous)})")
    print(f"valid session cookie: {with_cookie:9.0f} req/s  (runs: {', '.join(f'{r:.0f}' for r in signed_in)})")
    ratios = [signed / plain for signed, plain in zip(signed_in, anonymous)]
    print(f"ratio signed-in/anonymous: {statistics.median(ratios):.3f} median of rounds "
          f"({', '.join(f'{r:.2f}' for r in ratios)}); goal >= 0.9")


if __name__ == "__main__":
    main()

"""SSO overhead at the edge: requests/s through HAProxy with a valid session cookie (ES256
verified by HAProxy on every request, user forwarded) vs without any cookie, same node.

Usage: python bench/sso_overhead.py [--seconds 4] [--rounds 7] [--tokens 10000]
The app fleet is a HAProxy answering 200 by itself, so the edge is what is measured. Each round
is one wrk run of each, back to back; the ratio printed is the median of the rounds' ratios, so
load from elsewhere on the machine shifts both sides of a pair alike. The signed-in side sends
``--tokens`` different session cookies (one reader each), uniform and Zipf
(bench/wrk/spread.lua): one token over kept-alive connections was the best case. The anonymous
side goes through the same script. Needs wrk. Goal: >= 0.9.
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
from edge.sso import SESSION_COOKIE, SESSION_VERSION  # noqa: E402
from edge.state import DesiredState, Route  # noqa: E402
from kit.procs import free_port  # noqa: E402
from kit.x509 import self_signed  # noqa: E402
from bench.conditions import print_conditions, record  # noqa: E402
from bench.wrk.load import write_keys  # noqa: E402
from routing_overhead import HOST, fast_upstream, spread_rate as rate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=10_000)
    args = parser.parse_args()
    print_conditions()
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    # A second published key, as during a rotation: the cookie is checked against both.
    spare = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    expires = int(time.time()) + 3600
    tokens = [jwt.encode({"v": SESSION_VERSION, "sub": f"reader-{n}", "aud": HOST,  # as signed
                          "pub": "pub_1", "iat": expires - 3600, "exp": expires},
                         key, algorithm="ES256") for n in range(args.tokens)]
    runs: dict[str, list[float]] = {"anonymous": [], "uniform": [], "zipf": []}
    with tempfile.TemporaryDirectory() as tmp:
        anonymous, signed = Path(tmp) / "anonymous.keys", Path(tmp) / "signed.keys"
        write_keys(anonymous, [(HOST, "/")])
        write_keys(signed, ((HOST, "/", f"Cookie: {SESSION_COOKIE}={token}")
                            for token in tokens))
        upstream, address = fast_upstream(Path(tmp))
        node = EdgeNode(Path(tmp) / "edge", http_port=free_port(), https_port=free_port())
        try:
            node.apply(DesiredState((Route(HOST, "pub_1", self_signed(HOST)[1]),), (address,),
                                    ("127.0.0.1:9",), (), (spare.decode(), public.decode())))
            port = node.layout.https_port
            for n in (0, args.tokens - 1):
                seen = https_get(port, HOST,
                                 headers={"Cookie": f"{SESSION_COOKIE}={tokens[n]}"}).body
                assert seen == f"ok reader-{n}".encode(), f"the user was not forwarded: {seen!r}"
            for _ in range(args.rounds):
                runs["anonymous"].append(rate(port, args.seconds, anonymous))
                for distribution in ("uniform", "zipf"):
                    runs[distribution].append(rate(port, args.seconds, signed, distribution))
        finally:
            node.stop()
            upstream.stop()
    without = statistics.median(runs["anonymous"])
    figures: dict[str, object] = {"tokens": args.tokens, "anonymous_req_per_s": round(without)}
    print(f"no cookie:                      {without:9.0f} req/s  "
          f"(runs: {', '.join(f'{r:.0f}' for r in runs['anonymous'])})")
    for distribution in ("uniform", "zipf"):
        ratios = [signed / plain for signed, plain in zip(runs[distribution], runs["anonymous"])]
        figures[f"{distribution}_req_per_s"] = round(statistics.median(runs[distribution]))
        figures[f"{distribution}_ratio"] = round(statistics.median(ratios), 3)
        print(f"{args.tokens:,} session cookies, {distribution + ':':<8} "
              f"{statistics.median(runs[distribution]):9.0f} req/s  ratio signed-in/anonymous "
              f"{statistics.median(ratios):.3f} median of rounds "
              f"({', '.join(f'{r:.2f}' for r in ratios)}); goal >= 0.9")
    record("sso_overhead", figures)


if __name__ == "__main__":
    main()

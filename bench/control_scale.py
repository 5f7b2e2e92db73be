"""The control plane at scale, as processes: a real `edgectl serve` and a real `edgectl agent`
(with its HAProxy) over N active domains, at rest and with a steady stream of rechecks.

Usage: python bench/control_scale.py [--domains 1000,10000,100000] [--backend sqlite|dynamodb]
           [--window 60] [--samples 30] [--seed-processes 1] [--seed-directly]
(dynamodb starts dynalite from node_modules on a free loopback port.)

For each size, in a new directory: knotd (the authoritative DNS the rechecks ask), a store at
this release's schema (`edgectl migrate --apply`: on DynamoDB, index keys spread), the fleet
seeded through the product's write paths (bench/control_seed.py: connect, transition, the
certificate store; serve's reconciliation at start publishes every route, its batch path; on
DynamoDB into a SQLite store first, then moved by `edgectl backup` and `edgectl restore`),
then `edgectl serve` and `edgectl agent`, with default timings (worker round 2 s, long poll
5 s, recheck every 3600 s). Once the agent serves the whole state:

- quiet: nothing due for ten days. Over ``--window`` seconds: CPU-seconds per minute of serve
  and of the agent (utime + stime from /proc/PID/stat), serve's store requests per minute
  (``edge_store_requests`` on its /metrics, one scrape's own requests taken off; the agent
  has no store: it asks serve), and the RSS of both.
- change latency: ``PATCH /api/v1/domains/<host>`` (a redirect set, then cleared) until HAProxy
  answers with the change (a TLS request on loopback every ~2 ms), through the agent's long
  poll; ``--samples`` changes, p50 and p99.
- steady: N / recheck_seconds rechecks fall due each second (the domains due in the window
  are rescheduled through ``DomainService.transition``; knotd answers their CNAME and TXT);
  the same figures over the window, and how many rechecks were done.

The figures are compared with the smallest size of the same run (goals at 100,000: serve's
CPU at rest <= 1.2x the smallest size's, change p99 <= 100 ms, serve's RSS <= 200 MB).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import control_seed  # noqa: E402
from bench.conditions import print_conditions, record  # noqa: E402
from bench.control_stack import ControlStack  # noqa: E402


def run_size(count: int, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"control-scale-{count}-") as folder:
        stack = ControlStack(Path(folder), args.backend)
        try:
            started = time.monotonic()
            if args.backend == "dynamodb" and not args.seed_directly:
                tokens = stack.seed_through_a_backup(count)
            else:  # a store at this release's schema, as an operator's (DynamoDB spreads keys)
                stack.edgectl("migrate", "--apply")
                tokens = control_seed.seed(stack.settings(), count, args.seed_processes)
            latency_pair = control_seed.seed_latency_pair(stack.settings())
            seeding = time.monotonic() - started
            print(f"  seeded {count:,} domains in {seeding:.0f} s "
                  f"({count / seeding:,.0f}/s)", flush=True)
            serve_start = stack.start_serve()
            print(f"  serve answers after {serve_start:.1f} s (its reconciliation at start "
                  "published every route)", flush=True)
            cold = stack.start_agent(latency_pair[0])
            print(f"  the agent serves the whole state after {cold:.1f} s", flush=True)
            figures: dict[str, Any] = {"domains": count, "seeding_s": round(seeding, 1),
                                       "serve_start_s": round(serve_start, 1),
                                       "agent_cold_start_s": round(cold, 1)}
            stack.settle()
            figures["quiet"] = stack.at_rest(args.window)
            print(f"  quiet: {describe(figures['quiet'])}", flush=True)
            figures["change_ms"] = stack.change_latency(*latency_pair, args.samples)
            print(f"  change -> served: {describe(figures['change_ms'])}", flush=True)
            figures["steady"] = stack.steady(tokens, args.window)
            print(f"  steady: {describe(figures['steady'])}", flush=True)
            return figures
        finally:
            stack.stop()


def describe(figures: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value:,}" if isinstance(value, (int, float)) else f"{key} {value}"
                     for key, value in figures.items())


def goals(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The largest size against the smallest of the same run."""
    small, large = results[0], results[-1]
    base_cpu = max(small["quiet"]["serve_cpu_s_per_min"], 1e-3)
    ratio = large["quiet"]["serve_cpu_s_per_min"] / base_cpu
    verdict = {
        "sizes": f"{large['domains']:,} against {small['domains']:,}",
        "serve_cpu_at_rest_ratio": round(ratio, 2),
        "serve_cpu_goal_met": ratio <= 1.2,
        "change_p99_ms": large["change_ms"]["p99"],
        "change_p99_goal_met": large["change_ms"]["p99"] <= 100,
        "serve_rss_mb": large["quiet"]["serve_rss_mb"],
        "serve_rss_goal_met": large["quiet"]["serve_rss_mb"] <= 200,
    }
    return verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", default="1000,10000,100000",
                        help="comma-separated sizes, smallest first (the baseline)")
    parser.add_argument("--backend", choices=["sqlite", "dynamodb"], default="sqlite")
    parser.add_argument("--window", type=float, default=60.0,
                        help="seconds each at-rest figure is measured over")
    parser.add_argument("--samples", type=int, default=30, help="changes timed")
    parser.add_argument("--seed-processes", type=int, default=0,
                        help="parallel seeding processes (default: 1 on SQLite, whose writes "
                             "take one lock, 4 on DynamoDB)")
    parser.add_argument("--seed-directly", action="store_true",
                        help="on DynamoDB, seed through the write paths into DynamoDB itself "
                             "(default: into SQLite, then `edgectl backup` and `edgectl restore`)")
    args = parser.parse_args()
    if not args.seed_processes:
        args.seed_processes = 1 if args.backend == "sqlite" else 4
    found = print_conditions()
    sizes = sorted(int(size) for size in args.domains.split(","))
    results = []
    for count in sizes:
        print(f"{count:,} domains on {args.backend}:", flush=True)
        results.append(run_size(count, args))
    verdict = goals(results)
    print(f"goals ({verdict['sizes']}): serve's CPU at rest {verdict['serve_cpu_at_rest_ratio']}x"
          f" (goal <= 1.2x: {'met' if verdict['serve_cpu_goal_met'] else 'NOT met'}); change "
          f"p99 {verdict['change_p99_ms']} ms (goal <= 100: "
          f"{'met' if verdict['change_p99_goal_met'] else 'NOT met'}); serve's RSS "
          f"{verdict['serve_rss_mb']} MB (goal <= 200: "
          f"{'met' if verdict['serve_rss_goal_met'] else 'NOT met'})")
    record("control_scale", {"backend": args.backend, "window_s": args.window,
                             "sizes": results, "goals": verdict,
                             "ended": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
           measured=found)
    print(json.dumps(verdict))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

#!/usr/bin/env python3
"""Renders docs/benchmarks.md from the results `bench/run_all.py` gathers.

Each result is one JSON object {"bench", "conditions", "figures"} as `bench.conditions.record`
writes it: run_all's file (bench/results.json, {"results": [...]}), one a line (JSONL), or a
JSON list of them. A figure is a number or a small
dict (``value``, ``unit``, ``baseline``, ``ratio``). Every row of the page carries the date,
commit, versions and load its figure was measured under.

The part of the page from the heading LEGACY on (figures measured before run_all existed) is
kept as it is: only the part above it is rendered.

    python3 scripts/render_bench.py [RESULTS] [--out docs/benchmarks.md] [--check]

RESULTS defaults to bench/results.json; when it does not exist the page says no run_all
results are committed yet. ``--check`` writes nothing and exits 1 if the page is stale.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
PAGE = ROOT / "docs" / "benchmarks.md"
LEGACY = "## Figures measured before run_all (legacy)"
VALUE_KEYS = ("value", "unit", "baseline", "ratio")


def read_results(path: Path) -> list[dict[str, Any]]:
    """The results in ``path`` (run_all's file, JSONL, or one JSON list); ValueError names a
    bad line."""
    text = path.read_text(encoding="utf-8").strip()
    try:  # run_all's one document, or one JSON list; else JSONL (a line per result)
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict):  # run_all's, or a JSONL of one result
        rows = whole["results"] if "results" in whole else [whole]
    elif isinstance(whole, list):
        rows = whole
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not {"bench", "conditions", "figures"} <= set(row):
            raise ValueError(f"{path}: result {number} lacks bench, conditions or figures")
    return rows


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _cell(value)
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _cell(value: Any) -> str:
    if value is None or value == "":
        return ""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return " ".join(text.split()).replace("|", "\\|")


def figure_row(name: str, figure: Any, conditions: dict[str, Any]) -> str:
    detail = figure if isinstance(figure, dict) else {"value": figure}
    value = _number(detail.get("value"))
    unit = _cell(detail.get("unit"))
    extra = {key: item for key, item in detail.items() if key not in VALUE_KEYS}
    if extra:  # anything else the bench kept, so nothing is dropped
        value = f"{value} ({_cell(extra)})" if value else _cell(extra)
    versions = (f"HAProxy {_cell(conditions.get('haproxy', '?'))}, "
                f"{_cell(conditions.get('openssl', '?'))}, "
                f"Python {_cell(conditions.get('python', '?'))}")
    machine = f"{conditions.get('cores', '?')} cores, load {conditions.get('load_average', '?')}"
    return (f"| {_cell(name)} | {value} | {unit} | {_number(detail.get('baseline'))} | "
            f"{_number(detail.get('ratio'))} | {_cell(conditions.get('date', '?'))} | "
            f"`{_cell(conditions.get('commit', '?'))}` | {versions} | {machine} |")


def flatten(name: str, figure: Any) -> Iterable[tuple[str, Any]]:
    """A nested figure as one row per leaf (``pages_ms./admin/.median``); a dict with a
    ``value`` stays one row, and a list of dicts is named by each one's ``domains`` (a size)
    or its place."""
    if isinstance(figure, dict) and figure and "value" not in figure:
        for key, item in figure.items():
            yield from flatten(f"{name}.{key}", item)
    elif isinstance(figure, list) and figure and all(isinstance(item, dict) for item in figure):
        for place, item in enumerate(figure):
            label = item.get("domains", place)
            yield from flatten(f"{name}[{label}]",
                               {k: v for k, v in item.items() if k != "domains"})
    else:
        yield name, figure


def render_results(rows: Iterable[dict[str, Any]]) -> list[str]:
    by_bench: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_bench.setdefault(str(row["bench"]), []).append(row)
    lines: list[str] = []
    for bench, runs in sorted(by_bench.items()):
        lines += [f"### {bench}", "",
                  "| figure | value | unit | baseline | ratio | date | commit | versions | "
                  "machine |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for run in runs:
            for name, figure in run["figures"].items():
                lines += [figure_row(leaf, value, run["conditions"])
                          for leaf, value in flatten(name, figure)]
            if not run["figures"]:
                lines.append(f"| (no figures recorded in this run) | | | | | "
                             f"{_cell(run['conditions'].get('date', '?'))} | | | |")
        lines.append("")
    return lines


def render(results: Path | None, old_page: str) -> str:
    lines = ["<!-- The part above the legacy heading is generated by scripts/render_bench.py "
             "from bench/run_all.py's results; do not edit it by hand. -->", "",
             "# Benchmarks", "",
             "Every bench in `bench/` prints the conditions it ran under first (date, commit, "
             "HAProxy, OpenSSL and Python versions, cores, load: `bench/conditions.py`) and "
             "gives its speed figures as ratios against a baseline measured in the same run, "
             "so a figure from a loaded machine is still comparable with its own baseline.",
             "", "## Results of bench/run_all.py", ""]
    if results is not None and results.exists():
        rows = read_results(results)
        lines += [f"{len(rows)} results from `{_shown(results)}`.", ""]
        lines += render_results(rows)
    else:
        lines += ["No run_all results are committed yet: `python3 bench/run_all.py` gathers "
                  "them (one JSON line per bench), then `python3 scripts/render_bench.py "
                  "RESULTS.jsonl` renders them here. Until then the figures below are the ones "
                  "measured by hand.", ""]
    legacy = old_page[old_page.index(LEGACY):] if LEGACY in old_page else LEGACY + "\n"
    return "\n".join(lines) + "\n" + legacy


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return path.name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="?", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=PAGE)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if stale")
    args = parser.parse_args(argv)
    old = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
    try:
        page = render(args.results, old)
    except (ValueError, json.JSONDecodeError) as exc:
        print(f"render_bench: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if page != old:
            print(f"stale: {_shown(args.out)} (run python3 scripts/render_bench.py)",
                  file=sys.stderr)
            return 1
        return 0
    args.out.write_text(page, encoding="utf-8")
    print(f"wrote {_shown(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

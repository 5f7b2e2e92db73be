"""The layers hold: import-linter's contracts (pyproject.toml) pass, the processes a
platform runs never load the dev tools, and no product file or function outgrows a reading."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept() -> None:
    lint_imports = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    result = subprocess.run([sys.executable, "-c", lint_imports], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_serve_agent_and_shortlinks_do_not_load_the_dev_tools() -> None:
    # What `edgectl serve|agent|shortlinks` import before running: the CLI and its wiring.
    probe = ("import sys, edgectl.cli, control.wiring, shortlinks.serve, edge.agent; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'devtools'))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_operators_commands_start_without_the_service() -> None:
    """`edgectl status|domains|links|...` run on an operator's laptop, many times a day: the
    CLI loads no store client, web framework or service wiring until a process command runs
    (they took most of a second of every operator command's start)."""
    probe = ("import sys, edgectl.cli; print(sorted(({m.split('.')[0] for m in sys.modules} | "
             "set(sys.modules)) & {'boto3', 'botocore', 'flask', 'admin', 'control.wiring', "
             "'acme', 'josepy', 'dns'}))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


PRODUCT = ("edgectl", "admin", "publisher", "devtools", "control", "domains", "dnsops", "certs",
           "edge", "shortlinks", "kit", "store")


def test_no_product_file_over_400_lines_and_no_function_over_60() -> None:
    too_long = []
    for path in sorted(p for package in PRODUCT for p in (ROOT / package).rglob("*.py")):
        source = path.read_text()
        name = path.relative_to(ROOT)
        if source.count("\n") > 400:
            too_long.append(f"{name}: {source.count(chr(10))} lines")
        too_long += [f"{name}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
                     for node in ast.walk(ast.parse(source))
                     if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                     and (node.end_lineno or 0) - node.lineno + 1 > 60]
    assert too_long == []

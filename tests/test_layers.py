"""The layers hold: import-linter's contracts (pyproject.toml) pass, and the processes a
platform runs never load the dev tools."""
from __future__ import annotations

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

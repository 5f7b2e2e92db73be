"""`edgectl --version` prints the installed package's version, as operators expect of a CLI,
and the edge protocol and store schema it speaks (what an upgrade must match)."""
from __future__ import annotations

import runpy
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from control.migrations import SCHEMA
from edge.protocol import PROTOCOL
from edgectl.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_version_is_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == (f"edgectl {metadata.version('edge-router')}"
                                               f" (edge protocol {PROTOCOL}, store schema {SCHEMA})")


def test_version_needs_no_settings() -> None:
    done = subprocess.run([sys.executable, "-m", "edgectl.cli", "--version"], cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[:2] == ["edgectl", metadata.version("edge-router")]
    assert f"edge protocol {PROTOCOL}, store schema {SCHEMA}" in done.stdout


def test_python_m_edgectl_runs_the_cli(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m edgectl`` (how the tests and the service units start it) is the same CLI."""
    monkeypatch.setattr(sys, "argv", ["edgectl", "--version"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("edgectl", run_name="__main__")
    assert exited.value.code == 0
    assert capsys.readouterr().out.split()[:2] == ["edgectl", metadata.version("edge-router")]

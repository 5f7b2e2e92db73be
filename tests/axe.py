"""axe-core (npm, package.json) run in the page Chromium shows: every violation of its rules
(WCAG 2.0-2.2 A and AA, and its best practices) fails the test that visited the page.

``scripts/bootstrap.sh --test`` installs axe-core into node_modules; ``AXE_CORE_JS`` names
another copy of ``axe.min.js`` (a development tree whose node_modules is shared)."""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RUN = """async () => {
  const result = await axe.run(document, {resultTypes: ["violations"]});
  return result.violations.map((v) => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 5).map((n) => n.target.join(" ") + ": " + n.failureSummary)}));
}"""


@functools.cache
def axe_source() -> str:
    path = Path(os.environ.get("AXE_CORE_JS") or ROOT / "node_modules/axe-core/axe.min.js")
    if not path.is_file():
        raise AssertionError(f"axe-core is not installed ({path} is missing): run "
                             "scripts/bootstrap.sh --test, or set AXE_CORE_JS to axe.min.js")
    return path.read_text()


def violations(page: Any) -> list[dict[str, Any]]:
    """What axe finds wrong in the page as it is now. Evaluated over the DevTools protocol,
    which the pages' Content-Security-Policy does not govern (their own scripts it does)."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(axe_source())
    found: list[dict[str, Any]] = page.evaluate(RUN)
    return found


def check(page: Any, where: str) -> None:
    found = violations(page)
    assert not found, (where, found)
